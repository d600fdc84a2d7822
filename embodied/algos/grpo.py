"""Group Relative Policy Optimization for embodied tasks (DeepSeekMath's GRPO; DAPO's
clip-higher and dynamic sampling; SimpleVLA-RL / RLinf-VLA's use of it on robot tasks).

One iteration, top to bottom:
  1. every group of G envs starts from one initial state (env.set_state copies the group
     leader's sampled state to its members); each env runs one episode;
  2. R_i = the episode's outcome: success (0/1, default) or its return;
     A_i = (R_i - mean_group(R)) / (std_group(R) + eps), for every step of episode i, and
     steps after the episode's end are masked out;
     or, with outcome "reward_to_go" (DeepSeekMath's process supervision, with a per-step
     baseline), each step's own discounted return-to-go G_it = sum_{j >= t} gamma^(j-t) r_ij,
     A_it = (G_it - mean_group(G_t)) / (std_group(G_t) + eps) over the group's episodes still
     running at step t: a step is credited with what followed it, not with the whole episode.
     With the sparse 0/1 success reward, gamma 1 and episodes ending at success, this is the success
     outcome with a per-step baseline: a failed episode's steps past the group's successes are
     compared with the episodes still running beside them, instead of all carrying the
     episode's negative advantage (whose extra steps outweigh the successes' in the mean);
  3. dynamic sampling: groups whose members all succeed or all fail carry no signal and are
     dropped; new groups are sampled until `min_groups` mixed groups are kept (or
     `max_sample_rounds` rounds were tried);
  4. L = -mean_valid(min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)), no critic,
     no KL term by default; the ratio is per chunk, per action or per token (`log_prob_level`),
     each carrying its decision's advantage. Sampling temperature / noise level are the
     policy's (`policy.temperature=...`, `policy.noise_level=...`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from embodied.algos.base import (
    AlgoConfig,
    Algorithm,
    minibatches,
    old_log_probs,
    param_groups,
    register_algo,
)
from embodied.runner.rollout import concat_obs, gather_obs, select_obs, stack_obs
from policies.base import LOG_PROB_LEVELS

OUTCOMES = ("success", "return", "reward_to_go")


@dataclasses.dataclass
class GRPOConfig(AlgoConfig):
    name: str = "grpo"
    lr: float = 3e-4
    group_size: int = 8  # G; num_envs must be a multiple
    outcome: str = "success"  # "success" (0/1), "return" or "reward_to_go" (per step)
    clip_low: float = 0.2
    clip_high: float = 0.28  # clip-higher (DAPO)
    update_epochs: int = 4
    num_minibatches: int = 4
    max_grad_norm: float = 0.5
    eps: float = 1e-6
    dynamic_sampling: bool = True
    min_groups: int = 0  # mixed groups to collect per iteration; 0: num_envs // group_size // 2
    max_sample_rounds: int = 4
    gamma: float = 1.0  # discount of the "reward_to_go" outcome
    log_prob_level: str = "chunk"  # "chunk", "action" or "token": the unit of the ratio
    head_lr: float | None = None  # of a VLA's heads when the backbone has lr; None: lr


def group_advantages(outcomes: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(N,) outcomes of N = groups * G episodes -> (N,) group-normalised advantages."""
    grouped = outcomes.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False) if group_size > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + eps)).view(-1)


def step_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, group_size: int, gamma: float, eps: float
) -> torch.Tensor:
    """Per-step group-normalised returns-to-go.

    rewards, valid: (S, N) per decision for N = groups * G episodes (valid: the episode was
    still running). Returns (S, N) advantages (G_t - mean_group(G_t)) / (std_group(G_t) + eps),
    with the statistics over the group's valid steps at t; 0 where not valid.
    """
    steps, n = rewards.shape
    rewards = torch.where(valid, rewards, 0.0)
    to_go = torch.zeros_like(rewards)
    following = torch.zeros(n, device=rewards.device)
    for t in reversed(range(steps)):
        following = rewards[t] + gamma * following
        to_go[t] = following
    grouped = to_go.view(steps, -1, group_size)
    mask = valid.view(steps, -1, group_size).float()
    count = mask.sum(dim=2, keepdim=True).clamp_min(1.0)
    mean = (grouped * mask).sum(dim=2, keepdim=True) / count
    std = (((grouped - mean) ** 2 * mask).sum(dim=2, keepdim=True) / count).sqrt()
    return ((grouped - mean) / (std + eps) * mask).view(steps, n)


