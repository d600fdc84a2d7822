"""Checkpoints that survive a kill: write to a temporary folder, then rename into place.

Layout of a run directory:
    config.yaml                  the resolved config
    checkpoints/iter_000040/     policy/ (config.json + model.safetensors), trainer.pt
    checkpoints/latest           text file naming the newest complete checkpoint
A checkpoint folder appears only once complete (os.replace of a finished temp folder), and
`latest` is itself replaced atomically, so a kill at any moment leaves the last good one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from policies.base import Policy


def save_checkpoint(run_dir: Path, iteration: int, policy: Policy, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint `iteration` atomically and keep only the newest `keep_last`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp / "policy")
    torch.save(trainer_state, tmp / "trainer.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
    for old in sorted(p for p in root.glob("iter_*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run; a clear error if `run_dir` is not a run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.yaml).")
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"Run {str(run_dir)!r} has no checkpoint yet (no checkpoints/latest).")
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (path / "trainer.pt").is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} named by checkpoints/latest is incomplete.")
    return path
