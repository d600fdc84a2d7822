"""PPO: GAE against a reference loop, the loss against hand-computed values, learning on Reach."""

import math

import pytest
import torch

from embodied.algos.ppo import PPOConfig, compute_gae, ppo_loss


def reference_gae(rewards, values, dones, next_value, gamma, lam):
    """Textbook GAE, one env at a time, with plain Python floats."""
    steps, envs = len(rewards), len(rewards[0])
    advantages = [[0.0] * envs for _ in range(steps)]
    for env in range(envs):
        running = 0.0
        for t in reversed(range(steps)):
            following = next_value[env] if t == steps - 1 else values[t + 1][env]
            mask = 0.0 if dones[t][env] else 1.0
            delta = rewards[t][env] + gamma * following * mask - values[t][env]
            running = delta + gamma * lam * mask * running
            advantages[t][env] = running
    return advantages


def test_gae_matches_reference_loop_with_episode_ends():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(7, 3, generator=gen)
    values = torch.rand(7, 3, generator=gen)
    dones = torch.rand(7, 3, generator=gen) < 0.3
    next_value = torch.rand(3, generator=gen)
    advantages, returns = compute_gae(rewards, values, dones, next_value, 0.9, 0.8)
    expected = torch.tensor(reference_gae(rewards.tolist(), values.tolist(), dones.tolist(), next_value.tolist(), 0.9, 0.8))
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def test_gae_one_step_terminal_is_reward_minus_value():
    adv, ret = compute_gae(torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.tensor([[True]]), torch.tensor([9.0]), 0.99, 0.95)
    assert adv.item() == pytest.approx(1.5) and ret.item() == pytest.approx(2.0)


def test_ppo_loss_matches_hand_computation():
    cfg = PPOConfig(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, norm_adv=False, clip_value=True)
    old_lp = torch.tensor([0.0, 0.0])
    new_lp = torch.tensor([math.log(1.5), math.log(0.5)])  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, -1.0])
    old_v, new_v, ret = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.0])
    entropy = torch.tensor([2.0, 2.0])
    loss, stats = ppo_loss(new_lp, old_lp, adv, new_v, old_v, ret, entropy, cfg)
    # policy: env0 min(1.5*1, 1.2*1) = 1.2 -> -1.2; env1 min(0.5*-1, 0.8*-1) = -0.8 -> 0.8; mean -0.2
    assert stats["policy_loss"].item() == pytest.approx(-0.2)
    # value: env0 unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64; env1 (1-0)^2 = 1 both
    assert stats["value_loss"].item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert loss.item() == pytest.approx(-0.2 + 0.5 * 0.41 - 0.01 * 2.0)
    # k3 KL estimator: mean((r - 1) - log r)
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert stats["approx_kl"].item() == pytest.approx(expected_kl)
    assert stats["clip_fraction"].item() == pytest.approx(1.0)


def test_advantage_normalisation_is_per_minibatch():
    cfg = PPOConfig(norm_adv=True, clip_coef=10.0, clip_value=False, vf_coef=0.0)
    zeros = torch.zeros(4)
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0])
    _, stats = ppo_loss(zeros, zeros, adv, zeros, zeros, zeros, zeros, cfg)
    assert stats["policy_loss"].item() == pytest.approx(0.0, abs=1e-6)  # normalised advantages have mean 0


@pytest.mark.parametrize("kind", ["ar_vla", "flow_vla"])
def test_ppo_updates_a_vla_with_its_instructions(kind):
    """The rollout keeps obs["task"], so a VLA's evaluate sees the same instructions as act."""
    import sims
    from embodied.algos.ppo import PPO
    from embodied.runner.rollout import EpisodeTracker
    from policies import make_policy
    from policies.vla.autoregressive import ARVLAConfig
    from policies.vla.backbone import VLMConfig
    from policies.vla.flow import FlowVLAConfig

    torch.manual_seed(0)
    env = sims.make("Reach", num_envs=4, obs_mode="rgb", cameras=("front",), render=sims.RenderSettings(32, 32))
    obs = env.reset(seed=0)
    vlm = VLMConfig(image_size=(32, 32))
    config = ARVLAConfig(vlm=vlm, chunk_size=2) if kind == "ar_vla" else FlowVLAConfig(vlm=vlm, chunk_size=2, num_steps=3)
    policy = make_policy(config, obs, env.action_dim)
    algo = PPO(policy, PPOConfig(num_steps=3, update_epochs=1, num_minibatches=1))
    rollout, obs, next_value = algo.collect(env, obs, EpisodeTracker(4, env.device))
    assert rollout["obs"]["task"].shape == (3, 4) and rollout["obs"]["task"][0, 0] in env.task.instructions
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = algo.update(algo.prepare(rollout, next_value), 0)
    assert all(math.isfinite(v) for v in metrics.values())
    assert abs(metrics["approx_kl"]) < 1e-4, "one minibatch, before its step: evaluate recomputes act's log-probs"
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_anneal_lr_decays_every_learning_rate_linearly_over_the_budget():
    import sims
    from embodied.algos.ppo import PPO
    from embodied.runner.rollout import EpisodeTracker
    from policies import MLPPolicyConfig, make_policy

    torch.manual_seed(0)
    env = sims.make("Reach", num_envs=4, obs_mode="state")
    obs = env.reset(seed=0)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(16,)), obs, env.action_dim)
    algo = PPO(policy, PPOConfig(lr=1e-3, critic_lr=1e-2, num_steps=4, update_epochs=1, num_minibatches=1, anneal_lr=True))
    rollout, obs, next_value = algo.collect(env, obs, EpisodeTracker(4, env.device))
    batch = algo.prepare(rollout, next_value)
    for progress in (0.0, 0.25, 0.75):
        algo.progress = progress  # the trainer's env steps / total_env_steps before the update
        metrics = algo.update(batch, 0)
        assert metrics["lr"] == pytest.approx(1e-3 * (1 - progress))
        assert metrics["lr_critic"] == pytest.approx(1e-2 * (1 - progress))
    with pytest.raises(ValueError, match="anneal_lr"):
        PPO(policy, PPOConfig(anneal_lr=True, desired_kl=0.01))
