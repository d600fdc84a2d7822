"""What every algorithm shares: a config with a `name`, an optimizer, `update(batch) -> metrics`."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from policies.base import Policy

ALGOS: dict[str, type[Algorithm]] = {}


def register_algo(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make an algorithm buildable by its config's `name`."""
    ALGOS[cls.config_class.name] = cls
    return cls


class NonFiniteLossError(FloatingPointError):
    """A loss or statistic became NaN or inf; the message says which and when."""


@dataclasses.dataclass
class AlgoConfig:
    """Base of the algorithm configs; a YAML `algo:` section picks its class by `name`."""

    variant_key: ClassVar[str] = "name"
    default_variant: ClassVar[str] = "ppo"
    name: str = ""
    lr: float = 3e-4

    @staticmethod
    def variants() -> dict[str, type[AlgoConfig]]:
        return {name: algo.config_class for name, algo in ALGOS.items()}


class Algorithm[C: AlgoConfig](abc.ABC):
    """An algorithm typed by its config class C: `self.cfg` is a C, so a field of it that the
    config lacks is a type error, not an AttributeError minutes into a run."""

    config_class: ClassVar[type[AlgoConfig]]
    uses_env: ClassVar[bool] = True  # False: learns from data; the run ends when `finished()`

    def __init__(self, policy: Policy, cfg: C):
        self.policy = policy
        self.cfg: C = cfg
        self.generator = torch.Generator().manual_seed(0)
        self.optimizer: torch.optim.Optimizer
        self.progress = 0.0  # the fraction of the run's env-step budget spent before this update (the runner sets it)
        self.updates = 0  # gradient updates taken: the x axis of a run without env

    @property
    def acting_policy(self) -> Policy:
        """What acts in the env and is evaluated: the policy itself, unless the algorithm's agent
        is more than the policy it trains (PA-RL's agent acts through its critic)."""
        return self.policy

    @abc.abstractmethod
    def collect(self, env, obs, tracker) -> tuple[dict[str, Any], Any, torch.Tensor | None]:
        """Gather what one update consumes: (the rollout or batch, the next observation, the value
        of the next observation for bootstrapping, or None where nothing bootstraps)."""

    def prepare(self, rollout: dict[str, Any], next_value: torch.Tensor | None) -> dict[str, Any]:
        """Turn a rollout into the batch `update` consumes (advantages, flattening)."""
        return rollout

    @abc.abstractmethod
    def update(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        """One optimisation phase on a prepared batch; returns scalar metrics."""

    def finished(self) -> bool:
        """For algorithms that do not use the env: whether the run is complete."""
        return False

    def planned_updates(self) -> int:
        """For algorithms that do not use the env: the run's length in gradient updates."""
        raise NotImplementedError(f"{type(self).__name__} uses the env: its runs are measured in env steps.")

    @staticmethod
    def check_finite(loss: torch.Tensor, stats: dict[str, torch.Tensor], iteration: int) -> None:
        if torch.isfinite(loss):
            return
        bad = [k for k, v in stats.items() if not torch.isfinite(v).all()]
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {iteration}: {loss.item()} (non-finite terms: {bad or 'none'}; "
            f"terms: { {k: float(v) for k, v in stats.items()} }). The last good checkpoint is kept."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def param_groups(
    policy, lr: float, head_lr: float | None = None, critic_lr: float | None = None, critic: bool = True
) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: a pretrained backbone (a VLA's, or its LoRA
    adapters) at `lr`, the heads (everything else the actor trains) at `head_lr`, the critic at
    `critic_lr` (None: `lr`); `critic=False` leaves the critic out (critic-free algorithms)."""
    backbone = [p for p in policy.backbone_parameters() if p.requires_grad]
    critic_params = [p for p in policy.critic_parameters() if p.requires_grad]
    taken = {id(p) for p in backbone + critic_params}
    heads = [p for p in policy.parameters() if p.requires_grad and id(p) not in taken]
    groups = [
        {"name": "backbone", "params": backbone, "lr": lr},
        {"name": "heads", "params": heads, "lr": head_lr or lr},
        {"name": "critic", "params": critic_params if critic else [], "lr": critic_lr or lr},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def recompute_log_probs(policy, batch: dict[str, Any], level: str, size: int) -> torch.Tensor:
    """(B, K) log-probs at `level` of a flattened batch's actions under the current (behaviour)
    policy, in minibatches of `size`: the old log-probs of a per-action or per-token update."""
    from embodied.runner.rollout import select_obs

    total = batch["actions"].shape[0]
    parts = []
    for start in range(0, total, size):
        idx = torch.arange(start, min(start + size, total))
        extras = {k: v[idx] for k, v in batch["extras"].items()}
        parts.append(policy.evaluate_at(select_obs(batch["obs"], idx), batch["actions"][idx], extras, level)[0])
    return torch.cat(parts)


def old_log_probs(policy, batch: dict[str, Any], level: str, size: int) -> torch.Tensor:
    """(B, K) behaviour log-probs: the act-time chunk log-probs (B,) -> (B, 1) at chunk level,
    recomputed per action or per token otherwise."""
    if level == "chunk":
        return batch["log_probs"][:, None]
    return recompute_log_probs(policy, batch, level, size)


def minibatches(total: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index minibatches of `size` covering range(total) (the last one may be short)."""
    order = torch.randperm(total, generator=generator)
    for start in range(0, total, size):
        yield order[start : start + size]
