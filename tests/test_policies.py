"""Small policies: shapes, log-probs that recompute exactly, HF-layout save/load, clear errors."""

import pytest
import torch

import sims
from policies import CNNPolicyConfig, MLPPolicyConfig, make_policy
from policies.base import Policy


@pytest.fixture(scope="module")
def rgb_obs():
    env = sims.make("Reach", num_envs=4, obs_mode="rgb", cameras=("front",))
    obs = env.reset(seed=0)
    env.close()
    return obs


@pytest.mark.parametrize("chunk", [1, 3])
def test_mlp_log_prob_recomputes_and_round_trips(tmp_path, chunk):
    env = sims.make("PickCube", num_envs=5)
    obs = env.reset(seed=0)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(32,), chunk_size=chunk), obs, env.action_dim)
    policy.observe(obs)
    out = policy.act(obs)
    assert out.action.shape == (5, chunk, 7) and out.log_prob.shape == (5,) and out.value.shape == (5,)
    log_prob, entropy, value = policy.evaluate(obs, out.action, out.extras)
    torch.testing.assert_close(log_prob, out.log_prob)
    torch.testing.assert_close(value, out.value)
    policy.save_pretrained(tmp_path / "mlp")
    loaded = Policy.from_pretrained(tmp_path / "mlp")
    assert loaded.config == policy.config
    torch.testing.assert_close(loaded.act(obs, deterministic=True).action, policy.act(obs, deterministic=True).action)


def test_cnn_policy_on_camera_observations(tmp_path, rgb_obs):
    policy = make_policy(CNNPolicyConfig(channels=(8, 16, 16), feature_dim=32, hidden_sizes=(32,)), rgb_obs, 7)
    assert policy.config.state_dim == 25
    out = policy.act(rgb_obs)
    assert out.action.shape == (4, 1, 7)
    log_prob, _, _ = policy.evaluate(rgb_obs, out.action, out.extras)
    torch.testing.assert_close(log_prob, out.log_prob)
    policy.save_pretrained(tmp_path / "cnn")
    loaded = Policy.from_pretrained(tmp_path / "cnn")
    torch.testing.assert_close(loaded.value(rgb_obs), policy.value(rgb_obs))


def test_policy_input_errors_are_clear(tmp_path, rgb_obs):
    policy = make_policy(CNNPolicyConfig(cameras=("wrist",), channels=(8, 16, 16), feature_dim=16, hidden_sizes=(16,)), {
        "observation.images.wrist": rgb_obs["observation.images.front"], "observation.state": rgb_obs["observation.state"]}, 7)
    with pytest.raises(KeyError, match="observation.images.wrist"):
        policy.act(rgb_obs)
    mlp = make_policy(MLPPolicyConfig(hidden_sizes=(8,), obs_keys=("observation.state",)), rgb_obs, 7)
    with pytest.raises(ValueError, match="built for 25"):
        mlp.act({"observation.state": torch.zeros(2, 30)})
    with pytest.raises(FileNotFoundError, match="not a saved policy"):
        Policy.from_pretrained(tmp_path)


def test_evaluation_repeats_exactly_and_leaves_the_callers_rng_alone():
    """A stochastic policy evaluated twice on one seed gives the same episodes (the flow VLA's
    'deterministic' mode draws initial noise, so this is what makes its S0/S1 comparable)."""
    from embodied.evaluate import evaluate_policy
    from sims.core import EnvConfig

    env_cfg = EnvConfig(task="Reach", num_envs=1, max_episode_steps=10)
    env = sims.make(env_cfg)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(16,)), env.reset(seed=0), env.action_dim)
    env.close()
    torch.manual_seed(123)
    first = evaluate_policy(policy, env_cfg, episodes=3, seed=7, deterministic=False)
    after_evaluation = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_evaluation)
    torch.manual_seed(999)
    second = evaluate_policy(policy, env_cfg, episodes=3, seed=7, deterministic=False)
    assert first["mean_return"] == second["mean_return"]
    other_seed = evaluate_policy(policy, env_cfg, episodes=3, seed=8, deterministic=False)
    assert other_seed["mean_return"] != first["mean_return"]


def test_evaluation_reports_the_tasks_stages():
    """A task with milestones gets stage/<name> rates (here none reached by an untrained MLP in
    10 steps); a task without them gets none."""
    from embodied.evaluate import evaluate_policy
    from sims.core import EnvConfig

    for task, expected in (("PickCube", {"stage/lifted"}), ("Reach", set())):
        env_cfg = EnvConfig(task=task, num_envs=1, max_episode_steps=10)
        env = sims.make(env_cfg)
        policy = make_policy(MLPPolicyConfig(hidden_sizes=(16,)), env.reset(seed=0), env.action_dim)
        env.close()
        result = evaluate_policy(policy, env_cfg, episodes=3, seed=7)
        assert {k for k in result if k.startswith("stage/")} == expected
        assert all(result[k] == 0.0 for k in expected)
