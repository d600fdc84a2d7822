"""A local LeRobotDataset held in memory as tensors, for behaviour cloning on the CPU.

Read through `lerobot` itself: the table through `LeRobotDataset.hf_dataset`, video frames
episode by episode with lerobot's `decode_video_frames` (one decode per episode and camera
instead of one seek per frame). Images are kept as uint8 (F, H, W, 3), the env's layout, so
a policy sees the same tensors in SFT as in the simulator.

`check_features` compares the dataset with what a policy reads (`Policy.feature_spec`):
a missing feature, a wrong image size or a vector or action dimension that differs is an
error naming both sides, never a silent skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from embodied.data.record import VIDEO_BACKEND
from policies.base import FeatureSpec


class DatasetMismatchError(ValueError):
    """A dataset lacks a feature a policy needs, or its shapes differ."""


def check_features(features: dict[str, dict], spec: FeatureSpec, source: str = "dataset") -> None:
    """Raise DatasetMismatchError when `features` (LeRobot feature specs) cannot feed `spec`."""
    problems = []
    for key, (height, width) in spec.images.items():
        if key not in features:
            problems.append(f"missing image feature {key!r}")
            continue
        shape = tuple(features[key]["shape"])
        if shape[:2] != (height, width) and shape[-2:] != (height, width):
            problems.append(f"{key} is {shape}; the policy expects ({height}, {width}, 3)")
    dim = 0
    for key in spec.vectors:
        if key not in features:
            problems.append(f"missing vector feature {key!r}")
        else:
            dim += int(np.prod(features[key]["shape"]))
    if not problems and dim != spec.vector_dim:
        problems.append(f"{' + '.join(spec.vectors)} has {dim} dimensions; the policy expects {spec.vector_dim}")
    if "action" not in features:
        problems.append("missing 'action'")
    elif int(np.prod(features["action"]["shape"])) != spec.action_dim:
        problems.append(f"action has {tuple(features['action']['shape'])}; the policy emits {spec.action_dim}")
    if problems:
        raise DatasetMismatchError(
            f"The {source} does not fit the policy: {'; '.join(problems)}. The {source} has: {', '.join(sorted(features))}."
        )


class DemoDataset:
    """Frames of a local LeRobotDataset in memory; `sample` draws (obs, action chunk) batches.

    obs is a dict like the env's: `observation.images.<camera>` uint8 (B, H, W, 3), vectors
    float32 (B, D), `task` list[str]. A chunk of T actions that runs past its episode's end is
    padded with the episode's last action and flagged in `action_is_pad` (B, T).
    """

    def __init__(self, root: str | Path, keys: list[str] | None = None, episodes: list[int] | None = None, progress: bool = True):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        root = Path(root)
        if not (root / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"{root} is not a LeRobotDataset (no meta/info.json).")
        self.root = root
        self.lerobot = LeRobotDataset(root.name, root=root, episodes=episodes, video_backend=VIDEO_BACKEND)
        meta = self.lerobot.meta
        self.features: dict[str, dict] = dict(meta.features)
        self.fps = meta.fps
        self.stats: dict[str, dict[str, np.ndarray]] = meta.stats or {}
        wanted = keys or [k for k in self.features if k.startswith("observation.") or k == "action"]
        missing = [k for k in wanted if k not in self.features]
        if missing:
            raise DatasetMismatchError(f"{root} lacks {missing}; it has {', '.join(sorted(self.features))}.")
        table = self.lerobot.hf_dataset
        self.episode_index = torch.as_tensor(np.asarray(table["episode_index"]), dtype=torch.long)
        self.num_frames = len(self.episode_index)
        tasks = meta.tasks
        task_names = {int(i): name for name, i in zip(tasks.index, tasks["task_index"], strict=True)}
        self.tasks = [task_names[int(i)] for i in table["task_index"]]
        self.data: dict[str, torch.Tensor] = {}
        video_keys = [k for k in wanted if self.features[k]["dtype"] == "video"]
        for key in wanted:
            if key in video_keys:
                continue
            if self.features[key]["dtype"] == "image":
                self.data[key] = torch.stack([_uint8_hwc(torch.as_tensor(np.asarray(img))) for img in table[key]])
            else:
                self.data[key] = torch.as_tensor(np.stack(table[key]), dtype=torch.float32).reshape(self.num_frames, -1)
        if video_keys:
            self._decode_videos(video_keys, np.asarray(table["timestamp"]), progress)
        # Episode bounds for chunking: the last frame index of each frame's episode.
        ends = torch.zeros(self.num_frames, dtype=torch.long)
        for episode in self.episode_index.unique().tolist():
            where = (self.episode_index == episode).nonzero()[:, 0]
            ends[where] = where.max()
        self.episode_end = ends

    def _decode_videos(self, keys: list[str], timestamps: np.ndarray, progress: bool) -> None:
        from lerobot.datasets.video_utils import decode_video_frames

        meta = self.lerobot.meta
        frames: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        episodes = self.episode_index.unique_consecutive().tolist()
        for episode in tqdm(episodes, desc="decode videos", unit="episode", disable=not progress):
            rows = (self.episode_index == episode).nonzero()[:, 0].numpy()
            info = meta.episodes[episode]
            for key in keys:
                start = info[f"videos/{key}/from_timestamp"]
                decoded = decode_video_frames(
                    self.root / meta.get_video_file_path(episode, key), [start + float(t) for t in timestamps[rows]],
                    self.lerobot.tolerance_s, VIDEO_BACKEND, return_uint8=True,
                )
                frames[key].append(_uint8_hwc(decoded))
        for key in keys:
            self.data[key] = torch.cat(frames[key])

    def __len__(self) -> int:
        return self.num_frames

    def statistics(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's mean and std of a vector feature (from meta/stats.json)."""
        if key not in self.stats:
            raise DatasetMismatchError(f"{self.root} has no statistics for {key!r} in meta/stats.json.")
        return (torch.as_tensor(np.asarray(self.stats[key]["mean"]), dtype=torch.float32).flatten(),
                torch.as_tensor(np.asarray(self.stats[key]["std"]), dtype=torch.float32).flatten())

    def sample(self, batch_size: int, chunk_size: int, generator: torch.Generator) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """A random batch: (obs, actions (B, T, A), action_is_pad (B, T))."""
        index = torch.randint(self.num_frames, (batch_size,), generator=generator)
        return self.batch(index, chunk_size)

    def batch(self, index: torch.Tensor, chunk_size: int) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        steps = index[:, None] + torch.arange(chunk_size)[None]
        end = self.episode_end[index][:, None]
        is_pad = steps > end
        actions = self.data["action"][torch.minimum(steps, end)]
        obs: dict[str, Any] = {k: v[index] for k, v in self.data.items() if k != "action"}
        obs["task"] = [self.tasks[i] for i in index.tolist()]
        return obs, actions, is_pad


def _uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float in [0, 1] or uint8, or (..., H, W, 3) -> uint8 (..., H, W, 3)."""
    if images.shape[-3] == 3 and images.shape[-1] != 3:
        images = images.movedim(-3, -1)
    if images.dtype != torch.uint8:
        images = (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()
