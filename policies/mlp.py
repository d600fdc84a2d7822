"""MLP Gaussian actor-critic for state observations (CleanRL / rsl_rl style)."""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import torch
from torch import nn

from policies.base import FeatureSpec, Policy, PolicyConfig, PolicyOutput, register_policy
from policies.normalizer import RunningNormalizer

ACTIVATIONS = {"tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclasses.dataclass
class MLPPolicyConfig(PolicyConfig):
    kind: str = "mlp"
    obs_dim: int = 0  # filled from the env when 0
    action_dim: int = 0  # filled from the env when 0
    chunk_size: int = 1  # T actions per decision
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    init_log_std: float = -0.5
    normalize_obs: bool = True
    obs_keys: tuple[str, ...] = ("observation.state", "observation.environment_state")


def mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    """Linear layers with orthogonal init (gain sqrt(2) inside, `out_gain` at the output)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def concat_statistics(stats: dict[str, tuple[torch.Tensor, torch.Tensor]], keys: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the concatenation of `keys`, from per-key dataset statistics."""
    missing = [k for k in keys if k not in stats]
    if missing:
        raise KeyError(f"No statistics for {missing}; have {sorted(stats)}.")
    return torch.cat([stats[k][0].flatten() for k in keys]), torch.cat([stats[k][1].flatten() for k in keys])


def flat_observation(obs: dict[str, Any], keys: tuple[str, ...]) -> torch.Tensor:
    """Concatenate the named (N, D_i) features into (N, sum D_i) float32."""
    missing = [k for k in keys if k not in obs]
    if missing:
        raise KeyError(f"Observation lacks {missing}; it has {[k for k in obs if k != 'task']}.")
    return torch.cat([obs[k].float().flatten(1) for k in keys], dim=1)


class GaussianActorCritic(Policy):
    """A diagonal Gaussian over a chunk of T actions (state-independent log std) from `actor`,
    a value from `critic`, both on `features(obs)`. Samples are not squashed: the env clips
    them to [-1, 1]. Subclasses build `actor`, `critic`, `log_std` and define `features`."""

    actor: nn.Module
    critic: nn.Module
    log_std: nn.Parameter

    @abc.abstractmethod
    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, F) features of an observation batch, the input of actor and critic."""

    def distribution(self, x: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.actor(x), self.log_std.exp().expand(x.shape[0], -1))

    def value(self, obs: dict[str, Any]) -> torch.Tensor:
        return self.critic(self.features(obs))[:, 0]

    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        x = self.features(obs)
        dist = self.distribution(x)
        flat = dist.mean if deterministic else dist.sample()
        log_prob = dist.log_prob(flat).sum(-1)
        action = flat.view(x.shape[0], self.config.chunk_size, self.config.action_dim)
        return PolicyOutput(action=action, log_prob=log_prob, value=self.critic(x)[:, 0])

    def evaluate(self, obs, actions, extras):
        elements, entropy, value = self.evaluate_elements(obs, actions, extras)
        return elements.flatten(1).sum(1), entropy, value

    def evaluate_elements(self, obs, actions, extras):
        x = self.features(obs)
        dist = self.distribution(x)
        flat = actions.reshape(x.shape[0], -1)
        return dist.log_prob(flat).view(actions.shape), dist.entropy().sum(-1), self.critic(x)[:, 0]

    def supervised_loss(self, obs: dict[str, Any], actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Behaviour cloning: mean squared error of the Gaussian's mean against the demo chunk."""
        mean = self.actor(self.features(obs))
        loss = (mean - actions.reshape(mean.shape)).pow(2).mean()
        return loss, {"mse": loss.item()}


@register_policy
class MLPPolicy(GaussianActorCritic):
    """Separate actor and critic MLPs on the normalised, concatenated state features."""

    kind = "mlp"
    config_class = MLPPolicyConfig

    def __init__(self, config: MLPPolicyConfig):
        super().__init__(config)
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {config.activation!r}; valid: {', '.join(ACTIVATIONS)}.")
        if config.obs_dim <= 0 or config.action_dim <= 0:
            raise ValueError("MLPPolicyConfig needs obs_dim and action_dim (build it with policies.make_policy).")
        out = config.chunk_size * config.action_dim
        hidden = list(config.hidden_sizes)
        self.normalizer = RunningNormalizer(config.obs_dim) if config.normalize_obs else nn.Identity()
        self.actor = mlp([config.obs_dim, *hidden, out], config.activation, out_gain=0.01)
        self.critic = mlp([config.obs_dim, *hidden, 1], config.activation, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((out,), config.init_log_std))

    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        x = flat_observation(obs, self.config.obs_keys)
        if x.shape[1] != self.config.obs_dim:
            raise ValueError(f"Observation has {x.shape[1]} features; this policy was built for {self.config.obs_dim}.")
        return self.normalizer(x)

    def observe(self, obs: dict[str, Any]) -> None:
        if isinstance(self.normalizer, RunningNormalizer):
            self.normalizer.update(flat_observation(obs, self.config.obs_keys))

    def feature_spec(self) -> FeatureSpec:
        c = self.config
        return FeatureSpec({}, tuple(c.obs_keys), c.obs_dim, c.action_dim, c.chunk_size)

    def set_normalization(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        if isinstance(self.normalizer, RunningNormalizer):
            self.normalizer.set(*concat_statistics(stats, tuple(self.config.obs_keys)))
