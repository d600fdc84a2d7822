"""A residual policy: a frozen base policy plus a small learned correction (Ankile et al.,
"From Imitation to Refinement: Residual RL for Precise Assembly"; "Residual Off-Policy RL
for Finetuning Behavior Cloning Policies", 2025).

The base (any `Policy`: an MLP BC policy, a VLA, a LeRobot ACT or diffusion policy) emits
action chunks; `base_horizon` of each chunk's actions run before it is asked again (1: a
receding horizon, the chunk's first action every step; the chunk size: the chunk open-loop,
as the base was trained to run). At every control step the base's action a_base (N, A) is
corrected:

    a = clip(a_base + scale * tanh(actor([state, a_base])), -1, 1)

The actor's last layer starts at zero, so before any training the policy *is* the base.
`uncorrected_dims` are left at the base's action, without correction or exploration noise (the
TCP rotation in a precision task whose base is undone by small rotation noise).
`state` is the observation's features: the base's own (normalised) features when it has them
(the Gaussian MLP/CNN policies), else the concatenated `obs_keys` under a running normaliser.
When the base follows its chunks (base_horizon > 1) the rest of the chunk is part of what
happens next, so the state also holds a_base and the phase (the action's index in its chunk,
one-hot): state = [features, a_base, onehot(phase)]; the critic scores (state, a).

With `stochastic` the actor is a tanh-squashed Gaussian (SAC); otherwise it is
deterministic and `act(deterministic=False)` adds Gaussian exploration noise (TD3). `act`
keeps each env's chunk between calls; `reset()` starts every env afresh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from policies.base import FeatureSpec, Policy, PolicyConfig, PolicyOutput, register_policy
from policies.mlp import flat_observation
from policies.normalizer import RunningNormalizer

if TYPE_CHECKING:
    from embodied.runner.rollout import ChunkRunner

BASE_FOLDER = "base"


@dataclasses.dataclass
class ResidualPolicyConfig(PolicyConfig):
    kind: str = "residual"
    base_path: str = ""  # a saved policy folder or a run directory (its latest checkpoint)
    obs_dim: int = 0  # filled from the env when 0 (used when the base has no `features`)
    action_dim: int = 0  # filled from the env when 0
    hidden_sizes: tuple[int, ...] = (256, 256)
    scale: float = 0.3  # the largest correction per action dimension
    uncorrected_dims: tuple[int, ...] = ()  # action dimensions left at the base's action (no correction, no noise)
    stochastic: bool = False  # tanh-Gaussian actor (SAC) instead of a deterministic one (TD3)
    explore_std: float = 0.1  # TD3 exploration noise (env units) when not deterministic
    obs_keys: tuple[str, ...] = ("observation.state", "observation.environment_state")
    base_horizon: int = 1  # actions of each base chunk run before the base is asked again


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
    corrected: torch.Tensor  # (A,) buffer: 1 where the residual acts, 0 on uncorrected_dims

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
        if not 1 <= config.base_horizon <= base.chunk_size:
            raise ValueError(f"policy.base_horizon must be within 1..{base.chunk_size} (the base's chunk size); "
                             f"got {config.base_horizon}.")
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
        bad = [d for d in config.uncorrected_dims if not 0 <= d < config.action_dim]
        if bad:
            raise ValueError(f"policy.uncorrected_dims {bad} are not action dimensions (0..{config.action_dim - 1}).")
        corrected = torch.ones(config.action_dim)
        corrected[list(config.uncorrected_dims)] = 0.0
        self.register_buffer("corrected", corrected, persistent=False)  # (A,) 1 where the residual acts
        horizon = config.base_horizon
        self.state_dim = self.feature_dim + (config.action_dim + horizon if horizon > 1 else 0)
        out = config.action_dim * (2 if config.stochastic else 1)
        self.actor = layer_norm_mlp([self.state_dim + config.action_dim, *config.hidden_sizes, out])
        head = cast(nn.Linear, self.actor[-1])  # layer_norm_mlp ends in a Linear
        nn.init.zeros_(head.weight)  # identity at step 0
        nn.init.zeros_(head.bias)
        self.follower: ChunkRunner | None = None  # the ChunkRunner `act` follows the base's chunks with (built per batch size)

    def train(self, mode: bool = True) -> ResidualPolicy:
        super().train(mode)
        self.base.eval()  # frozen: never in training mode (dropout, normaliser updates)
        return self

    # ------------------------------------------------------------------ pieces the algorithms use
    @torch.no_grad()
    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, F) observation features (the base's own when it has them); not differentiated."""
        if self.base_features:  # the base has `features` (checked in __init__), which Policy does not declare
            return cast(Callable[[dict[str, Any]], torch.Tensor], self.base.features)(obs)
        return self.normalizer(flat_observation(obs, self.config.obs_keys))

    def base_runner(self, num_envs: int) -> ChunkRunner:
        """A ChunkRunner that executes `base_horizon` actions of each of the base's
        (deterministic) chunks in `num_envs` envs."""
        from embodied.runner.rollout import ChunkRunner

        return ChunkRunner(self.base, num_envs, self.config.base_horizon, deterministic=True)

    def state(self, obs: dict[str, Any], base_action: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """(N, state_dim) what the actor and critic see besides the action: the features, and
        when the base follows its chunks, its action now and the phase (N,) one-hot."""
        features = self.features(obs)
        if self.config.base_horizon == 1:
            return features
        onehot = nn.functional.one_hot(phase.long().to(features.device), self.config.base_horizon).float()
        return torch.cat([features, base_action.to(features), onehot], dim=1)

    def residual(self, state: torch.Tensor, base_action: torch.Tensor, deterministic: bool = False,
                 actor: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The correction (N, A) in [-scale, scale] and its log-prob (N,) (zeros for TD3);
        differentiable through the actor (`actor` overrides the module: a target copy)."""
        out = (actor or self.actor)(torch.cat([state, base_action], dim=1))
        scale = self.config.scale * self.corrected
        if not self.config.stochastic:
            return scale * torch.tanh(out), torch.zeros(out.shape[0], device=out.device)
        mean, log_std = out.chunk(2, dim=1)
        log_std = log_std.clamp(-5.0, 2.0)
        if deterministic:
            return scale * torch.tanh(mean), torch.zeros(out.shape[0], device=out.device)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        squashed = torch.tanh(pre_tanh)
        log_prob = -0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - torch.log(self.config.scale * (1 - squashed.pow(2)) + 1e-6)
        return scale * squashed, (log_prob * self.corrected).sum(1)  # an uncorrected dimension is no random variable

    def combine(self, base_action: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return (base_action + residual).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ Policy contract
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        num_envs = next(v.shape[0] for v in obs.values() if isinstance(v, torch.Tensor))
        if self.follower is None or self.follower.num_envs != num_envs:
            self.follower = self.base_runner(num_envs)
        base_action, phase = self.follower.current(obs)
        self.follower.advance()
        action, log_prob = self.correct(self.state(obs, base_action, phase), base_action, deterministic)
        return PolicyOutput(action=action[:, None], log_prob=log_prob, extras={"base_action": base_action, "phase": phase})

    @torch.no_grad()
    def correct(self, state: torch.Tensor, base_action: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The executed action (N, A) (base + correction, with TD3's exploration noise unless
        `deterministic`) and its log-prob (N,)."""
        residual, log_prob = self.residual(state, base_action, deterministic)
        if not deterministic and not self.config.stochastic and self.config.explore_std > 0:
            residual = residual + self.config.explore_std * torch.randn_like(residual) * self.corrected
        return self.combine(base_action, residual), log_prob

    def reset(self) -> None:
        self.follower = None

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
