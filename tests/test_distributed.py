"""The Ray runner: placement, config checks, the pieces the driver composes (rollout merge and
split, observation-statistics merge), a short real Ray run (weight sync, DDP ranks in sync,
one PPO update), and (slow) PPO on Reach to the single-process runner's success."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from embodied.config import load_config
from embodied.distributed.config import DistributedConfig, DistributedTrainConfig, check_config
from embodied.distributed.placement import plan_placement
from embodied.distributed.runner import concat_envs, split_envs
from embodied.distributed.workers import merge_normalizer_states
from policies.normalizer import RunningNormalizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/ppo_reach_state_ray.yaml"


def config(*overrides: str) -> DistributedTrainConfig:
    return load_config(DistributedTrainConfig, CONFIG, list(overrides))


# ---------------------------------------------------------------------------- placement
def test_cpu_only_placement_without_gpus():
    plan = plan_placement(
        DistributedConfig(num_env_workers=2, num_rollout_workers=1, num_learners=2)
    )
    assert [len(plan[c]) for c in ("env", "rollout", "learner")] == [2, 1, 2]
    assert all(
        a.device == "cpu" and a.num_gpus == 0 and not a.gpu_ids
        for actors in plan.values()
        for a in actors
    )


def test_disaggregated_gpu_mapping_pins_each_component():
    d = DistributedConfig(
        placement="disaggregated",
        num_env_workers=2,
        num_learners=2,
        gpus={"env": [0], "rollout": [1], "learner": [2, 3]},
    )
    plan = plan_placement(d)
    assert [a.gpu_ids for a in plan["env"]] == [(0,), (0,)] and [
        a.num_gpus for a in plan["env"]
    ] == [0.5, 0.5]
    assert plan["rollout"][0].gpu_ids == (1,) and plan["rollout"][0].num_gpus == 1.0
    assert [a.gpu_ids for a in plan["learner"]] == [(2,), (3,)]
    options = plan["learner"][1].ray_options()
    assert (
        options["num_gpus"] == 1.0
        and options["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == "3"
    )
    assert plan["learner"][1].device == "cuda"


def test_collocated_placement_shares_the_gpus():
    d = DistributedConfig(
        placement="collocated", num_env_workers=2, num_learners=2, gpus={"learner": [0, 1]}
    )
    plan = plan_placement(d)
    per_gpu: dict[int, float] = {}
    for actors in plan.values():
        for a in actors:
            per_gpu[a.gpu_ids[0]] = per_gpu.get(a.gpu_ids[0], 0.0) + a.num_gpus
    assert set(per_gpu) == {0, 1} and all(total <= 1.0 for total in per_gpu.values())


def test_gpus_per_actor_lets_ray_place():
    plan = plan_placement(DistributedConfig(gpus_per_actor={"learner": 1, "rollout": 0.5}))
    assert (
        plan["learner"][0].num_gpus == 1
        and plan["rollout"][0].num_gpus == 0.5
        and plan["env"][0].num_gpus == 0
    )
    assert "runtime_env" not in plan["learner"][0].ray_options()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distributed.placement=spread"], "placement"),
        (["distributed.strategy=zero3"], "strategy"),
        (
            ["distributed.num_env_workers=3"],
            "multiple of num_rollout_workers|multiple of num_env_workers",
        ),
        (["env.num_envs=100", "distributed.num_learners=3"], "multiple of num_env_workers"),
        (["distributed.gpus={env: [0], rollout: [0], learner: [1]}"], "GPU 0 is mapped to both"),
        (["distributed.gpus={envs: [0]}"], "unknown component"),
        (["rollout.stages=2"], "distributed.placement"),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_config(config(*overrides))


# ---------------------------------------------------------------------------- driver pieces
def test_concat_then_split_envs_round_trips():
    def rollout(n, offset):
        return {
            "obs": {
                "observation.state": torch.arange(4 * n * 3).reshape(4, n, 3) + offset,
                "task": np.full((4, n), f"t{offset}", dtype=object),
            },
            "actions": torch.randn(4, n, 1, 7),
            "rewards": torch.randn(4, n),
            "extras": {},
        }

    parts = [rollout(2, 0), rollout(2, 100)]
    merged = concat_envs(parts)
    assert merged["obs"]["observation.state"].shape == (4, 4, 3) and merged["obs"][
        "task"
    ].shape == (4, 4)
    back = split_envs(merged, 2)
    for original, piece in zip(parts, back, strict=True):
        assert torch.equal(piece["obs"]["observation.state"], original["obs"]["observation.state"])
        assert (piece["obs"]["task"] == original["obs"]["task"]).all()
        assert torch.equal(piece["actions"], original["actions"])
    assert [v.tolist() for v in split_envs(torch.arange(4.0), 2)] == [[0.0, 1.0], [2.0, 3.0]]


def test_merged_normalizer_equals_one_stream():
    """Two workers fold their own batches into copies of the same statistics; the merge equals
    one normaliser that saw everything."""
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(50, 4, generator=generator) * 3 + 1 for _ in range(3)]
    start = RunningNormalizer(4)
    start.update(data[0])

    def state(norm):
        return {f"n.{k}": getattr(norm, k).clone() for k in ("mean", "var", "count")}

    workers = []
    for batch in data[1:]:
        copy = RunningNormalizer(4)
        copy.load_state_dict(start.state_dict())
        copy.update(batch)
        workers.append(state(copy))
    merged = merge_normalizer_states(state(start), workers)
    everything = RunningNormalizer(4)
    everything.update(torch.cat(data))
    torch.testing.assert_close(merged["n.mean"], everything.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged["n.var"], everything.var, atol=1e-4, rtol=1e-5)
    assert float(merged["n.count"]) == pytest.approx(150, abs=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_learner_updates_through_ddp_or_fsdp(strategy):
    """A one-rank gloo group in this process: the learner runs PPO's update through the DDP or
    FSDP wrapper on a real rollout, the weights move, and `weights()` gives the full state."""
    import sims
    from embodied.distributed.workers import LearnerWorker, free_port, normalizer_state
    from embodied.runner.rollout import EpisodeTracker, collect_rollout
    from policies import make_policy

    cfg = config("env.num_envs=8", "algo.num_steps=4", f"distributed.strategy={strategy}")
    env = sims.make(dataclasses.replace(cfg.env, num_threads=1))
    obs = env.reset(seed=0)
    torch.manual_seed(cfg.seed)
    actor = make_policy(cfg.policy, obs, env.action_dim)
    rollout, _, next_value = collect_rollout(env, actor, obs, 4, cfg.algo.gamma, EpisodeTracker(8, env.device))
    learner = LearnerWorker(cfg, obs, env.action_dim, rank=0, world_size=1)
    learner.setup("127.0.0.1", free_port())
    try:
        before = learner.weights()
        assert before.keys() == actor.state_dict().keys()
        metrics = learner.update(rollout, next_value, normalizer_state(actor))
        assert metrics["env_steps"] == 32 and np.isfinite(metrics["policy_loss"])
        after = learner.weights()
        assert any(not torch.equal(before[k], after[k]) for k in after if after[k].is_floating_point())
        torch.testing.assert_close(after["normalizer.mean"], actor.normalizer.mean)  # the workers' statistics
    finally:
        learner.close()
        env.close()


# ---------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="the 'distributed' extra (ray) is not installed")
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_one_update_and_weight_sync_on_ray(ray_runtime, tmp_path):
    """2 env workers, 1 rollout worker, 2 DDP learners (gloo), pipelined: after one iteration
    both learner ranks hold the same parameters, they moved, and the rollout worker and the
    driver hold exactly rank 0's weights."""
    from embodied.distributed.runner import RayTrainer

    cfg = config(
        f"run_dir={tmp_path / 'run'}",
        "env.num_envs=16",
        "algo.num_steps=8",
        "total_env_steps=128",
        "distributed.num_learners=2",
        "eval.episodes=8",
        "log.progress_bar=false",
    )
    trainer = RayTrainer(cfg)
    try:
        ray = ray_runtime
        before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        metrics = trainer.step()
        assert metrics["train/epochs"] >= 1 and np.isfinite(metrics["train/policy_loss"])
        assert trainer.env_steps == 16 * 8
        sums = ray.get([learner.parameter_checksum.remote() for learner in trainer.learners])
        assert sums[0] == pytest.approx(sums[1], rel=0, abs=1e-9)
        after = trainer.policy.state_dict()
        assert any(
            not torch.equal(before[k], after[k]) for k in after if after[k].is_floating_point()
        )
        worker_weights = ray.get(trainer.rollout_workers[0].weights.remote())
        for key, value in after.items():
            assert torch.equal(worker_weights[key], value), key
        # the normaliser statistics the rollout worker gathered went to the learners
        assert float(after["normalizer.count"]) > 1
    finally:
        trainer.close()


def test_ppo_reach_on_ray_matches_single_process(ray_runtime, tmp_path):
    """configs/ppo_reach_state_ray.yaml (2 env workers, 1 rollout worker, 1 learner) reaches the
    single-process recipe's bar on Reach (tests/test_recipes.py: >= 90%). In the default run,
    as issue 8 asks of CI (~2 min on 2 cores)."""
    from embodied.distributed.runner import RayTrainer

    trainer = RayTrainer(
        dataclasses.replace(config(f"run_dir={tmp_path / 'run'}", "log.progress_bar=false"))
    )
    try:
        final = trainer.train()
    finally:
        trainer.close()
    assert final["success_rate"] >= 0.9
    assert (tmp_path / "run" / "eval.json").exists()
