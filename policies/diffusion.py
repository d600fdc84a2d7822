"""Diffusion Policy: a denoising action head over action chunks (Chi et al., RSS 2023,
"Diffusion Policy: Visuomotor Policy Learning via Action Diffusion"), with flow matching as
an alternative objective (Lipman et al., ICLR 2023).

The policy models p(a_{1:T} | o), a whole chunk of T actions, by a learned denoiser
eps_theta(x_k, k, c) conditioned on the features c of a small encoder: the normalised state
vector (as MLPPolicy) and, optionally, each camera's image through policies.cnn's
`ImageEncoder` (one encoder shared by the cameras, as CNNPolicy). Because the chunk is sampled
from noise rather than regressed, a multimodal demonstrator (go left *or* right of an obstacle)
is reproduced mode by mode; an MSE policy predicts the average of the modes.

The noise schedules are `diffusers`' (`scheduler` in the config, as LeRobot's policy does):
  ddpm:       DDPMScheduler. Train: x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, k ~ U{0..K-1},
              loss ||eps_theta(x_k, k, c) - target||^2, target eps ("epsilon") or x_0
              ("sample"). Sample: ancestral steps on `num_inference_steps` of the K timesteps.
  ddim:       DDIMScheduler. The same training; deterministic (eta = 0) steps from x_K ~ N(0, I).
  flow_euler: FlowMatchEulerDiscreteScheduler. Train: x_s = s eps + (1 - s) x_0 on the
              scheduler's sigmas s, loss ||v_theta(x_s, s, c) - (eps - x_0)||^2 (rectified flow);
              sample: Euler steps of the ODE dx/ds = v from s = 1 (noise) to s = 0.

Actions are in env units ([-1, 1]) and are not normalised further; DDPM/DDIM clip their x_0
estimate to [-1, 1] (`clip_sample`) and `act` clips the chunk.

This is a behaviour-cloning / base policy: the chunk's likelihood under the sampler is not
tractable, so `act` reports log_prob 0 and no value, and `evaluate` refuses. Use it as a frozen
base under a residual RL policy, not as the actor of PPO/GRPO. It has no `observe`: the state
statistics are the dataset's (`set_normalization`) and rollouts do not move them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torch import nn

from policies.base import FeatureSpec, Policy, PolicyConfig, PolicyOutput, register_policy
from policies.cnn import ImageEncoder
from policies.mlp import concat_statistics, flat_observation
from policies.normalizer import RunningNormalizer

SCHEDULERS = ("ddpm", "ddim", "flow_euler")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclasses.dataclass
class DiffusionPolicyConfig(PolicyConfig):
    kind: str = "diffusion"
    # Encoder inputs: state vectors (normalised) and/or camera images.
    state_keys: tuple[str, ...] = ("observation.state", "observation.environment_state")
    state_dim: int = 0  # filled from the env when 0
    normalize_state: bool = True
    cameras: tuple[str, ...] = ()  # e.g. ("front",): reads observation.images.<camera>
    image_size: tuple[int, int] = (64, 64)  # H, W
    channels: tuple[int, ...] = (16, 32)  # ImageEncoder convs (a 4x4/4 patchify, a 3x3/2)
    kernel_sizes: tuple[int, ...] = (4, 3)
    strides: tuple[int, ...] = (4, 2)
    image_feature_dim: int = 64
    # Output: a chunk of T actions.
    action_dim: int = 0  # filled from the env when 0
    chunk_size: int = 8  # T
    # Noise schedule (diffusers).
    scheduler: Literal["ddpm", "ddim", "flow_euler"] = "ddim"
    num_train_timesteps: int = 100  # K
    num_inference_steps: int = 10  # denoising steps per `act` (<= K)
    prediction_type: Literal["epsilon", "sample"] = "epsilon"  # ddpm/ddim; flow_euler predicts the velocity
    beta_schedule: str = "squaredcos_cap_v2"  # ddpm/ddim
    clip_sample: bool = True  # ddpm/ddim: clip the x_0 estimate to [-1, 1]
    # Denoiser: a residual MLP over the flattened chunk, FiLM-conditioned on (timestep, features).
    hidden_dim: int = 256
    num_blocks: int = 3
    timestep_embed_dim: int = 64
    deterministic_seed: int = 0  # act(deterministic=True) draws its noise from this seed


def make_noise_scheduler(config: DiffusionPolicyConfig) -> Any:
    """The diffusers scheduler named by `config.scheduler`, sized by the config."""
    # diffusers costs seconds to import: only policies that diffuse pay for it.
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if config.scheduler == "flow_euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps)
    scheduler_class = DDPMScheduler if config.scheduler == "ddpm" else DDIMScheduler
    return scheduler_class(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=config.clip_sample,
        clip_sample_range=1.0,
        prediction_type=config.prediction_type,
    )


class SinusoidalEmbedding(nn.Module):
    """(N,) float timesteps -> (N, dim) sin/cos features at geometric frequencies (Vaswani et al.)."""

    frequencies: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / max(1, half - 1)), persistent=False)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        angles = timestep.float()[:, None] * self.frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class FiLMBlock(nn.Module):
    """h + W2 mish(W1 (LN(h) * (1 + scale(c)) + shift(c))): a residual block whose normalised
    input is scaled and shifted by the condition (FiLM, as in Diffusion Policy's U-Net)."""

    def __init__(self, hidden_dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.film = nn.Linear(cond_dim, 2 * hidden_dim)
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, hidden_dim))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """Predicts eps, x_0 or the velocity (N, T, A) from a noisy chunk x (N, T, A), its timestep
    (N,) in [0, K] and the encoder's features (N, F)."""

    def __init__(self, chunk_numel: int, feature_dim: int, hidden_dim: int, num_blocks: int, timestep_embed_dim: int):
        super().__init__()
        self.timestep_embed = nn.Sequential(
            SinusoidalEmbedding(timestep_embed_dim), nn.Linear(timestep_embed_dim, hidden_dim), nn.Mish(),
        )
        cond_dim = hidden_dim + feature_dim
        self.cond = nn.Sequential(nn.Linear(cond_dim, hidden_dim), nn.Mish())
        self.input = nn.Linear(chunk_numel + hidden_dim, hidden_dim)
        self.blocks = nn.ModuleList(FiLMBlock(hidden_dim, hidden_dim) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Mish(), nn.Linear(hidden_dim, chunk_numel))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        cond = self.cond(torch.cat([self.timestep_embed(timestep.expand(n)), features], dim=1))
        h = self.input(torch.cat([x.reshape(n, -1), cond], dim=1))
        for block in self.blocks:
            h = block(h, cond)
        return self.output(h).view_as(x)


