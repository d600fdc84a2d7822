"""Machinery the off-policy algorithms share: a LayerNorm Q ensemble, Polyak averaging, and
step-wise collection into a replay buffer (the Trainer's `collect` hook: an iteration is
`steps_per_iteration` batched env steps, each written to the buffer as it happens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from embodied.data.replay import ReplayBuffer
from sims.core import BatchedEnv


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, n_out))
        bound = 1 / math.sqrt(n_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class QEnsemble(nn.Module):
    """E critics Q_e(features, action), each Linear -> LayerNorm -> ReLU blocks (LayerNorm keeps
    Q bounded at high update-to-data ratios: Ball et al., RLPD). forward -> (E, B)."""

    def __init__(self, feature_dim: int, action_dim: int, members: int = 2, hidden_sizes: tuple[int, ...] = (256, 256)):
        super().__init__()
        if members < 2:
            raise ValueError(f"A Q ensemble needs at least 2 members (the target takes the min of a pair); got {members}.")
        self.members = members
        sizes = [feature_dim + action_dim, *hidden_sizes]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [EnsembleLinear(members, n_in, n_out), nn.LayerNorm(n_out), nn.ReLU()]
        layers.append(EnsembleLinear(members, sizes[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, action], dim=1)
        return self.net(x.unsqueeze(0).expand(self.members, -1, -1))[..., 0]


def pair_min(q: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(E, B) -> (B,): the min over two distinct members drawn at random (one pair per batch,
    REDQ's subset with M = 2; with E = 2 it is clipped double Q)."""
    pair = torch.randperm(q.shape[0], generator=generator)[:2].to(q.device)
    return q[pair].min(dim=0).values


@torch.no_grad()
def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


def env_transition(obs: dict[str, Any], next_obs: dict[str, Any], info: dict[str, Any], done: torch.Tensor,
                   keys: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(obs, true next obs) restricted to `keys`: for envs whose episode ended the next
    observation is the final one (`info["final_observation"]`), not the auto-reset one."""
    current = {k: obs[k] for k in keys}
    following = {k: next_obs[k] for k in keys}
    if done.any():
        final = info["final_observation"]
        following = {k: torch.where(done.view(-1, *([1] * (v.dim() - 1))), final[k], v) for k, v in following.items()}
    return current, following


@torch.no_grad()
def collect_steps(env: BatchedEnv, obs: dict[str, Any], steps: int, choose: Callable[[dict[str, Any]], torch.Tensor],
                  buffer: ReplayBuffer, tracker, reward_scale: float = 1.0,
                  on_done: Callable[[torch.Tensor], None] | None = None,
                  annotate: Callable[[dict[str, Any], torch.Tensor], tuple[dict, dict]] | None = None) -> dict[str, Any]:
    """`steps` batched env steps with actions `choose(obs) -> (N, A)`, each written to `buffer`
    (with the instructions when the observations carry `task`); `on_done(done (N,))` is told
    which episodes ended after each step. `annotate(true next obs, done)` returns fields the
    env does not observe, for the observation and the true next one (the buffer's keys that
    are not the env's). Returns the observation after the last step."""
    keys = tuple(k for k in buffer.obs_shapes if k in obs)
    for _ in range(steps):
        action = choose(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated | truncated
        current, following = env_transition(obs, next_obs, info, done, keys)
        if annotate is not None:
            extra_current, extra_following = annotate(following, done)
            current, following = current | extra_current, following | extra_following
        if "task" in obs:
            current["task"] = obs["task"]
        buffer.add(current, action, reward * reward_scale, terminated, truncated, following)
        tracker.step(reward, done, info["success"])
        if on_done is not None:
            on_done(done)
        obs = next_obs
    return obs
