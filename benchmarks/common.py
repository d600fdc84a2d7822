"""Shared benchmark helpers: machine info, timing, and JSON results in benchmarks/results/."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU, library versions and date, recorded with every result."""
    import mujoco
    import numpy
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mujoco": mujoco.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):  # other work on a shared machine skews timings
        info["load_avg_1min"] = os.getloadavg()[0]
    return info


def time_steps(step: Callable[[], Any], steps: int, warmup: int = 3, repeats: int = 1) -> float:
    """Best wall time (seconds) of `repeats` runs of `steps` calls of `step`, after `warmup` calls."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - start)
    return best


def write_result(name: str, data: dict[str, Any], machine: dict[str, Any] | None = None) -> Path:
    """Write ``{"benchmark": name, "machine": machine or machine_info(), **data}`` to
    benchmarks/results/<name>.json (pass `machine` taken before the run for its load average)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "machine": machine or machine_info(), **data}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
