"""The stable-baselines3 view of a BatchedEnv (sims.adapters.SB3VecEnv), used by
benchmarks/ppo_vs_peers.py: it must keep matching the batched env and keep training with SB3."""

import numpy as np
import pytest
import torch

import sims

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import VecEnv, VecNormalize  # noqa: E402

from sims.adapters import SB3VecEnv  # noqa: E402

KEYS = ("observation.state", "observation.environment_state")


def flat(obs: dict) -> np.ndarray:
    return torch.cat([obs[key] for key in KEYS], dim=1).numpy()


def test_matches_the_batched_env():
    """Observations, rewards, dones and terminal observations are the batched env's, step by
    step, across an episode end (truncation at 4 steps) and after SB3-style seeding."""
    n = 6
    venv = SB3VecEnv(sims.make("Reach", num_envs=n, max_episode_steps=4))
    raw = sims.make("Reach", num_envs=n, max_episode_steps=4)
    assert isinstance(venv, VecEnv)
    assert venv.observation_space.shape == (25 + raw.reset(seed=0)[KEYS[1]].shape[1],)
    assert venv.action_space.shape == (raw.action_dim,)

    venv.seed(11)
    np.testing.assert_array_equal(venv.reset(), flat(raw.reset(seed=11)))
    assert isinstance(venv.reset_infos[0]["task"], str)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        action = torch.rand(n, raw.action_dim, generator=gen) * 2 - 1
        obs, reward, done, infos = venv.step(action.numpy())
        raw_obs, raw_reward, terminated, truncated, info = raw.step(action)
        np.testing.assert_array_equal(obs, flat(raw_obs))
        np.testing.assert_array_equal(reward, raw_reward.numpy())
        np.testing.assert_array_equal(done, (terminated | truncated).numpy())
        assert obs.dtype == np.float32 and reward.dtype == np.float32 and done.dtype == bool
        assert len(infos) == n
        if step == 3:  # every episode is truncated here
            assert done.all()
            last = flat(info["final_observation"])
            for i in range(n):
                np.testing.assert_array_equal(infos[i]["terminal_observation"], last[i])
                assert infos[i]["TimeLimit.truncated"] is True
                assert infos[i]["is_success"] == bool(info["success"][i])
            assert not np.allclose(obs, last)  # the rows are the next episodes' first observations
        else:
            assert not done.any() and all(i == {} for i in infos)
    with pytest.raises(NotImplementedError):
        venv.set_attr("anything", 1)
    venv.close()
    raw.close()


def test_sb3_ppo_learns_through_it():
    """SB3's PPO (MlpPolicy, VecNormalize) runs a few hundred steps through the adapter, and a
    deterministic prediction is a valid action batch."""
    venv = VecNormalize(
        SB3VecEnv(sims.make("Reach", num_envs=8, max_episode_steps=10)), norm_reward=False
    )
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=16,
        batch_size=64,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [32, 32]},
    )
    model.learn(total_timesteps=384)
    assert model.num_timesteps == 384
    assert len(model.ep_success_buffer) > 0  # the adapter's is_success reached SB3's bookkeeping
    action, _ = model.predict(venv.normalize_obs(venv.get_original_obs()), deterministic=True)
    assert action.shape == (8, 7) and np.all(np.abs(action) <= 1)
    venv.close()
