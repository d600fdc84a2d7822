"""Proximal Policy Optimization (Schulman et al., 2017), as CleanRL and rsl_rl write it.

One update, top to bottom:
  1. advantages by GAE(gamma, lambda) over the rollout (`compute_gae`); truncated episodes
     were already bootstrapped by the runner: r_t += gamma * V(s_final)
  2. for `update_epochs` epochs over shuffled minibatches:
       ratio   = exp(log pi(a|s) - log pi_old(a|s))    per chunk, per action or per token
                                                      (`log_prob_level`; A_t is shared by all
                                                      of a decision's actions/tokens)
       L_clip  = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))
       L_value = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))
       L       = L_clip + vf_coef * L_value - ent_coef * entropy
     with advantage normalisation per minibatch and gradient-norm clipping;
  3. KL control: stop the epochs early when the approximate KL exceeds `target_kl`, or adapt
     the learning rate towards `desired_kl` (rsl_rl's schedule).
  4. critic warm-up: for the first `critic_warmup_iterations` only the critic learns (L_value
     on the critic's own parameters), so a pretrained actor is not pushed around by the
     advantages of an untrained value function; `critic_lr` gives the critic's own parameters
     (a VLA's value head) their own learning rate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from embodied.algos.base import (
    AlgoConfig,
    Algorithm,
    minibatches,
    old_log_probs,
    param_groups,
    register_algo,
)
from embodied.runner.rollout import collect_rollout, select_obs
from policies.base import LOG_PROB_LEVELS


@dataclasses.dataclass
class PPOConfig(AlgoConfig):
    name: str = "ppo"
    lr: float = 3e-4
    num_steps: int = 32  # decisions per env per rollout
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 5
    num_minibatches: int = 4
    clip_coef: float = 0.2
    clip_value: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    target_kl: float | None = None  # stop the epochs when approx KL exceeds this
    desired_kl: float | None = None  # adapt the lr towards this KL (rsl_rl), None: fixed lr
    anneal_lr: bool = False  # every learning rate decays linearly to 0 over total_env_steps (CleanRL)
    log_prob_level: str = "chunk"  # "chunk", "action" or "token": the unit of the ratio
    critic_warmup_iterations: int = 0  # iterations that train only the critic
    critic_lr: float | None = None  # learning rate of the critic's own parameters; None: lr
    head_lr: float | None = None  # of a VLA's heads (action expert, ...) when the backbone has lr; None: lr


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
    gamma: float, gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation.

    rewards, values, dones: (S, N) for S steps of N envs; dones[t] says the episode ended at
    step t (after reward[t]); next_value: (N,) value of the state after the last step.
    Returns advantages and returns (S, N).
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else values[t + 1]
        not_done = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * following * not_done - values[t]
        last = delta + gamma * gae_lambda * not_done * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
    new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor,
    cfg: PPOConfig, critic_only: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO objective for one minibatch. Log-probs are (B, K) (K = 1, T or T * A:
    one ratio per chunk, action or token, each with its decision's advantage); the rest (B,)."""
    log_ratio = (new_log_prob - old_log_prob).reshape(advantages.shape[0], -1)  # (B,) -> (B, 1)
    ratio = log_ratio.exp()
    if cfg.norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    advantages = advantages[:, None]
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    if cfg.clip_value:
        clipped = old_value + (new_value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
        value_loss = 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * ((new_value - returns) ** 2).mean()
    entropy_mean = entropy.mean()
    loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean
    if critic_only:
        loss = cfg.vf_coef * value_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # k3 estimator (Schulman)
        clip_frac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
    stats = {
        "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "entropy": entropy_mean.detach(),
        "approx_kl": approx_kl, "clip_fraction": clip_frac,
    }
    return loss, stats


@register_algo
class PPO(Algorithm[PPOConfig]):
    config_class = PPOConfig

    def __init__(self, policy, cfg: PPOConfig):
        super().__init__(policy, cfg)
        if cfg.log_prob_level not in LOG_PROB_LEVELS:
            raise ValueError(f"algo.log_prob_level {cfg.log_prob_level!r} is not one of {', '.join(LOG_PROB_LEVELS)}.")
        self.trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(param_groups(policy, cfg.lr, cfg.head_lr, cfg.critic_lr), lr=cfg.lr, eps=1e-5)
        if cfg.anneal_lr and cfg.desired_kl is not None:
            raise ValueError("algo.anneal_lr and algo.desired_kl both set the learning rate; choose one.")
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def collect(self, env, obs, tracker) -> tuple[dict[str, Any], Any, torch.Tensor]:
        """One rollout of `num_steps` decisions per env with the current policy."""
        return collect_rollout(env, self.policy, obs, self.cfg.num_steps, self.cfg.gamma, tracker)

    def prepare(self, rollout: dict[str, Any], next_value: torch.Tensor | None) -> dict[str, Any]:
        """Add advantages and returns to a rollout of (S, N, ...) tensors; flatten to (S*N, ...)."""
        cfg = self.cfg
        if next_value is None:
            raise ValueError("PPO bootstraps from the value of the observation after its rollout; none was given.")
        advantages, returns = compute_gae(
            rollout["rewards"], rollout["values"], rollout["dones"], next_value, cfg.gamma, cfg.gae_lambda
        )
        rollout = dict(rollout, advantages=advantages, returns=returns)
        batch = flatten_time(rollout)
        batch["env_steps"] = rollout["rewards"].numel() * rollout["actions"].shape[2]
        size = max(1, batch["actions"].shape[0] // cfg.num_minibatches)
        batch["log_probs"] = old_log_probs(self.policy, batch, cfg.log_prob_level, size)
        return batch

    def update(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        cfg = self.cfg
        total = batch["log_probs"].shape[0]
        size = max(1, total // cfg.num_minibatches)
        sums: dict[str, float] = {}
        count = 0
        stop = False
        epochs = 0
        critic_only = iteration < cfg.critic_warmup_iterations
        critic = set(self.policy.critic_parameters()) if critic_only else set()
        if cfg.anneal_lr:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * max(1.0 - self.progress, 0.0)
        for _ in range(cfg.update_epochs):
            epochs += 1
            for idx in minibatches(total, size, self.generator):
                obs = select_obs(batch["obs"], idx)
                extras = {k: v[idx] for k, v in batch["extras"].items()}
                log_prob, entropy, value = self.policy.evaluate_at(obs, batch["actions"][idx], extras, cfg.log_prob_level)
                if value is None:
                    raise ValueError(f"algo ppo needs a policy with a value head; {type(self.policy).__name__} has "
                                     "none (train it with algo grpo, which needs no critic).")
                loss, stats = ppo_loss(
                    log_prob, batch["log_probs"][idx], batch["advantages"][idx], value,
                    batch["values"][idx], batch["returns"][idx], entropy, cfg, critic_only,
                )
                self.check_finite(loss, stats, iteration)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if critic_only:  # Adam skips parameters without a gradient
                    for p in self.policy.parameters():
                        if p not in critic:
                            p.grad = None
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
                count += 1
                kl = float(stats["approx_kl"])
                if cfg.desired_kl is not None:
                    self.adapt_lr(kl)
                if cfg.target_kl is not None and kl > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        metrics = {k: v / max(count, 1) for k, v in sums.items()}
        metrics["epochs"] = epochs
        metrics["critic_warmup"] = float(critic_only)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups[1:]:
            metrics[f"lr_{group['name']}"] = group["lr"]
        with torch.no_grad():
            residual = batch["returns"] - batch["values"]
            metrics["explained_variance"] = float(1 - residual.var() / (batch["returns"].var() + 1e-8))
        return metrics

    def adapt_lr(self, kl: float) -> None:
        """rsl_rl's adaptive schedule: shrink the lr when KL is far above target, grow it when far below."""
        target = self.cfg.desired_kl
        if target is None:
            return
        if kl > 2.0 * target:
            factor = 1 / 1.5
        elif kl < 0.5 * target:
            factor = 1.5
        else:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = min(1e-2, max(1e-5, group["lr"] * factor))


def flatten_time(rollout: dict[str, Any]) -> dict[str, Any]:
    """(S, N, ...) -> (S * N, ...) for every tensor, recursively through dicts."""
    flat: dict[str, Any] = {}
    for key, value in rollout.items():
        if isinstance(value, dict):
            flat[key] = flatten_time(value)
        elif isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 2:
            flat[key] = value.reshape(-1, *value.shape[2:])
        else:
            flat[key] = value
    return flat
