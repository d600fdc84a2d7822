"""benchmarks/ppo_vs_peers.py: a tiny race of the four learners runs end to end, and the
speedup is labelled exact or as a bound when a learner runs out of budget."""

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("rsl_rl")

from benchmarks.ppo_vs_peers import (
    LEARNERS,
    ROOT,
    Setup,
    flat_state,
    make_learner,
    race,
    reached_target,
    single_env_factory,
    speedup,
)  # noqa: E402
from embodied.config import load_config  # noqa: E402
from embodied.runner.trainer import TrainConfig  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """As the benchmark runs: one torch thread (tiny MLPs crawl when OpenMP threads contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_race(names, run_dir, max_env_steps: int, eval_every: int) -> dict:
    """A race of `names` on Reach with 8 envs, 4 evaluation episodes."""
    cfg = load_config(TrainConfig, ROOT / "configs/ppo_reach_state.yaml", ["env.num_envs=8"])
    setup = Setup(
        "configs/ppo_reach_state.yaml",
        max_env_steps=max_env_steps,
        max_wall_s=60,
        eval_every=eval_every,
        eval_episodes=4,
    )
    learners = [make_learner(name, cfg, run_dir / name) for name in names]
    results = race(learners, setup, cfg.env)
    for learner in learners:
        learner.close()
    return results


def test_tiny_race(tmp_path, one_torch_thread):
    results = tiny_race(LEARNERS, tmp_path, max_env_steps=400, eval_every=200)
    assert list(results) == list(LEARNERS)
    for name, result in results.items():
        assert result["env_steps"] >= (400 if not result["reached"] else 200), name
        assert result["wall_s"] > 0 and result["evaluations"][0]["env_steps"] >= 200
        assert 0.0 <= result["final_success_rate"] <= 1.0
        assert result["hyperparameters"]["num_envs"] == 8


def test_speedup_kinds():
    def run(reached: bool, wall: float) -> dict:
        return {"reached": reached, "wall_s_to_target": wall if reached else None, "wall_s": wall}

    assert speedup(run(True, 10.0), run(True, 40.0)) == (4.0, "exact")
    assert speedup(run(True, 10.0), run(False, 30.0)) == (3.0, "lower_bound")
    assert speedup(run(False, 20.0), run(True, 10.0)) == (0.5, "upper_bound")
    assert speedup(run(False, 20.0), run(False, 20.0)) == (None, "neither_reached")
    assert speedup(None, run(True, 1.0)) == (None, "not_run")


def test_reached_target_counts_90_of_100_in_float32():
    rate = torch.tensor([True] * 90 + [False] * 10).float().mean().item()  # 0.8999999761581421
    assert reached_target(rate) and not reached_target(89 / 100)


def test_single_env_sb3_sees_the_features_in_the_evaluation_order():
    """The sb3 learner trains on single gymnasium envs but is evaluated on the batched env
    through `flat_state`: both must concatenate the same features in the same order, or its
    VecNormalize statistics would be applied to the wrong inputs."""
    cfg = load_config(TrainConfig, ROOT / "configs/ppo_pickcube_state.yaml", [])
    env = single_env_factory(cfg.env, seed=0)()
    flat, _ = env.reset(seed=3)
    features, _ = env.unwrapped.reset(seed=3)  # the same initial state, as a dict
    batch = {key: torch.as_tensor(value)[None] for key, value in features.items()}
    assert flat.dtype == np.float32 and flat.shape == env.observation_space.shape
    np.testing.assert_array_equal(flat, flat_state(batch)[0].numpy())
    env.close()


def test_a_learner_races_as_it_trains_alone(tmp_path, one_torch_thread):
    """Each learner draws from its own random state: ours learns the same with or without SB3
    beside it (both sample actions and shuffle minibatches from torch's global generator)."""

    def ours_evaluations(names: list[str], run: str) -> list[tuple]:
        results = tiny_race(names, tmp_path / run, max_env_steps=480, eval_every=160)
        return [(e["env_steps"], e["mean_return"]) for e in results["ours"]["evaluations"]]

    alone = ours_evaluations(["ours"], "alone")
    assert len(alone) >= 2
    assert ours_evaluations(["ours", "sb3"], "with_sb3") == alone
