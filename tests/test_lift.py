"""`embodied lift` end to end on a tiny budget: record, SFT, evaluate, RL from the SFT
checkpoint, evaluate on the same seeds, write the summary, the page and the results table."""

import json

import pandas as pd
import pytest
import yaml

from embodied.cli import main


def test_lift_records_trains_both_stages_and_writes_its_results(tmp_path):
    sft = {
        "name": "sft", "torch_threads": 1,
        "env": {"task": "Reach", "num_envs": 4, "obs_mode": "state"},
        "policy": {"kind": "mlp", "hidden_sizes": [32, 32]},
        "algo": {"name": "sft", "dataset": str(tmp_path / "data" / "Reach"), "batch_size": 32, "updates_per_iteration": 20,
                 "total_updates": 40, "warmup_updates": 5},
        "eval": {"every": 0}, "checkpoint": {"every": 0}, "log": {"final_video": False},
    }
    rl = {
        "name": "rl", "torch_threads": 1, "total_env_steps": 512,
        "env": {"task": "Reach", "num_envs": 8, "obs_mode": "state"},
        "policy": {"kind": "mlp"},
        "algo": {"name": "ppo", "num_steps": 16, "update_epochs": 1, "critic_warmup_iterations": 1},
        "eval": {"every": 0}, "checkpoint": {"every": 0}, "log": {"final_video": True},
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump(rl))
    lift = {"name": "tiny", "sft": str(tmp_path / "sft.yaml"), "rl": str(tmp_path / "rl.yaml"), "demos": 2,
            "record_episodes": 3, "record_overrides": ["hold_steps=2"], "eval_episodes": 4, "out": str(tmp_path / "lift"),
            "results_file": str(tmp_path / "results.json")}
    (tmp_path / "lift.yaml").write_text(yaml.safe_dump(lift))

    assert main(["lift", str(tmp_path / "lift.yaml")]) == 0

    summary = json.loads((tmp_path / "lift" / "lift.json").read_text())
    assert summary["recorded_demos"] == 3 and summary["demos"] == 2
    frames = pd.concat(pd.read_parquet(f) for f in (tmp_path / "data" / "Reach" / "data").rglob("*.parquet"))
    after_success = frames.groupby("episode_index")["next.success"].apply(lambda s: len(s) - 1 - int(s.to_numpy().argmax()))
    assert after_success.tolist() == [2, 2, 2]  # the recording's override: 2 more steps after the first success
    assert summary["model"] == "mlp" and summary["task"] == "Reach" and summary["algorithm"] == "ppo"
    assert summary["rl_env_steps"] == 512 and summary["eval_episodes"] == 4
    s0 = json.loads((tmp_path / "lift" / "sft" / "eval.json").read_text())
    s1 = json.loads((tmp_path / "lift" / "rl" / "eval.json").read_text())
    assert summary["S0"] == s0["success_rate"] and summary["S1"] == s1["success_rate"]
    assert s0["episodes"] == s1["episodes"] == 4 and s0["seed"] == s1["seed"]
    rl_config = yaml.safe_load((tmp_path / "lift" / "rl" / "config.yaml").read_text())
    assert rl_config["init_from"] == str(tmp_path / "lift" / "sft")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"]["mlp/Reach/ppo"]["S1"] == summary["S1"]
    page = (tmp_path / "lift" / "index.html").read_text()
    assert "rl/videos/" in page and "Reach" in page and (tmp_path / "lift" / "lift.png").is_file()

    # From an existing SFT checkpoint: S0 is that policy's evaluation on the same seeds, which
    # reproduces the first lift's S0 exactly.
    checkpoint = sorted((tmp_path / "lift" / "sft" / "checkpoints").glob("iter_*"))[-1] / "policy"
    again = {"name": "again", "sft_checkpoint": str(checkpoint), "rl": str(tmp_path / "rl.yaml"), "eval_episodes": 4,
             "out": str(tmp_path / "again"), "results_file": "", "rl_overrides": ["total_env_steps=128"]}
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(again))
    assert main(["lift", str(tmp_path / "again.yaml")]) == 0
    second = json.loads((tmp_path / "again" / "lift.json").read_text())
    assert second["S0"] == summary["S0"] and second["sft_checkpoint"] == str(checkpoint)
    assert second["rl_env_steps"] == 128
    sft_run = yaml.safe_load((tmp_path / "lift" / "sft" / "config.yaml").read_text())["algo"]
    iteration = int(checkpoint.parent.name.removeprefix("iter_"))
    assert second["demos"] == 2 and second["sft_updates"] == iteration * sft_run["updates_per_iteration"]


