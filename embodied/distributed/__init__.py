"""Distributed training on Ray (extra ``distributed``): env workers, rollout workers and
torch.distributed learners as actors. The single-process `embodied train` needs none of it.

Run: ``uv run python -m embodied.distributed configs/ppo_reach_state_ray.yaml [key=value ...]``.
"""

import os

# Ray reads this when it is imported: under `uv run` it would otherwise rebuild the project's
# environment for every worker from a copy of the working directory (minutes, and without the
# git-ignored files). The workers share the driver's interpreter and environment instead.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from embodied.distributed.config import DistributedConfig, DistributedTrainConfig  # noqa: E402

__all__ = ["DistributedConfig", "DistributedTrainConfig"]
