"""The README's RL results, reproduced from their recipes (held-out success >= 90%)."""

import pytest

from embodied.config import load_config
from embodied.runner.trainer import TrainConfig, Trainer

QUIET = ["log.tensorboard=false", "log.progress_bar=false", "log.final_video=false", "checkpoint.every=0", "eval.every=0"]


def train(tmp_path, recipe):
    cfg = load_config(TrainConfig, f"configs/{recipe}.yaml", [*QUIET, f"run_dir={tmp_path / recipe}"])
    return Trainer(cfg).train()


def test_ppo_reach_state(tmp_path):
    assert train(tmp_path, "ppo_reach_state")["success_rate"] >= 0.9


@pytest.mark.slow
def test_grpo_reach_state(tmp_path):
    assert train(tmp_path, "grpo_reach_state")["success_rate"] >= 0.8


@pytest.mark.slow
def test_ppo_pickcube_state(tmp_path):
    assert train(tmp_path, "ppo_pickcube_state")["success_rate"] >= 0.9
