"""Deployment episodes written as a LeRobotDataset (v3) by `lerobot`, like `embodied record`.

A frame holds the observation the action was chosen on, the action actually sent (after
the safety layer), ``next.success`` / ``next.done`` where the robot knows them, a sparse
``next.reward`` (1 on success frames), and ``complementary_info.is_intervention`` (bool (1,)):
true where a human or scripted corrector had taken over. `embodied.data.replay.from_lerobot`
reads these datasets (with the intervention flags) for the offline-to-online recipes. Frames are buffered per episode and
written by `end_episode` (also on a fault: the partial episode is kept), and `close`
finalises the dataset so that it loads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from embodied.data.record import VIDEO_BACKEND, VIDEO_CODEC, VIDEO_PRESET

LOG = logging.getLogger(__name__)


def deployment_features(observation_features: dict[str, tuple[int, ...]], action_dim: int, video: bool) -> dict[str, dict]:
    """LeRobot feature specs of a deployment dataset."""
    features: dict[str, dict] = {}
    for key, shape in observation_features.items():
        if key.startswith("observation.images."):
            features[key] = {"dtype": "video" if video else "image", "shape": tuple(shape), "names": ["height", "width", "channels"]}
        elif key.startswith("observation."):
            features[key] = {"dtype": "float32", "shape": tuple(shape), "names": None}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["complementary_info.is_intervention"] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


class EpisodeRecorder:
    """Buffers frames of the current episode and writes whole episodes to `root`."""

    def __init__(
        self, root: str | Path, observation_features: dict[str, tuple[int, ...]], action_dim: int, fps: float,
        repo_id: str = "local/deploy", robot_type: str = "robot", overwrite: bool = False, video: bool = True,
    ):
        import av
        from lerobot.configs.video import RGBEncoderConfig
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        av.logging.set_level(av.logging.ERROR)
        self.root = Path(root)
        if self.root.exists():
            if not overwrite:
                raise FileExistsError(f"{self.root} exists; choose another --record directory or pass --overwrite.")
            shutil.rmtree(self.root)
        has_images = any(k.startswith("observation.images.") for k in observation_features)
        self.features = deployment_features(observation_features, action_dim, video and has_images)
        self.dataset = LeRobotDataset.create(
            repo_id, fps=round(fps), features=self.features, root=self.root, robot_type=robot_type,
            use_videos=video and has_images, video_backend=VIDEO_BACKEND,
            rgb_encoder=RGBEncoderConfig(vcodec=VIDEO_CODEC, preset=VIDEO_PRESET),
        )
        self.frames: list[dict[str, Any]] = []
        self.episodes = 0
        self.total_frames = 0
        self.closed = False

    def add(self, obs: dict[str, Any], action: np.ndarray, intervention: bool, success: bool = False, done: bool = False) -> None:
        frame: dict[str, Any] = {}
        for key, spec in self.features.items():
            if key.startswith("observation."):
                value = np.asarray(obs[key])
                frame[key] = value.astype(np.float32) if spec["dtype"] == "float32" else value
        frame["action"] = np.asarray(action, dtype=np.float32).reshape(-1)
        frame["next.reward"] = np.array([float(success)], dtype=np.float32)  # sparse: a real arm has no dense reward
        frame["next.success"] = np.array([bool(success)])
        frame["next.done"] = np.array([bool(done)])
        frame["complementary_info.is_intervention"] = np.array([bool(intervention)])
        frame["task"] = str(obs.get("task", ""))
        self.frames.append(frame)

    def end_episode(self) -> int:
        """Write the buffered frames as one episode (if any); returns the frames written."""
        frames, self.frames = self.frames, []
        if not frames:
            return 0
        for frame in frames:
            self.dataset.add_frame(frame)
        self.dataset.save_episode()
        self.episodes += 1
        self.total_frames += len(frames)
        return len(frames)

    def close(self) -> None:
        """Write any partial episode and finalise the dataset files."""
        if self.closed:
            return
        try:
            self.end_episode()
        finally:
            self.dataset.finalize()
            self.closed = True
