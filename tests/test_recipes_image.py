"""The README's image-based RL result, reproduced from its recipe (held-out success >= 80%)."""

import pytest

from embodied.config import load_config
from embodied.runner.trainer import TrainConfig, Trainer

QUIET = [
    "log.tensorboard=false",
    "log.progress_bar=false",
    "log.final_video=false",
    "checkpoint.every=0",
    "eval.every=0",
]


@pytest.mark.slow
def test_ppo_reach_image(tmp_path):
    """PPO with the small CNN on 64x64 RGB of Reach's workspace camera + proprioception."""
    cfg = load_config(
        TrainConfig,
        "configs/ppo_reach_image.yaml",
        [*QUIET, f"run_dir={tmp_path / 'ppo_reach_image'}"],
    )
    assert (
        "observation.environment_state" not in cfg.policy.state_keys
    )  # the goal comes from pixels
    assert Trainer(cfg).train()["success_rate"] >= 0.8
