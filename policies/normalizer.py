"""Running mean and variance of observations, stored as buffers so they save with the model."""

from __future__ import annotations

import torch
from torch import nn


class RunningNormalizer(nn.Module):
    """Normalises (..., D) inputs by a running mean/std (parallel Welford updates), clipped."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))
        self.clip = clip
        self.eps = eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch (B, D) into the statistics."""
        x = x.reshape(-1, self.mean.shape[0]).float()
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        total = self.count + n
        delta = batch_mean - self.mean
        ratio = float(n / total)
        self.mean += delta * ratio
        self.var.copy_(self.var * (1 - ratio) + batch_var * ratio + delta.pow(2) * ratio * (1 - ratio))
        self.count.copy_(total)

    @torch.no_grad()
    def set(self, mean: torch.Tensor, std: torch.Tensor, count: float = 1e6) -> None:
        """Take given statistics (a dataset's) as if from `count` samples: later `update`s then
        barely move them."""
        if mean.shape != self.mean.shape or std.shape != self.var.shape:
            raise ValueError(f"Statistics of shape {tuple(mean.shape)} for a normalizer of dimension {self.mean.shape[0]}.")
        self.mean.copy_(mean)
        self.var.copy_(std.pow(2))
        self.count.fill_(count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)
