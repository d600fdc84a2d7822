"""The training loop: learning on Reach, exact kill-and-resume, and clear errors."""

import json

import pytest
import torch

from embodied.config import load_config
from embodied.runner.checkpoint import latest_checkpoint
from embodied.runner.trainer import TrainConfig, Trainer

FAST = [
    "env.task=Reach", "env.num_envs=32", "env.terminate_on_success=false", "algo.num_steps=8",
    "policy.hidden_sizes=[32,32]", "eval.every=0", "eval.episodes=16", "log.tensorboard=false",
    "log.progress_bar=false", "log.final_video=false", "torch_threads=1",
]


def config(tmp_path, *extra):
    return load_config(TrainConfig, None, [*FAST, f"run_dir={tmp_path / 'run'}", *extra])


def params(policy):
    return {k: v.clone() for k, v in policy.state_dict().items()}


def test_kill_and_resume_gives_the_same_parameters(tmp_path):
    straight = Trainer(config(tmp_path / "a", "total_env_steps=1024", "checkpoint.every=1"))
    straight.train()
    first = Trainer(config(tmp_path / "b", "total_env_steps=1024", "checkpoint.every=1"))
    first.train(stop_after=2)  # "killed" after two iterations (checkpoint at each)
    del first
    resumed = Trainer.from_run_dir(tmp_path / "b" / "run")
    assert resumed.iteration == 2
    resumed.train()
    assert resumed.iteration == straight.iteration == 4
    a, b = params(straight.policy), params(resumed.policy)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(straight.algo.optimizer.state_dict()["state"][0]["exp_avg"],
                       resumed.algo.optimizer.state_dict()["state"][0]["exp_avg"])


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path):
    trainer = Trainer(config(tmp_path, "total_env_steps=512", "checkpoint.every=1"))
    trainer.train(stop_after=1)
    good = latest_checkpoint(trainer.run_dir)
    # a write killed half way leaves only a temp folder behind
    (trainer.run_dir / "checkpoints" / ".tmp_iter_000002" / "policy").mkdir(parents=True)
    assert latest_checkpoint(trainer.run_dir) == good
    resumed = Trainer.from_run_dir(trainer.run_dir)
    assert resumed.iteration == 1


def test_keep_last_k(tmp_path):
    trainer = Trainer(config(tmp_path, "total_env_steps=1280", "checkpoint.every=1", "checkpoint.keep_last=2"))
    trainer.train()
    kept = sorted(p.name for p in (trainer.run_dir / "checkpoints").glob("iter_*"))
    assert kept == ["iter_000004", "iter_000005"]


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Trainer.from_run_dir(tmp_path)
    trainer = Trainer(config(tmp_path, "total_env_steps=256", "checkpoint.every=0"))
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        Trainer.from_run_dir(trainer.run_dir)
    trainer.train()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config(tmp_path, "total_env_steps=256"))


def test_checkpoint_of_another_model_shape_is_refused(tmp_path):
    trainer = Trainer(config(tmp_path, "total_env_steps=256", "checkpoint.every=1"))
    trainer.train()
    text = (trainer.run_dir / "config.yaml").read_text().replace("- 32\n  - 32", "- 64\n  - 64")
    (trainer.run_dir / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match="another shape"):
        Trainer.from_run_dir(trainer.run_dir)


def test_ppo_improves_reach(tmp_path):
    trainer = Trainer(config(tmp_path, "total_env_steps=40000", "env.num_envs=64", "algo.num_steps=16",
                             "algo.gamma=0.9", "algo.gae_lambda=0.9", "checkpoint.every=0"))
    trainer.train()
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    returns = [m["rollout/return"] for m in lines if "rollout/return" in m]
    assert len(returns) >= 6
    early, late = sum(returns[:3]) / 3, sum(returns[-3:]) / 3
    assert late > early + 5.0, (early, late)
    per_task = [m for m in lines if "rollout/return" in m]
    assert all(m["rollout/Reach/return"] == m["rollout/return"] for m in per_task), "one task: its split is the whole"


def test_non_finite_loss_stops_with_a_diagnostic_and_keeps_the_checkpoint(tmp_path):
    from embodied.algos import NonFiniteLossError

    trainer = Trainer(config(tmp_path, "total_env_steps=2048", "checkpoint.every=1"))
    trainer.train(stop_after=1)
    good = latest_checkpoint(trainer.run_dir)
    step = trainer.env.step

    def poisoned_step(action):
        obs, reward, terminated, truncated, info = step(action)
        return obs, reward * float("nan"), terminated, truncated, info

    trainer.env.step = poisoned_step
    with pytest.raises(NonFiniteLossError, match="iteration 1"):
        trainer.train()
    assert latest_checkpoint(trainer.run_dir) == good


def test_eval_cli_evaluates_a_named_checkpoint_and_names_the_available_ones(tmp_path, capsys):
    from embodied.cli import main

    trainer = Trainer(config(tmp_path, "total_env_steps=512", "checkpoint.every=1"))
    trainer.train()
    run = str(trainer.run_dir)
    assert main(["eval", run, "--checkpoint", "iter_000001", "--episodes", "4", "--seed", "5"]) == 0
    result = json.loads((trainer.run_dir / "eval_iter_000001_seed5.json").read_text())
    assert result["checkpoint"].endswith("iter_000001") and result["episodes"] == 4
    assert main(["eval", run, "--episodes", "4", "--seed", "5", "env.terminate_on_success=false"]) == 0
    named = trainer.run_dir / "eval_iter_000002_seed5_env.terminate_on_success=false.json"
    assert json.loads(named.read_text())["overrides"] == ["env.terminate_on_success=false"]
    assert main(["eval", run, "--episodes", "4", "--seed", "5", "--stochastic"]) == 0
    assert main(["eval", run, "--episodes", "4", "--seed", "5"]) == 0
    sampled = json.loads((trainer.run_dir / "eval_iter_000002_seed5_stochastic.json").read_text())
    readout = json.loads((trainer.run_dir / "eval_iter_000002_seed5.json").read_text())
    assert sampled["stochastic"] and not readout["stochastic"]
    assert sampled["mean_return"] != readout["mean_return"]  # sampled actions, not the policy's mean
    with pytest.raises(SystemExit, match="iter_000001, iter_000002"):
        main(["eval", run, "--checkpoint", "iter_7"])
