"""A small CNN Gaussian actor-critic for camera images (+ state), for fast image-based RL.

Each camera's uint8 (N, H, W, 3) image goes through a shared conv encoder, NatureCNN by default
(as ManiSkill's RGB PPO baseline); the features of all cameras and the normalised state vector
are concatenated and fed to separate actor and critic MLP heads.

The encoder's layers are configurable (`channels`, `kernel_sizes`, `strides`). On the 2-core dev
machine shared with other jobs (load ~10; batch 256, 64x64, `evaluate` forward+backward, one
torch thread, which beat two by 2-3x there), NatureCNN (32, 64, 64; 8/4, 4/2, 3/1; 256
features) ran 341 samples/s and configs/ppo_reach_image.yaml's encoder (a 4x4/4 "patchify" conv
to 16 channels, a 3x3/2 conv to 32, 64 features) 1,104 (act: 448 vs 2,656); at load ~5 a bare
conv stack of the latter ran ~3,700."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from policies.base import FeatureSpec, PolicyConfig, register_policy
from policies.mlp import GaussianActorCritic, concat_statistics, flat_observation, mlp
from policies.normalizer import RunningNormalizer


@dataclasses.dataclass
class CNNPolicyConfig(PolicyConfig):
    kind: str = "cnn"
    cameras: tuple[str, ...] = ("front",)
    image_size: tuple[int, int] = (64, 64)  # H, W
    state_keys: tuple[str, ...] = ("observation.state",)
    state_dim: int = 0  # filled from the env when 0
    action_dim: int = 0  # filled from the env when 0
    chunk_size: int = 1
    channels: tuple[int, ...] = (32, 64, 64)  # one conv layer each, no padding, ReLU
    kernel_sizes: tuple[int, ...] = (8, 4, 3)
    strides: tuple[int, ...] = (4, 2, 1)
    feature_dim: int = 256
    hidden_sizes: tuple[int, ...] = (256,)
    activation: str = "relu"
    init_log_std: float = -0.5


class ImageEncoder(nn.Module):
    """uint8 (N, H, W, 3) -> float (N, feature_dim): convs with ReLU, flatten, linear + ReLU."""

    def __init__(
        self,
        channels: tuple[int, ...],
        image_size: tuple[int, int],
        feature_dim: int,
        kernel_sizes: tuple[int, ...] = (8, 4, 3),
        strides: tuple[int, ...] = (4, 2, 1),
    ):
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(strides):
            raise ValueError(
                f"channels {channels}, kernel_sizes {kernel_sizes} and strides {strides} must have one entry per conv layer."
            )
        layers: list[nn.Module] = []
        n_in = 3
        for n_out, k, s in zip(channels, kernel_sizes, strides, strict=True):
            layers += [nn.Conv2d(n_in, n_out, k, s), nn.ReLU()]
            n_in = n_out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            try:
                flat = self.conv(torch.zeros(1, 3, *image_size)).shape[1]
            except RuntimeError as error:
                raise ValueError(
                    f"The conv layers do not fit a {image_size} image: {error}"
                ) from None
        self.project = nn.Sequential(nn.Linear(flat, feature_dim), nn.ReLU())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        return self.project(self.conv(x))


@register_policy
class CNNPolicy(GaussianActorCritic):
    kind = "cnn"
    config_class = CNNPolicyConfig

    def __init__(self, config: CNNPolicyConfig):
        super().__init__(config)
        if config.action_dim <= 0:
            raise ValueError(
                "CNNPolicyConfig needs action_dim (build it with policies.make_policy)."
            )
        self.encoder = ImageEncoder(
            config.channels,
            config.image_size,
            config.feature_dim,
            config.kernel_sizes,
            config.strides,
        )
        self.normalizer = RunningNormalizer(config.state_dim) if config.state_dim else None
        features = config.feature_dim * len(config.cameras) + config.state_dim
        out = config.chunk_size * config.action_dim
        self.actor = mlp([features, *config.hidden_sizes, out], config.activation, out_gain=0.01)
        self.critic = mlp([features, *config.hidden_sizes, 1], config.activation, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((out,), config.init_log_std))

    def _images(self, obs: dict[str, Any]) -> list[torch.Tensor]:
        images = []
        for camera in self.config.cameras:
            key = f"observation.images.{camera}"
            if key not in obs:
                raise KeyError(
                    f"Observation lacks {key!r}: make the env with obs_mode='rgb' and this camera."
                )
            image = obs[key]
            if tuple(image.shape[1:3]) != tuple(self.config.image_size):
                raise ValueError(
                    f"{key} is {tuple(image.shape[1:3])}; this policy expects {self.config.image_size}."
                )
            images.append(image)
        return images

    def features(self, obs: dict[str, Any]) -> torch.Tensor:
        parts = [self.encoder(image) for image in self._images(obs)]
        if self.normalizer is not None:
            parts.append(self.normalizer(flat_observation(obs, self.config.state_keys)))
        return torch.cat(parts, dim=1)

    def observe(self, obs: dict[str, Any]) -> None:
        if self.normalizer is not None:
            self.normalizer.update(flat_observation(obs, self.config.state_keys))

    def feature_spec(self) -> FeatureSpec:
        c = self.config
        images = {f"observation.images.{camera}": tuple(c.image_size) for camera in c.cameras}
        return FeatureSpec(images, tuple(c.state_keys) if c.state_dim else (), c.state_dim, c.action_dim, c.chunk_size)

    def set_normalization(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.normalizer is not None:
            self.normalizer.set(*concat_statistics(stats, tuple(self.config.state_keys)))
