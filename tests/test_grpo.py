"""GRPO: group-normalised advantages, dynamic sampling, the clip-higher loss, shared initial states."""

import math

import pytest
import torch

import sims
from embodied.algos.grpo import (
    GRPO,
    GRPOConfig,
    group_advantages,
    grpo_loss,
    mixed_groups,
    step_advantages,
)
from embodied.runner.rollout import EpisodeTracker
from policies import MLPPolicyConfig, make_policy


def test_group_advantages_by_hand():
    outcomes = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(outcomes, group_size=4, eps=1e-6)
    # group 1: mean 0.5, std 0.5 -> +-1; group 2: all equal -> 0
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0, 0, 0, 0]), atol=1e-5, rtol=0)
    assert mixed_groups(outcomes, 4).tolist() == [True, False]


def test_clip_higher_loss_by_hand():
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.28)
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, stats = grpo_loss(new, old, adv, cfg)
    # min(1.5, 1.28) * 1 = 1.28; min(0.5 * -1, 0.8 * -1) = -0.8; min(1.1 * 2, 1.1 * 2) = 2.2
    assert loss.item() == pytest.approx(-(1.28 - 0.8 + 2.2) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 3
    assert stats["approx_kl"].item() == pytest.approx(kl, rel=1e-5)


def test_groups_start_from_one_state_and_keep_only_mixed_groups():
    env = sims.make("Reach", num_envs=8, max_episode_steps=6)
    obs = env.reset(seed=0)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(16,)), obs, env.action_dim)
    algo = GRPO(policy, GRPOConfig(group_size=4, outcome="return", max_sample_rounds=1))
    episodes = algo.run_group_episodes(env, EpisodeTracker(8, env.device))
    first = episodes["obs"]["observation.environment_state"][0]
    assert torch.equal(first[0], first[3]) and torch.equal(first[4], first[7])
    assert not torch.equal(first[0], first[4])
    assert episodes["valid"].shape == (6, 8) and episodes["valid"].all()
    batch, _, _ = algo.collect(env, obs, EpisodeTracker(8, env.device))
    assert batch["actions"].shape[0] == 6 * 8  # returns differ within both groups: all kept
    algo_success = GRPO(policy, GRPOConfig(group_size=4, outcome="success", max_sample_rounds=1))
    batch, _, _ = algo_success.collect(env, obs, EpisodeTracker(8, env.device))
    # an untrained policy never reaches in 6 steps: every group is uniform, nothing is kept
    assert batch["actions"].shape[0] == 0 and batch["stats"]["mixed_group_fraction"] == 0.0
    assert algo_success.update(batch, 0)["batch_steps"] == 0


def test_num_envs_must_be_a_multiple_of_the_group():
    env = sims.make("Reach", num_envs=6)
    obs = env.reset(seed=0)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(16,)), obs, env.action_dim)
    with pytest.raises(ValueError, match="multiple of group_size"):
        GRPO(policy, GRPOConfig(group_size=4)).run_group_episodes(env, EpisodeTracker(6, env.device))


def test_step_advantages_by_hand():
    # one group of 2 episodes, 3 decisions; episode 1 ends after its second decision
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 5.0]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    adv = step_advantages(rewards, valid, group_size=2, gamma=0.5, eps=1e-6)
    # returns-to-go: episode 0: 1.75, 1.5, 1; episode 1: 0.5, 1, (0: not valid)
    expected = torch.tensor([[1.0, -1.0], [1.0, -1.0], [0.0, 0.0]])  # t = 2: one valid member
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_success_to_go_balances_every_step_where_the_episode_outcome_pushes_down():
    # one group of 4: episode 0 succeeds at its first decision, episode 2 at its third,
    # episodes 1 and 3 fail after three decisions (the 0/1 success as a sparse reward)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [False, True, True, True], [False, True, True, True]])
    per_step = step_advantages(rewards, valid, group_size=4, gamma=1.0, eps=1e-6)
    # t = 0: success to go [1, 0, 1, 0] -> +-1; then [0, 1, 0] over the three still running
    third = 1 / math.sqrt(2 / 9)
    expected = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, -third / 3, 2 * third / 3, -third / 3],
                             [0.0, -third / 3, 2 * third / 3, -third / 3]])
    torch.testing.assert_close(per_step, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_step.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    per_episode = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4, 1e-6).expand(3, 4) * valid
    assert per_episode.sum().item() == pytest.approx(-2.0, abs=1e-4)  # the failures' longer episodes outweigh


def test_reward_to_go_outcome_credits_each_step():
    env = sims.make("Reach", num_envs=8, max_episode_steps=5)
    obs = env.reset(seed=0)
    policy = make_policy(MLPPolicyConfig(hidden_sizes=(16,)), obs, env.action_dim)
    algo = GRPO(policy, GRPOConfig(group_size=4, outcome="reward_to_go", gamma=0.9, max_sample_rounds=1))
    batch, _, _ = algo.collect(env, obs, EpisodeTracker(8, env.device))
    advantages = batch["advantages"].view(5, 8)  # (step, env): every episode runs 5 steps
    torch.testing.assert_close(advantages.view(5, 2, 4).mean(dim=2), torch.zeros(5, 2), atol=1e-5, rtol=0)
    assert not torch.equal(advantages[0], advantages[-1])  # not one advantage per episode
    with pytest.raises(ValueError, match="outcome"):
        GRPO(policy, GRPOConfig(outcome="returns"))


class _ExpertInFirstGroup:
    """The scripted expert's actions in the first group's envs, standing still elsewhere."""

    def __init__(self, env, group_size: int):
        self.expert, self.group_size = env.task.expert(), group_size

    def observe(self, obs) -> None:
        pass

    def act(self, obs):
        from policies.base import PolicyOutput

        action = self.expert.act(obs)
        action[self.group_size:, :6] = 0.0
        return PolicyOutput(action=action[:, None], log_prob=torch.zeros(action.shape[0]))


def test_rollout_statistics_count_one_episode_per_env():
    # The first group reaches its goal and terminates early; its envs auto-reset and keep
    # stepping while the rest run to the time limit. Those extra episodes are not the group's.
    env = sims.make("Reach", num_envs=8, max_episode_steps=30)
    env.reset(seed=0)
    algo = GRPO.__new__(GRPO)
    algo.cfg, algo.policy = GRPOConfig(group_size=4), _ExpertInFirstGroup(env, 4)
    tracker = EpisodeTracker(8, env.device)
    episodes = algo.run_group_episodes(env, tracker)
    finished = tracker.pop()
    assert len(finished) == 8
    assert [e["success"] for e in finished] == episodes["outcomes"].tolist() == [1.0] * 4 + [0.0] * 4
    assert [e["length"] for e in finished] == episodes["valid"].sum(0).tolist()
    assert max(e["length"] for e in finished[:4]) < 30 and all(e["length"] == 30 for e in finished[4:])