def mixed_groups(outcomes: torch.Tensor, group_size: int) -> torch.Tensor:
    """(groups,) bool: the group's outcomes are not all equal."""
    grouped = outcomes.view(-1, group_size)
    return (grouped != grouped[:, :1]).any(dim=1)


def grpo_loss(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, cfg: GRPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-higher surrogate over the valid steps of a minibatch; log-probs (B, K) (one ratio
    per chunk, action or token), advantages (B,)."""
    log_ratio = (new_log_prob - old_log_prob).reshape(advantages.shape[0], -1)  # (B,) -> (B, 1)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    advantages = advantages[:, None]
    loss = -torch.min(ratio * advantages, clipped * advantages).mean()
    with torch.no_grad():
        stats = {
            "policy_loss": loss.detach(),
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clip_fraction": ((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)).float().mean(),
        }
    return loss, stats


@register_algo
class GRPO(Algorithm[GRPOConfig]):
    config_class = GRPOConfig

    def __init__(self, policy, cfg: GRPOConfig):
        super().__init__(policy, cfg)
        if cfg.outcome not in OUTCOMES:
            raise ValueError(f"GRPO outcome {cfg.outcome!r} is not one of {', '.join(OUTCOMES)}.")
        if cfg.log_prob_level not in LOG_PROB_LEVELS:
            raise ValueError(f"algo.log_prob_level {cfg.log_prob_level!r} is not one of {', '.join(LOG_PROB_LEVELS)}.")
        self.trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(param_groups(policy, cfg.lr, cfg.head_lr, critic=False), lr=cfg.lr, eps=1e-5)

    @torch.no_grad()
    def run_group_episodes(self, env, tracker) -> dict[str, Any]:
        """One episode per env, groups of G sharing an initial state. Returns per-step tensors
        (S, N, ...), the valid mask and rewards per decision (S, N), outcomes (N,) and the env
        steps used."""
        cfg = self.cfg
        n, g = env.num_envs, cfg.group_size
        if n % g:
            raise ValueError(f"GRPO needs num_envs ({n}) to be a multiple of group_size ({g}).")
        env.reset()
        leaders = torch.arange(0, n, g, device=env.device).repeat_interleave(g)
        state = env.get_state()
        obs = env.set_state({k: v[leaders] for k, v in state.items()})
        alive = torch.ones(n, dtype=torch.bool, device=env.device)
        succeeded = torch.zeros(n, dtype=torch.bool, device=env.device)
        returns = torch.zeros(n, device=env.device)
        lengths = torch.zeros(n, dtype=torch.long, device=env.device)
        steps: dict[str, list] = {"obs": [], "actions": [], "log_probs": [], "extras": [], "valid": [], "rewards": []}
        env_steps = 0
        while alive.any():
            self.policy.observe(obs)
            out = self.policy.act(obs)
            steps["obs"].append(obs)
            steps["actions"].append(out.action)
            steps["log_probs"].append(out.log_prob)
            steps["extras"].append(out.extras)
            steps["valid"].append(alive.clone())
            decision_reward = torch.zeros(n, device=env.device)
            for t in range(out.action.shape[1]):
                obs, reward, terminated, truncated, info = env.step(out.action[:, t])
                env_steps += int(alive.sum())
                lengths += alive.long()
                decision_reward += torch.where(alive, reward, 0.0)
                succeeded |= info["success"] & alive
                alive &= ~(terminated | truncated)
                if not alive.any():
                    break
            steps["rewards"].append(decision_reward)
            returns += decision_reward
        tracker.record(returns, lengths, succeeded)
        outcomes = succeeded.float() if cfg.outcome == "success" else returns
        return {
            "obs": stack_obs(steps["obs"]),
            "actions": torch.stack(steps["actions"]),
            "log_probs": torch.stack(steps["log_probs"]),
            "extras": {k: torch.stack([e[k] for e in steps["extras"]]) for k in steps["extras"][0]},
            "valid": torch.stack(steps["valid"]),
            "rewards": torch.stack(steps["rewards"]),
            "outcomes": outcomes,
            "env_steps": env_steps,
            "obs_after": obs,
        }

    def collect(self, env, obs, tracker):
        cfg = self.cfg
        groups_wanted = cfg.min_groups or max(1, env.num_envs // cfg.group_size // 2)
        kept: list[dict[str, Any]] = []  # obs and extras are dicts of tensors
        env_steps, rounds, groups_seen, kept_groups = 0, 0, 0, 0
        while rounds < max(1, cfg.max_sample_rounds) and kept_groups < groups_wanted:
            episodes = self.run_group_episodes(env, tracker)
            rounds += 1
            env_steps += episodes["env_steps"]
            outcomes = episodes["outcomes"]
            valid = episodes["valid"]
            if cfg.outcome == "reward_to_go":
                advantages = step_advantages(episodes["rewards"], valid, cfg.group_size, cfg.gamma, cfg.eps)
            else:  # one advantage per episode, for each of its steps
                advantages = group_advantages(outcomes, cfg.group_size, cfg.eps).expand_as(valid)
            keep_group = mixed_groups(outcomes, cfg.group_size) if cfg.dynamic_sampling else torch.ones(
                env.num_envs // cfg.group_size, dtype=torch.bool, device=env.device)
            groups_seen += keep_group.numel()
            kept_groups += int(keep_group.sum())
            keep_env = keep_group.repeat_interleave(cfg.group_size)
            valid = valid & keep_env[None]
            index = valid.nonzero(as_tuple=True)  # (step, env) pairs of valid, kept steps
            kept.append({
                "obs": gather_obs(episodes["obs"], index),
                "actions": episodes["actions"][index],
                "log_probs": episodes["log_probs"][index],
                "extras": {k: v[index] for k, v in episodes["extras"].items()},
                "advantages": advantages[index],
            })
            obs = episodes["obs_after"]
        batch = {
            "obs": concat_obs([b["obs"] for b in kept]),
            "actions": torch.cat([b["actions"] for b in kept]),
            "log_probs": torch.cat([b["log_probs"] for b in kept]),
            "extras": {k: torch.cat([b["extras"][k] for b in kept]) for k in kept[0]["extras"]},
            "advantages": torch.cat([b["advantages"] for b in kept]),
            "env_steps": env_steps,
            "stats": {"mixed_group_fraction": kept_groups / max(groups_seen, 1), "sample_rounds": rounds},
        }
        return batch, obs, torch.zeros(env.num_envs, device=env.device)

    def prepare(self, rollout: dict[str, Any], next_value: torch.Tensor | None) -> dict[str, Any]:
        """The behaviour log-probs at the configured level (recomputed below chunk level)."""
        size = max(1, rollout["actions"].shape[0] // self.cfg.num_minibatches)
        if rollout["actions"].shape[0] == 0:
            return rollout
        return dict(rollout, log_probs=old_log_probs(self.policy, rollout, self.cfg.log_prob_level, size))

    def update(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        cfg = self.cfg
        total = batch["log_probs"].shape[0]
        metrics: dict[str, float] = dict(batch["stats"])
        metrics["batch_steps"] = total
        if total == 0:  # every group was uniform: nothing to learn from this round
            return metrics
        size = max(1, total // cfg.num_minibatches)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.update_epochs):
            for idx in minibatches(total, size, self.generator):
                obs = select_obs(batch["obs"], idx)
                extras = {k: v[idx] for k, v in batch["extras"].items()}
                log_prob, entropy, _ = self.policy.evaluate_at(obs, batch["actions"][idx], extras, cfg.log_prob_level)
                loss, stats = grpo_loss(log_prob, batch["log_probs"][idx], batch["advantages"][idx], cfg)
                self.check_finite(loss, stats, iteration)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                self.optimizer.step()
                stats["entropy"] = entropy.detach().mean()
                stats["grad_norm"] = grad_norm
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
        metrics.update({k: v / count for k, v in sums.items()})
        return metrics