def test_every_lift_recipe_and_the_recipes_it_names_load():
    from pathlib import Path

    from embodied.config import load_config
    from embodied.lift import LiftConfig
    from embodied.runner.trainer import TrainConfig

    recipes = sorted(Path("configs").glob("lift_*.yaml"))
    assert len(recipes) >= 6
    for path in recipes:
        lift = load_config(LiftConfig, path)
        rl = load_config(TrainConfig, lift.rl, lift.rl_overrides)
        assert rl.algo.name in ("ppo", "grpo") and rl.policy.kind in ("flow_vla", "ar_vla", "lerobot_flow"), path
        if lift.sft:
            sft = load_config(TrainConfig, lift.sft, lift.sft_overrides)
            assert sft.algo.name == "sft" and sft.policy.kind == rl.policy.kind and sft.env.task == rl.env.task, path
        else:
            assert lift.sft_checkpoint, path


def test_results_keep_the_ar_readouts_and_grpo_outcomes_apart(tmp_path):
    """An AR lift read out by the expected readout, or GRPO on another outcome than 0/1 success,
    is its own row beside the default one."""
    from benchmarks.vla_rl_lift_table import table
    from embodied.lift import merge_result

    path = tmp_path / "results.json"
    run = {"model": "ar_vla", "task": "PickCube", "algorithm": "ppo", "S0": 0.17, "S1": 0.58, "lift_points": 41.0,
           "rl_env_steps": 300, "rl_wall_s": 1.0, "command": "c"}
    merge_result(path, run | {"readout": "argmax"})
    merge_result(path, run | {"readout": "expected", "S0": 0.33})
    merge_result(path, run | {"model": "flow_vla", "readout": None})
    merge_result(path, run | {"algorithm": "grpo", "outcome": "success", "readout": "argmax"})
    merge_result(path, run | {"algorithm": "grpo", "outcome": "return", "readout": "argmax"})
    runs = json.loads(path.read_text())["runs"]
    assert sorted(runs) == ["ar_vla/PickCube/grpo", "ar_vla/PickCube/grpo/return", "ar_vla/PickCube/ppo",
                            "ar_vla/PickCube/ppo/expected", "flow_vla/PickCube/ppo"]
    rows = table(json.loads(path.read_text())).splitlines()[2:]
    assert [r.split(" | ")[2] for r in rows] == ["GRPO", "GRPO (return outcome)", "PPO", "PPO (expected readout)", "PPO"]
    # the 0/1 success as each step's sparse reward to go is still GRPO on success: the same row
    merge_result(path, run | {"algorithm": "grpo", "outcome": "success_to_go", "readout": "argmax", "S1": 0.8})
    runs = json.loads(path.read_text())["runs"]
    assert len(runs) == 5 and runs["ar_vla/PickCube/grpo"]["S1"] == 0.8
    assert table(json.loads(path.read_text())).splitlines()[2].split(" | ")[2] == "GRPO (per-step success to go)"


def test_grpo_outcome_names_the_sparse_reward_to_go_as_success():
    from embodied.config import load_config
    from embodied.lift import grpo_outcome
    from embodied.runner.trainer import TrainConfig

    reach = "configs/grpo_reach_ar_vla.yaml"
    assert grpo_outcome(load_config(TrainConfig, reach)) == "success_to_go"
    assert grpo_outcome(load_config(TrainConfig, reach, ["env.reward_mode=dense"])) == "reward_to_go"
    # running on after success, the sparse reward counts the steps spent at the goal: not 0/1
    assert grpo_outcome(load_config(TrainConfig, reach, ["env.terminate_on_success=false"])) == "reward_to_go"
    assert grpo_outcome(load_config(TrainConfig, "configs/grpo_pickcube_ar_vla.yaml")) == "success"
    assert grpo_outcome(load_config(TrainConfig, "configs/ppo_reach_ar_vla.yaml")) is None


def test_overrides_the_lift_would_replace_are_refused(tmp_path):
    from embodied.lift import LiftConfig, run_lift

    cfg = LiftConfig(sft="configs/sft_reach_ar_vla.yaml", rl="configs/grpo_reach_ar_vla.yaml",
                     rl_overrides=("algo.lr=3e-5", "seed=1"), out=str(tmp_path / "lift"), results_file="")
    with pytest.raises(ValueError, match="rl_overrides sets seed=1"):
        run_lift(cfg)
    assert not (tmp_path / "lift").exists()
