"""Supervised fine-tuning / behaviour cloning from a LeRobot dataset.

One iteration, top to bottom:
  1. draw `updates_per_iteration` batches of (observation, action chunk of T) from the
     in-memory dataset (`DemoDataset`), chunks padded at episode ends with the last action;
  2. augment the images: a random shift of up to `shift_pixels` (pad by replication, random
     crop; DrQ) per image;
  3. step AdamW on the policy's own supervised loss (`Policy.supervised_loss`: MSE for the
     Gaussian policies, token cross-entropy for the AR VLA, flow matching for the flow VLA),
     gradient norm clipped, with a cosine schedule after a linear warm-up.

Before anything trains, the dataset's features are checked against what the policy reads
(`Policy.feature_spec`): a mismatch is an error naming both sides. With
`normalization="dataset"` the dataset's statistics are frozen into the policy (and so into
every checkpoint); with "policy" a pretrained policy keeps its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from embodied.algos.base import AlgoConfig, Algorithm, register_algo
from embodied.data.dataset import DemoDataset, check_features


@dataclasses.dataclass
class SFTConfig(AlgoConfig):
    name: str = "sft"
    dataset: str = ""  # root of a local LeRobotDataset
    episodes: int = 0  # use the first N episodes (few-shot); 0: all
    val_episodes: int = 0  # > 0: the next N episodes are held out; validation loss and action L1 logged
    val_frames: int = 256  # validation frames (a fixed random subset of the held-out episodes)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    updates_per_iteration: int = 50  # gradient steps between logs
    total_updates: int = 5000
    warmup_updates: int = 100
    max_grad_norm: float = 1.0
    shift_pixels: int = 4  # random-shift augmentation; 0: none
    normalization: Literal["dataset", "policy"] = "dataset"


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ's augmentation on uint8 (B, H, W, C): replicate-pad by `pad`, crop back at a random
    offset per image."""
    b, h, w, _ = images.shape
    x = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dy, dx = (torch.randint(2 * pad + 1, (2, b), generator=generator)).unbind(0)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
    x = x.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(b, x.shape[1], h, w)
    return x.gather(3, cols).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@register_algo
class SFT(Algorithm[SFTConfig]):
    config_class = SFTConfig
    uses_env = False  # the trainer counts gradient steps, not env steps

    def __init__(self, policy, cfg: SFTConfig):
        super().__init__(policy, cfg)
        if not cfg.dataset:
            raise ValueError("algo.dataset must name a local LeRobotDataset root (embodied record writes one).")
        spec = policy.feature_spec()
        self.dataset = DemoDataset(cfg.dataset, keys=[*spec.images, *spec.vectors, "action"],
                                   episodes=list(range(cfg.episodes)) if cfg.episodes else None)
        check_features(self.dataset.features, spec, source=f"dataset {cfg.dataset}")
        self.chunk_size = spec.chunk_size
        self.image_keys = list(spec.images)
        if cfg.normalization == "dataset":
            policy.set_normalization({k: self.dataset.statistics(k) for k in spec.vectors})
        self.validation = self.validation_batch(cfg, spec) if cfg.val_episodes else None
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def validation_batch(self, cfg: SFTConfig, spec) -> tuple[dict[str, Any], torch.Tensor]:
        """A fixed batch of (obs, action chunks) from episodes the policy never trains on."""
        if not cfg.episodes:
            raise ValueError("algo.val_episodes needs algo.episodes (the training episodes come first).")
        held_out = DemoDataset(cfg.dataset, keys=[*spec.images, *spec.vectors, "action"],
                               episodes=list(range(cfg.episodes, cfg.episodes + cfg.val_episodes)), progress=False)
        generator = torch.Generator().manual_seed(0)
        index = torch.randperm(len(held_out), generator=generator)[: cfg.val_frames]
        obs, actions, _ = held_out.batch(index, self.chunk_size)
        return obs, actions

    @torch.no_grad()
    def validate(self, obs: dict[str, Any], actions: torch.Tensor) -> dict[str, float]:
        """The supervised loss on held-out frames and the L1 error of the policy's own
        deterministic chunks there (for the AR VLA: free-running decoding, not teacher forcing)."""
        loss, _ = self.policy.supervised_loss(obs, actions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            predicted = self.policy.act(obs, deterministic=True).action
        return {"val_loss": loss.item(), "val_action_l1": (predicted - actions).abs().mean().item()}

    def learning_rate(self) -> float:
        cfg = self.cfg
        if self.updates < cfg.warmup_updates:
            return cfg.lr * (self.updates + 1) / cfg.warmup_updates
        progress = min(1.0, (self.updates - cfg.warmup_updates) / max(1, cfg.total_updates - cfg.warmup_updates))
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def collect(self, env, obs, tracker) -> tuple[dict[str, Any], Any, None]:
        """No env interaction: the 'rollout' is the iteration's dataset batches."""
        batches = []
        for _ in range(self.cfg.updates_per_iteration):
            batch_obs, actions, is_pad = self.dataset.sample(self.cfg.batch_size, self.chunk_size, self.generator)
            if self.cfg.shift_pixels:
                for key in self.image_keys:
                    batch_obs[key] = random_shift(batch_obs[key], self.cfg.shift_pixels, self.generator)
            batches.append((batch_obs, actions, is_pad))
        return {"batches": batches, "env_steps": 0}, obs, None

    def update(self, batch: dict[str, Any], iteration: int) -> dict[str, float]:
        self.policy.train()
        totals: dict[str, float] = {}
        for obs, actions, _ in batch["batches"]:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
            loss, metrics = self.policy.supervised_loss(obs, actions)
            self.check_finite(loss, {"loss": loss.detach()}, iteration)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.updates += 1
            for key, value in {"loss": loss.item(), "grad_norm": float(grad_norm), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value
        self.policy.eval()
        n = len(batch["batches"])
        validation = self.validate(*self.validation) if self.validation is not None else {}
        return {**{k: v / n for k, v in totals.items()}, **validation, "lr": self.optimizer.param_groups[0]["lr"], "updates": float(self.updates)}

    def finished(self) -> bool:
        return self.updates >= self.cfg.total_updates

    def planned_updates(self) -> int:
        return self.cfg.total_updates

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates = state["updates"]
