"""The gymnasium and rsl_rl views of a BatchedEnv (sims/adapters.py)."""

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import sims
from sims.adapters import GymEnv, GymVectorEnv, gym_id


def strict_check_env(env: gymnasium.Env) -> None:
    """gymnasium's checker with its warnings as errors, except the two about the unbounded
    (-inf, inf) Box spaces of state features, which are intended."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*Box observation space (minimum|maximum) value is.*infinity")
        check_env(env)


@pytest.mark.parametrize("task", ["PickCube", "Reach"])
def test_check_env(task):
    env = gymnasium.make(gym_id(task))
    strict_check_env(env.unwrapped)
    env.close()


def test_check_env_rendering():
    env = gymnasium.make(gym_id("PickCube"), render_mode="rgb_array", render_width=96, render_height=80)
    strict_check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert "observation.images.front" not in obs  # the render camera is not an observation
    frame = env.render()
    assert frame.shape == (80, 96, 3) and frame.dtype == np.uint8 and frame.std() > 0
    env.close()


def test_every_task_is_registered():
    for task in sims.list_tasks():
        env = gymnasium.make(gym_id(task))
        obs, info = env.reset(seed=0)
        assert obs in env.observation_space and isinstance(info["task"], str)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and isinstance(reward, float)
        env.close()


def test_single_env_seeding_and_truncation():
    env = GymEnv("Reach", max_episode_steps=3)
    first, _ = env.reset(seed=7)
    again, _ = env.reset(seed=7)
    other, _ = env.reset(seed=8)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["observation.environment_state"], other["observation.environment_state"])
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, np.float32)
    flags = [env.step(zero)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.close()


def test_rgb_observations():
    env = gymnasium.make(gym_id("Reach"), obs_mode="rgb", cameras=("front",), render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    image = obs["observation.images.front"]
    assert obs in env.observation_space and image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), image)  # the observation's own frame
    env.close()


def test_vector_env_autoreset():
    n = 4
    envs = gymnasium.make_vec(gym_id("PickCube"), num_envs=n, max_episode_steps=3)
    assert isinstance(envs, GymVectorEnv) and envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert envs.single_observation_space["observation.state"].shape == (25,)
    assert envs.action_space.shape == (n, 7) and envs.single_action_space.shape == (7,)
    obs, info = envs.reset(seed=0)
    assert obs in envs.observation_space and info["task"].shape == (n,)
    zero = np.zeros((n, 7), np.float32)
    for step in range(3):
        obs, reward, terminated, truncated, info = envs.step(zero)
        assert obs in envs.observation_space
        assert reward.shape == terminated.shape == truncated.shape == (n,)
        assert ("final_obs" in info) == (step == 2)
    assert truncated.all() and not terminated.any() and info["_final_obs"].all()
    final = info["final_obs"]
    assert final.shape == (n,) and final[0] in envs.single_observation_space
    # The returned rows are the new episodes' first observations, not the last ones.
    assert not np.allclose(final[0]["observation.environment_state"], obs["observation.environment_state"][0])
    # A partial reset leaves the other envs alone.
    before = obs["observation.environment_state"]
    obs, _ = envs.reset(options={"reset_mask": np.array([True, False, False, False])})
    np.testing.assert_array_equal(obs["observation.environment_state"][1:], before[1:])
    envs.close()


def test_rsl_rl_on_policy_runner():
    pytest.importorskip("rsl_rl")
    from rsl_rl.env import VecEnv
    from rsl_rl.runners import OnPolicyRunner

    from sims.adapters import RslRlVecEnv

    torch.manual_seed(0)
    env = RslRlVecEnv(sims.make("Reach", num_envs=16, max_episode_steps=5))
    assert isinstance(env, VecEnv)
    assert env.get_observations()["policy"].shape == (16, 25 + 6)
    train_cfg = {
        "num_steps_per_env": 8,
        "save_interval": 100,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {"class_name": "PPO", "num_learning_epochs": 1, "num_mini_batches": 2},
        "actor": {
            "class_name": "MLPModel",
            "hidden_dims": [32, 32],
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 1.0},
        },
        "critic": {"class_name": "MLPModel", "hidden_dims": [32, 32]},
    }
    runner = OnPolicyRunner(env, train_cfg, log_dir=None, device="cpu")
    runner.learn(num_learning_iterations=2, init_at_random_ep_len=True)
    assert runner.current_learning_iteration == 1
    assert (env.episode_length_buf <= env.max_episode_length).all()
