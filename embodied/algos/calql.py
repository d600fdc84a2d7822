"""Cal-QL (Nakamoto et al., 2023): CQL whose conservative term is calibrated by a reference
value, so that offline pretraining does not push Q below what the data's returns show and
online fine-tuning does not "unlearn" first. The losses, top to bottom.

For a batch of dataset pairs (s, a) with n-step targets y = R + discount * Q'(s', a' ~ pi):

    TD:            L_TD  = sum_e mean (Q_e(s, a) - y)^2
    calibration:   Q~_e(s, a_pi) = max(Q_e(s, a_pi), V_mu(s))        V_mu: Monte-Carlo return-to-go
    regulariser:   R_e(s) = logsumexp over K uniform actions a_u and K policy actions a_pi of
                       [Q_e(s, a_u) - log U(a_u),  Q~_e(s, a_pi) - log pi(a_pi | s)]   (CQL(H))
                   L_CQL = sum_e mean_s (R_e(s) - Q_e(s, a))
    total:         L = L_TD + alpha * L_CQL
    actor (SAC):   L_pi = mean alpha_ent log pi(a_pi | s) - min_e Q_e(s, a_pi)
    actor, first `bc_updates` (CQL's policy_eval_start):
                   L_pi = mean alpha_ent log pi(a_pi | s) - log pi(a | s)       (a: the dataset's)

Rows without a known return-to-go (online data) carry V_mu = -inf: no calibration (CQL).
"""

from __future__ import annotations

import math

import torch


def calibrated(q_policy: torch.Tensor, reference_value: torch.Tensor) -> torch.Tensor:
    """max(Q(s, a_pi), V_mu(s)): q_policy (E, B, K), reference_value (B,)."""
    return torch.maximum(q_policy, reference_value[None, :, None])


def conservative_regulariser(q_data: torch.Tensor, q_uniform: torch.Tensor, q_policy: torch.Tensor,
                             log_prob_policy: torch.Tensor, reference_value: torch.Tensor, action_dim: int) -> torch.Tensor:
    """L_CQL with calibration: q_data (E, B); q_uniform, q_policy (E, B, K) at K uniform and K
    policy actions; log_prob_policy (B, K); reference_value (B,). Uniform actions on [-1, 1]^A
    have log-density -A log 2."""
    log_uniform = -action_dim * math.log(2.0)
    proposals = torch.cat([q_uniform - log_uniform, calibrated(q_policy, reference_value) - log_prob_policy[None]], dim=2)
    return (torch.logsumexp(proposals, dim=2) - q_data).mean(1).sum()


def td_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_e mean (Q_e(s, a) - y)^2 with q (E, B), target (B,) (no gradient through y)."""
    return (q - target.detach()[None]).pow(2).mean(1).sum()


def critic_loss(q_data: torch.Tensor, target: torch.Tensor, q_uniform: torch.Tensor, q_policy: torch.Tensor,
                log_prob_policy: torch.Tensor, reference_value: torch.Tensor, action_dim: int,
                alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_TD + alpha L_CQL and both terms."""
    td = td_loss(q_data, target)
    if alpha == 0:
        return td, {"td_loss": td.detach()}
    regulariser = conservative_regulariser(q_data, q_uniform, q_policy, log_prob_policy, reference_value, action_dim)
    return td + alpha * regulariser, {"td_loss": td.detach(), "cql_loss": regulariser.detach()}


def actor_loss(log_prob: torch.Tensor, q_policy: torch.Tensor, entropy_coef: float) -> torch.Tensor:
    """SAC's actor loss: mean alpha log pi(a_pi | s) - min_e Q_e(s, a_pi); q_policy (E, B)."""
    return (entropy_coef * log_prob - q_policy.min(0).values).mean()


def bc_actor_loss(log_prob: torch.Tensor, data_log_prob: torch.Tensor, entropy_coef: float) -> torch.Tensor:
    """The warm-up actor loss: mean alpha log pi(a_pi | s) - log pi(a_data | s), both (B,)."""
    return (entropy_coef * log_prob - data_log_prob).mean()
