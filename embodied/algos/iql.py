"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021): the losses, top to bottom.

IQL never queries Q at actions outside the data. With u = min_e Q'_e(s, a) - V(s) on dataset
pairs (s, a):

    value (expectile tau):   L_V  = mean |tau - 1(u < 0)| u^2
    critic (n-step):         L_Q  = sum_e mean (Q_e(s, a) - (R + discount * V(s')))^2
    actor (AWR):             L_pi = -mean min(exp(beta u), max_weight) log pi(a | s)

`embodied/algos/o2o.py` runs these offline and then online.
"""

from __future__ import annotations

import torch


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau - 1(diff < 0)| diff^2 of (B,) differences (tau = 0.5: half the MSE)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def value_loss(target_q: torch.Tensor, value: torch.Tensor, expectile: float) -> torch.Tensor:
    """L_V with target_q (B,) = min over the target ensemble, value (B,) = V(s)."""
    return expectile_loss(target_q - value, expectile)


def critic_loss(q: torch.Tensor, n_step_reward: torch.Tensor, discount: torch.Tensor, next_value: torch.Tensor) -> torch.Tensor:
    """L_Q of an ensemble's Q (E, B) against R + discount * V(s') (each (B,))."""
    target = (n_step_reward + discount * next_value).detach()
    return (q - target[None]).pow(2).mean(1).sum()


def awr_weights(target_q: torch.Tensor, value: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """exp(beta (Q - V)) clipped at `max_weight`, (B,), no gradient."""
    return torch.exp(beta * (target_q - value)).clamp(max=max_weight).detach()


def actor_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Advantage-weighted regression: -mean w * log pi(a | s) over dataset actions (B,)."""
    return -(weights * log_prob).mean()
