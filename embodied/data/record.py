"""`embodied record`: scripted-expert demonstrations written as a LeRobotDataset (v3) by
`lerobot` itself.

Every env of a batch runs the task's expert; each finished episode is written whole
(`add_frame` per step, then `save_episode`), successful ones only unless asked otherwise.
A frame holds the observation before the step, the action, and what the step returned:

    observation.images.<camera>   uint8 (H, W, 3), stored as video (or PNG images)
    observation.state             float32 (D,)  proprioception
    observation.environment_state float32 (E,)  object/goal state (privileged)
    action                        float32 (A,)  in [-1, 1], env units
    next.reward / next.done / next.success      float32 / bool, shape (1,)
    task                          the episode's instruction

Diversity: `noise` adds Gaussian noise to the executed action; with `label="clean"` the
recorded action is the expert's own (DART-style: off-distribution states, expert labels),
with `label="executed"` it is what the robot did (consistent with the rewards, for offline RL).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

import sims
from sims.core import BatchedEnv

LOG = logging.getLogger(__name__)
VIDEO_BACKEND = "pyav"  # torchcodec needs a system FFmpeg; PyAV ships its own
# lerobot's default AV1 (SVT) encoder at its fastest preset: ~0.4 s per 60-frame 64x64 episode
# here. (H.264 encodes faster but lerobot's concatenation of episodes into one file then fails
# on non-monotonic timestamps.)
VIDEO_CODEC, VIDEO_PRESET = "libsvtav1", 12


@dataclasses.dataclass
class RecordConfig:
    task: str = "PickCube"
    episodes: int = 100
    root: str = ""  # default: data/<task>
    repo_id: str = ""  # default: local/<task>
    num_envs: int = 16
    seed: int = 0
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: int = 64
    video: bool = True  # mp4 (LeRobot's default) or PNG images
    noise: float = 0.0  # std of Gaussian noise on the executed action
    label: Literal["clean", "executed"] = "executed"
    keep_failures: bool = False
    randomize: bool = False
    overwrite: bool = False
    hold_steps: int = 0  # > 0: keep recording the expert this many steps after the first success


def dataset_features(env: BatchedEnv, obs: dict, cfg: RecordConfig) -> dict[str, dict]:
    """LeRobot feature specs for what `record` writes, read off one observation."""
    features: dict[str, dict] = {}
    for camera in cfg.cameras:
        image = obs[f"observation.images.{camera}"]
        features[f"observation.images.{camera}"] = {
            "dtype": "video" if cfg.video else "image",
            "shape": tuple(image.shape[1:]),
            "names": ["height", "width", "channels"],
        }
    for key in ("observation.state", "observation.environment_state"):
        features[key] = {"dtype": "float32", "shape": (obs[key].shape[1],), "names": None}
    features["action"] = {"dtype": "float32", "shape": (env.action_dim,), "names": None}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


def record(cfg: RecordConfig, progress: bool = True) -> dict:
    """Record `cfg.episodes` expert episodes into a LeRobotDataset at `cfg.root`; returns a
    summary (episodes written, frames, success rate of the attempts)."""
    import av
    from lerobot.configs.video import RGBEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    av.logging.set_level(av.logging.ERROR)  # the encoder's per-file notices

    if cfg.episodes <= 0:
        raise ValueError(f"episodes must be positive; got {cfg.episodes}.")
    if cfg.noise < 0:
        raise ValueError(f"noise is a standard deviation; got {cfg.noise}.")
    root = Path(cfg.root or f"data/{cfg.task}")
    if root.exists():
        if not cfg.overwrite:
            raise FileExistsError(f"{root} exists; pass --overwrite to replace it or choose another --root.")
        shutil.rmtree(root)
    if cfg.hold_steps < 0:
        raise ValueError(f"hold_steps must be >= 0; got {cfg.hold_steps}.")
    env = sims.make(
        cfg.task, num_envs=cfg.num_envs, seed=cfg.seed, obs_mode="rgb", cameras=cfg.cameras,
        render=sims.RenderSettings(width=cfg.image_size, height=cfg.image_size),
        randomization=sims.RandomizationConfig(enabled=cfg.randomize),
        terminate_on_success=cfg.hold_steps == 0,
    )
    since_success = torch.full((env.num_envs,), -1, dtype=torch.long)  # steps since the first success
    expert = sims.scripted_expert(env)
    obs = env.reset(seed=cfg.seed)
    dataset = LeRobotDataset.create(
        cfg.repo_id or f"local/{cfg.task}", fps=round(env.cfg.control_hz), features=dataset_features(env, obs, cfg),
        root=root, robot_type="panda", use_videos=cfg.video, video_backend=VIDEO_BACKEND,
        rgb_encoder=RGBEncoderConfig(vcodec=VIDEO_CODEC, preset=VIDEO_PRESET),
    )
    noise_generator = torch.Generator().manual_seed(cfg.seed)
    episodes: list[list[dict]] = [[] for _ in range(env.num_envs)]
    written = attempts = successes = frames = 0
    bar = tqdm(total=cfg.episodes, unit="episode", disable=not progress, desc=f"record {cfg.task}")
    try:
        while written < cfg.episodes:
            expert_action = expert.act(obs)
            executed = expert_action
            if cfg.noise:
                noise = torch.randn(expert_action.shape, generator=noise_generator) * cfg.noise
                executed = (expert_action + noise.to(expert_action)).clamp(-1.0, 1.0)
            label = expert_action if cfg.label == "clean" else executed
            next_obs, reward, terminated, truncated, info = env.step(executed)
            done = terminated | truncated
            if cfg.hold_steps:  # the episode ends `hold_steps` steps after its first success
                success_now = info["success"].cpu()
                since_success = torch.where(since_success >= 0, since_success + 1, torch.where(success_now, 0, -1))
                held = (since_success >= cfg.hold_steps) & ~done.cpu()
                done = done | held.to(done.device)
                if held.any():
                    next_obs = env.reset(env_ids=held.nonzero()[:, 0].to(env.device))
                since_success[done.cpu()] = -1
            for i in range(env.num_envs):
                episodes[i].append(_frame(obs, i, label[i], reward[i], done[i], info["success"][i], cfg.cameras))
            for i in done.nonzero()[:, 0].tolist():
                attempts += 1
                success = bool(info["success"][i]) or any(f["next.success"][0] for f in episodes[i])
                successes += success
                if (success or cfg.keep_failures) and written < cfg.episodes:
                    for frame in episodes[i]:
                        dataset.add_frame(frame)
                    dataset.save_episode()
                    written += 1
                    frames += len(episodes[i])
                    bar.update(1)
                episodes[i] = []
            if attempts >= 20 * cfg.episodes and written < cfg.episodes:
                raise RuntimeError(
                    f"Only {written} of {attempts} attempted episodes were kept; the expert fails too often "
                    f"(noise={cfg.noise}). Lower --noise or pass --keep-failures."
                )
            obs = next_obs
    finally:
        bar.close()
        dataset.finalize()
        env.close()
    summary = {
        "root": str(root), "task": cfg.task, "episodes": written, "frames": frames,
        "attempts": attempts, "expert_success_rate": successes / max(attempts, 1), "config": dataclasses.asdict(cfg),
    }
    (root / "meta" / "record.json").write_text(json.dumps(summary, indent=2))
    return summary


def _frame(obs: dict, i: int, action, reward, done, success, cameras: tuple[str, ...]) -> dict:
    frame = {f"observation.images.{c}": obs[f"observation.images.{c}"][i].cpu().numpy() for c in cameras}
    for key in ("observation.state", "observation.environment_state"):
        frame[key] = obs[key][i].cpu().numpy().astype(np.float32)
    frame["action"] = action.cpu().numpy().astype(np.float32)
    frame["next.reward"] = np.array([float(reward)], dtype=np.float32)
    frame["next.done"] = np.array([bool(done)])
    frame["next.success"] = np.array([bool(success)])
    frame["task"] = obs["task"][i]
    return frame