@register_policy
class DiffusionPolicy(Policy):
    """Diffusion / flow-matching action chunks (T, A) from state and optional camera features."""

    kind = "diffusion"
    config_class = DiffusionPolicyConfig

    def __init__(self, config: DiffusionPolicyConfig):
        super().__init__(config)
        c = config
        if c.action_dim <= 0 or c.chunk_size <= 0:
            raise ValueError(
                f"DiffusionPolicyConfig needs action_dim and chunk_size > 0 (got {c.action_dim}, {c.chunk_size}); "
                "build it with policies.make_policy to read action_dim off the env."
            )
        if c.state_keys and c.state_dim <= 0:
            raise ValueError(f"state_keys {list(c.state_keys)} need state_dim > 0 (build the policy with policies.make_policy).")
        if not c.state_keys and c.state_dim:
            raise ValueError(f"state_dim is {c.state_dim} but state_keys is empty.")
        if not c.state_keys and not c.cameras:
            raise ValueError("A diffusion policy needs something to condition on: state_keys, cameras or both.")
        if c.scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {c.scheduler!r}; valid: {', '.join(SCHEDULERS)}.")
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {c.prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}.")
        if not 0 < c.num_inference_steps <= c.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, num_train_timesteps={c.num_train_timesteps}]; got {c.num_inference_steps}."
            )
        self.encoder = (
            ImageEncoder(c.channels, c.image_size, c.image_feature_dim, c.kernel_sizes, c.strides) if c.cameras else None
        )
        self.normalizer = RunningNormalizer(c.state_dim) if c.state_dim and c.normalize_state else nn.Identity()
        feature_dim = c.image_feature_dim * len(c.cameras) + c.state_dim
        self.denoiser = Denoiser(c.chunk_size * c.action_dim, feature_dim, c.hidden_dim, c.num_blocks, c.timestep_embed_dim)
        # Two instances: `set_timesteps` rewrites a scheduler's timesteps (and, for flow matching,
        # its sigmas), so sampling must not touch the one that defines the training noise.
        self.train_scheduler = make_noise_scheduler(c)
        self.sample_scheduler = make_noise_scheduler(c)

    # ----- encoder ---------------------------------------------------------------------------

    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        """(N, F) conditioning features: each camera's ImageEncoder features, then the state."""
        c = self.config
        parts = []
        for camera in c.cameras:
            key = f"observation.images.{camera}"
            if key not in obs:
                raise KeyError(f"Observation lacks {key!r}: make the env with obs_mode='rgb' and camera {camera!r}.")
            image = obs[key]
            assert self.encoder is not None  # built whenever the config names cameras
            if tuple(image.shape[1:3]) != tuple(c.image_size):
                raise ValueError(f"{key} is {tuple(image.shape[1:3])}; this policy expects {tuple(c.image_size)}.")
            parts.append(self.encoder(image.to(self._device)))
        if c.state_keys:
            state = flat_observation(obs, c.state_keys).to(self._device)
            if state.shape[1] != c.state_dim:
                raise ValueError(
                    f"{' + '.join(c.state_keys)} has {state.shape[1]} features; this policy was built for {c.state_dim}."
                )
            parts.append(self.normalizer(state))
        return torch.cat(parts, dim=1)

    @property
    def _device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # ----- training ----------------------------------------------------------------------------

    def supervised_loss(self, obs: dict[str, Any], actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The denoising (DDPM/DDIM) or flow-matching objective of demonstrated chunks (N, T, A)."""
        c = self.config
        x0 = actions.to(self._device, torch.float32)
        if x0.dim() != 3 or tuple(x0.shape[1:]) != (c.chunk_size, c.action_dim):
            raise ValueError(
                f"actions are {tuple(x0.shape)}; this policy models chunks (N, {c.chunk_size}, {c.action_dim})."
            )
        features = self.features(obs)
        n = x0.shape[0]
        noise = torch.randn_like(x0)
        if c.scheduler == "flow_euler":
            # The scheduler's forward process (`scale_noise`), vectorised over the batch:
            # x_s = s eps + (1 - s) x_0 at a training sigma s, velocity target dx_s/ds = eps - x_0.
            index = torch.randint(len(self.train_scheduler.sigmas), (n,), device=x0.device)
            sigma = self.train_scheduler.sigmas.to(x0.device)[index][:, None, None]
            timestep = self.train_scheduler.timesteps.to(x0.device)[index]
            noisy = sigma * noise + (1 - sigma) * x0
            target = noise - x0
        else:
            # x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps; the target is eps or x_0.
            timestep = torch.randint(c.num_train_timesteps, (n,), device=x0.device)
            noisy = self.train_scheduler.add_noise(x0, noise, timestep)
            target = noise if c.prediction_type == "epsilon" else x0
        prediction = self.denoiser(noisy, timestep, features)
        loss = (prediction - target).pow(2).mean()
        return loss, {"denoise_mse": loss.item()}

    # ----- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, obs: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise Gaussian noise into chunks (N, T, A) (unclipped), with `num_inference_steps`
        steps of the configured scheduler; `generator` (on the policy's device) seeds all noise."""
        c = self.config
        features = self.features(obs)
        n = features.shape[0]
        scheduler = self.sample_scheduler
        scheduler.set_timesteps(c.num_inference_steps, device=self._device)
        x = torch.randn((n, c.chunk_size, c.action_dim), generator=generator, device=self._device)
        for timestep in scheduler.timesteps:
            prediction = self.denoiser(x, timestep.reshape(1), features)
            x = scheduler.step(prediction, timestep, x, generator=generator).prev_sample
        return x

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> PolicyOutput:
        """Sample a chunk per env: action (N, T, A) clipped to [-1, 1].

        The sampler's likelihood is intractable, so log_prob is zeros (N,) and value is None;
        this policy cannot be the actor of an on-policy RL update. `deterministic` draws the
        noise from `config.deterministic_seed` (the same observations give the same chunks, each
        still a sample of one mode: zero noise would land between the modes)."""
        generator = None
        if deterministic:
            generator = torch.Generator(self._device).manual_seed(self.config.deterministic_seed)
        action = self.sample(obs, generator).clamp(-1.0, 1.0)
        return PolicyOutput(action=action, log_prob=torch.zeros(action.shape[0], device=action.device), value=None)

    def evaluate(self, obs, actions, extras):
        raise NotImplementedError(
            "DiffusionPolicy has no tractable log-probability of an action chunk, so it cannot be updated by "
            "on-policy RL (PPO/GRPO). Train it with SFT, and use it as a frozen base policy for residual RL."
        )

    # ----- dataset contract ------------------------------------------------------------------------

    def feature_spec(self) -> FeatureSpec:
        c = self.config
        images = {f"observation.images.{camera}": tuple(c.image_size) for camera in c.cameras}
        return FeatureSpec(images, tuple(c.state_keys), c.state_dim, c.action_dim, c.chunk_size)

    def set_normalization(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        if isinstance(self.normalizer, RunningNormalizer):
            self.normalizer.set(*concat_statistics(stats, tuple(self.config.state_keys)))
