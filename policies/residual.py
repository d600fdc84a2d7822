"""A residual policy: a frozen base policy plus a small learned correction (Ankile et al.,
"From Imitation to Refinement: Residual RL for Precise Assembly"; "Residual Off-Policy RL
for Finetuning Behavior Cloning Policies", 2025).

At every control step the base (any `Policy`: an MLP BC policy, a VLA, a LeRobot ACT or
diffusion policy) proposes its action chunk and the first action of it, a_base (N, A), is
corrected:

    a = clip(a_base + scale * tanh(actor([features(obs), a_base])), -1, 1)

The actor's last layer starts at zero, so before any training the policy *is* the base.
`features` are the base's own (normalised) features when it has them (the Gaussian MLP/CNN
policies), else the concatenated `obs_keys` under a running normaliser. The base is
re-queried at every step (receding horizon: the chunk's first action is executed), which
keeps the policy stateless across auto-resets.

With `stochastic` the actor is a tanh-squashed Gaussian (SAC); otherwise it is
deterministic and `act(deterministic=False)` adds Gaussian exploration noise (TD3).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policies.base import FeatureSpec, Policy, PolicyConfig, PolicyOutput, register_policy
from policies.mlp import flat_observation
from policies.normalizer import RunningNormalizer

BASE_FOLDER = "base"


@dataclasses.dataclass
class ResidualPolicyConfig(PolicyConfig):
    kind: str = "residual"
    base_path: str = ""  # a saved policy folder or a run directory (its latest checkpoint)
    obs_dim: int = 0  # filled from the env when 0 (used when the base has no `features`)
    action_dim: int = 0  # filled from the env when 0
    hidden_sizes: tuple[int, ...] = (256, 256)
    scale: float = 0.3  # the largest correction per action dimension
    stochastic: bool = False  # tanh-Gaussian actor (SAC) instead of a deterministic one (TD3)
    explore_std: float = 0.1  # TD3 exploration noise (env units) when not deterministic
    obs_keys: tuple[str, ...] = ("observation.state", "observation.environment_state")


def resolve_policy_folder(path: str | Path) -> Path:
    """A saved policy folder from a folder or a run directory (its latest checkpoint's policy)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        from embodied.runner.checkpoint import latest_checkpoint

        path = latest_checkpoint(path) / "policy"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"base_path {str(path)!r} is neither a saved policy folder nor a run directory.")
    return path


def layer_norm_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU blocks, a plain Linear at the end."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


@register_policy
class ResidualPolicy(Policy):
    """base (frozen) + scale * tanh(actor([features, base action]))."""

    kind = "residual"
    config_class = ResidualPolicyConfig
    critic_modules = ()

    def __init__(self, config: ResidualPolicyConfig, base: Policy | None = None):
        super().__init__(config)
        if base is None:
            if not config.base_path:
                raise ValueError("policy.base_path must name the frozen base policy (a saved folder or a run directory).")
            base = Policy.from_pretrained(resolve_policy_folder(config.base_path))
        if config.action_dim <= 0:
            raise ValueError("ResidualPolicyConfig needs action_dim (build it with policies.make_policy).")
        base_dim = getattr(base.config, "action_dim", config.action_dim)
        if base_dim != config.action_dim:
            raise ValueError(f"The base emits {base_dim}-dim actions; the env takes {config.action_dim}.")
        self.base = base.eval().requires_grad_(False)
        self.base_features = hasattr(base, "features")
        if self.base_features:
            self.feature_dim = int(base.config.obs_dim)
            self.normalizer: nn.Module = nn.Identity()
        else:
            if config.obs_dim <= 0:
                raise ValueError("ResidualPolicyConfig needs obs_dim for a base without `features`.")
            self.feature_dim = config.obs_dim
            self.normalizer = RunningNormalizer(config.obs_dim)
        out = config.action_dim * (2 if config.stochastic else 1)
        self.actor = layer_norm_mlp([self.feature_dim + config.action_dim, *config.hidden_sizes, out])
        nn.init.zeros_(self.actor[-1].weight)  # identity at step 0
        nn.init.zeros_(self.actor[-1].bias)

    def train(self, mode: bool = True) -> ResidualPolicy:
        super().train(mode)
        self.base.eval()  # frozen: never in training mode (dropout, normaliser updates)
        return self

    # ------------------------------------------------------------------ pieces the algorithms use
    @torch.no_grad()
    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, F) observation features (the base's own when it has them); not differentiated."""
        if self.base_features:
            return self.base.features(obs)
        return self.normalizer(flat_observation(obs, self.config.obs_keys))

    @torch.no_grad()
    def base_action(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, A) the base's deterministic action now (the first of its chunk)."""
        return self.base.act(obs, deterministic=True).action[:, 0].float()

    def residual(self, features: torch.Tensor, base_action: torch.Tensor, deterministic: bool = False,
                 actor: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The correction (N, A) in [-scale, scale] and its log-prob (N,) (zeros for TD3);
        differentiable through the actor (`actor` overrides the module: a target copy)."""
        out = (actor or self.actor)(torch.cat([features, base_action], dim=1))
        scale = self.config.scale
        if not self.config.stochastic:
            return scale * torch.tanh(out), torch.zeros(out.shape[0], device=out.device)
        mean, log_std = out.chunk(2, dim=1)
        log_std = log_std.clamp(-5.0, 2.0)
        if deterministic:
            return scale * torch.tanh(mean), torch.zeros(out.shape[0], device=out.device)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        squashed = torch.tanh(pre_tanh)
        log_prob = (-0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(1)
        log_prob = log_prob - torch.log(scale * (1 - squashed.pow(2)) + 1e-6).sum(1)
        return scale * squashed, log_prob

    def combine(self, base_action: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return (base_action + residual).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ Policy contract
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        base_action = self.base_action(obs)
        with torch.no_grad():
            residual, log_prob = self.residual(self.features(obs), base_action, deterministic)
            if not deterministic and not self.config.stochastic and self.config.explore_std > 0:
                residual = residual + self.config.explore_std * torch.randn_like(residual)
        action = self.combine(base_action, residual)
        return PolicyOutput(action=action[:, None], log_prob=log_prob, extras={"base_action": base_action})

    def evaluate(self, obs, actions, extras):
        raise NotImplementedError("A residual policy is trained off-policy (algo.name: residual); it has no on-policy evaluate.")

    def observe(self, obs: dict[str, Any]) -> None:
        if isinstance(self.normalizer, RunningNormalizer):
            self.normalizer.update(flat_observation(obs, self.config.obs_keys))

    def feature_spec(self) -> FeatureSpec:
        spec = self.base.feature_spec()
        return dataclasses.replace(spec, chunk_size=1)

    def parameters_to_train(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    # ------------------------------------------------------------------ save / load
    def save_files(self, directory: Path) -> None:
        """The base is saved beside the residual, so the folder loads on its own."""
        self.base.save_pretrained(directory / BASE_FOLDER)

    @classmethod
    def build_for_folder(cls, config: ResidualPolicyConfig, directory: Path) -> ResidualPolicy:
        base_dir = directory / BASE_FOLDER
        base = Policy.from_pretrained(base_dir) if (base_dir / "config.json").is_file() else None
        return cls(config, base=base)
