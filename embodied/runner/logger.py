"""Metrics to the console (a live progress bar), metrics.jsonl, TensorBoard and wandb.

wandb runs offline unless WANDB_API_KEY is set (or WANDB_MODE says otherwise); its files
stay in the run directory either way."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm


@dataclasses.dataclass
class LogConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "embodied"
    video_every: int = 0  # iterations between evaluation videos (at evaluations); 0: none
    final_video: bool = True  # a video of the final evaluation
    progress_bar: bool = True


class Logger:
    def __init__(
        self, run_dir: Path, cfg: LogConfig, total_steps: int, config: dict[str, Any], initial_steps: int = 0,
        step_key: str = "env_steps",
    ):
        """`step_key` names the x axis in metrics.jsonl: env steps for RL, updates for SFT."""
        self.run_dir = Path(run_dir)
        self.step_key = step_key
        self.metrics_file = (self.run_dir / "metrics.jsonl").open("a")
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.wandb = None
        if cfg.wandb:
            import wandb

            os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(self.run_dir), config=config, resume="allow",
                                    id=self.run_dir.name.replace("/", "-"))
        self.bar = tqdm(total=total_steps, initial=initial_steps, unit="step" if step_key == "env_steps" else "update", unit_scale=True, dynamic_ncols=True,
                        disable=not cfg.progress_bar)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record scalars at `step` (one JSON line, TB and wandb)."""
        self.metrics_file.write(json.dumps({self.step_key: step, **metrics}) + "\n")
        self.metrics_file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def progress(self, step: int, figures: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in figures.items()}, refresh=False)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        self.metrics_file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
