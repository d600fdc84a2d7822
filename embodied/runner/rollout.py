"""Collect on-policy rollouts from a batched env into (S, N, ...) tensors.

A decision emits a chunk of T actions; the env executes them one by one and the decision's
reward is the sum of the chunk's rewards up to the first episode end (rewards after it
belong to the next episode and are dropped). A truncated (not terminated) episode is
bootstrapped from its final observation: r += gamma * V(s_final), so GAE can treat every
episode end alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from policies.base import Policy
from sims.core import BatchedEnv, Obs


def tensor_obs(obs: Obs) -> dict[str, torch.Tensor]:
    """The tensor features of an observation (drops the instruction strings)."""
    return {k: v for k, v in obs.items() if isinstance(v, torch.Tensor)}


def stack_obs(observations: list[Obs]) -> dict[str, Any]:
    """S observation batches -> {key: (S, N, ...) tensor}, with the instructions as an (S, N)
    object array under "task" (a VLA's `evaluate` needs them again)."""
    stacked: dict[str, Any] = {k: torch.stack([o[k] for o in observations]) for k in tensor_obs(observations[0])}
    if "task" in observations[0]:
        stacked["task"] = np.array([list(o["task"]) for o in observations], dtype=object)
    return stacked


def gather_obs(obs: dict[str, Any], index: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The (step, env) pairs `index` of a stacked (S, N, ...) observation, flattened to (B, ...)
    with the instructions as a (B,) object array (what `select_obs` reads)."""
    rows: dict[str, Any] = {k: v[index] for k, v in obs.items() if isinstance(v, torch.Tensor)}
    if "task" in obs:
        rows["task"] = obs["task"][index[0].cpu().numpy(), index[1].cpu().numpy()]
    return rows


def concat_obs(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate flattened observation batches (tensors and instruction arrays)."""
    return {
        k: torch.cat([b[k] for b in batches]) if isinstance(batches[0][k], torch.Tensor)
        else np.concatenate([b[k] for b in batches])
        for k in batches[0]
    }


def select_obs(obs: dict[str, Any], index: torch.Tensor) -> Obs:
    """Rows `index` of a flattened observation batch; instructions come back as a list."""
    rows: Obs = {k: v[index] for k, v in obs.items() if isinstance(v, torch.Tensor)}
    if "task" in obs:
        rows["task"] = list(obs["task"][index.cpu().numpy()])
    return rows


@dataclasses.dataclass
class EpisodeTracker:
    """Running return/length/success per env, and the finished episodes' statistics. An
    episode counts as a success if the task was solved at any step (ManiSkill's success_once),
    which is the same as success at the end when episodes terminate on success.

    `sources` names what each env runs (its task, or a task/backend/data-source label); the
    finished episodes carry it so metrics can be split per task and per source."""

    num_envs: int
    device: torch.device
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        self.returns = torch.zeros(self.num_envs, device=self.device)
        self.lengths = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.succeeded = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.finished: list[dict[str, float]] = []

    def step(self, reward: torch.Tensor, done: torch.Tensor, success: torch.Tensor) -> None:
        self.returns += reward
        self.lengths += 1
        self.succeeded |= success
        for i in done.nonzero()[:, 0].tolist():
            self.finished.append({
                "return": float(self.returns[i]), "length": int(self.lengths[i]), "success": float(self.succeeded[i]),
                "source": self.sources[i] if self.sources else "",
            })
        self.returns[done] = 0.0
        self.lengths[done] = 0
        self.succeeded[done] = False

    def pop(self) -> list[dict[str, float]]:
        finished, self.finished = self.finished, []
        return finished

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"returns": self.returns.clone(), "lengths": self.lengths.clone(), "succeeded": self.succeeded.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.returns.copy_(state["returns"])
        self.lengths.copy_(state["lengths"])
        self.succeeded.copy_(state["succeeded"])


@torch.no_grad()
def collect_rollout(
    env: BatchedEnv, policy: Policy, obs: Obs, num_steps: int, gamma: float, tracker: EpisodeTracker,
    update_normalizer: bool = True,
) -> tuple[dict[str, Any], Obs, torch.Tensor]:
    """Run `num_steps` decisions in every env.

    Returns the rollout {obs: {key: (S, N, ...)}, actions (S, N, T, A), log_probs, values,
    rewards, dones (S, N), extras}, the observation after the last step, and the value of it (N,).
    """
    n = env.num_envs
    store: dict[str, list] = {"obs": [], "actions": [], "log_probs": [], "values": [], "rewards": [], "dones": [], "extras": []}
    for _ in range(num_steps):
        if update_normalizer:
            policy.observe(obs)
        out = policy.act(obs)
        store["obs"].append(obs)
        store["actions"].append(out.action)
        store["log_probs"].append(out.log_prob)
        store["values"].append(out.value if out.value is not None else torch.zeros(n, device=env.device))
        store["extras"].append(out.extras)
        reward_sum = torch.zeros(n, device=env.device)
        ended = torch.zeros(n, dtype=torch.bool, device=env.device)
        for t in range(out.action.shape[1]):
            obs, reward, terminated, truncated, info = env.step(out.action[:, t])
            live = ~ended
            done = (terminated | truncated) & live
            timeout = truncated & ~terminated & live
            bootstrap = torch.zeros(n, device=env.device)
            if timeout.any() and out.value is not None:
                bootstrap[timeout] = gamma * policy.value(info["final_observation"])[timeout]
            reward_sum += torch.where(live, reward, 0.0) + bootstrap
            tracker.step(reward, terminated | truncated, info["success"])
            ended |= done
        store["rewards"].append(reward_sum)
        store["dones"].append(ended)
    next_value = _value(policy, obs, n, env.device)
    rollout = {
        "obs": stack_obs(store["obs"]),
        "actions": torch.stack(store["actions"]),
        "log_probs": torch.stack(store["log_probs"]),
        "values": torch.stack(store["values"]),
        "rewards": torch.stack(store["rewards"]),
        "dones": torch.stack(store["dones"]),
        "extras": {k: torch.stack([e[k] for e in store["extras"]]) for k in store["extras"][0]},
    }
    return rollout, obs, next_value


def _value(policy: Policy, obs: Obs, n: int, device: torch.device) -> torch.Tensor:
    value = getattr(policy, "value", None)
    return value(obs) if value is not None else torch.zeros(n, device=device)
