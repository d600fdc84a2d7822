"""Policy evaluation on held-out seeds: success with a Wilson 95% interval, returns, videos."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

import sims
from policies.base import Policy
from sims.core import EnvConfig


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def evaluate_policy(
    policy: Policy, env_cfg: EnvConfig, episodes: int, seed: int, deterministic: bool = True,
    video_path: Path | None = None, video_envs: int = 4,
) -> dict[str, Any]:
    """Run `episodes` episodes (one per env) from seeds disjoint from training's; optional mp4.
    An episode succeeds if the task is solved at any step (success_once)."""
    cfg = dataclasses.replace(env_cfg, num_envs=episodes, seed=seed, report_stages=True)
    if video_path is not None and cfg.obs_mode == "state":
        cfg = dataclasses.replace(cfg, obs_mode="rgb", cameras=("front",))
    env = sims.make(cfg)
    obs = env.reset(seed=seed)
    camera = next((k for k in obs if k.startswith("observation.images.")), None)
    was_training = policy.training
    policy.eval()
    policy.reset()
    # The policy's own randomness (a flow VLA's initial noise even when deterministic, sampled
    # actions otherwise) comes from torch's RNG seeded here, so that one checkpoint evaluated
    # twice on the same seed gives the same numbers; the caller's RNG stream is left untouched.
    cuda_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        success, returns, stages, frames = run_episodes(
            policy, env, obs, episodes, deterministic, camera if video_path is not None else None,
            video_envs,
        )
    policy.train(was_training)
    env.close()
    if video_path is not None and frames:
        import imageio.v2 as imageio

        video_path.parent.mkdir(parents=True, exist_ok=True)
        video: list[npt.ArrayLike] = [*frames]  # imageio types its frames as a list of ArrayLike
        imageio.mimsave(video_path, video, fps=int(cfg.control_hz), macro_block_size=1)
    low, high = wilson_interval(int(success.sum()), episodes)
    return {
        "success_rate": float(success.float().mean()), "success_ci95": [low, high], "episodes": episodes,
        "mean_return": float(returns.mean()), "seed": seed,
        **{f"stage/{name}": float(reached.float().mean()) for name, reached in stages.items()},
    }


def run_episodes(
    policy: Policy, env: Any, obs: dict[str, Any], episodes: int, deterministic: bool,
    camera: str | None, video_envs: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], list[np.ndarray]]:
    """Step every env until each has finished one episode: (success, return, {stage: reached at
    some step} when the env reports its task's milestones, frames of `camera`)."""
    success = torch.zeros(episodes, dtype=torch.bool)
    stages: dict[str, torch.Tensor] = {}
    finished = torch.zeros(episodes, dtype=torch.bool)
    returns = torch.zeros(episodes)
    frames: list[np.ndarray] = []
    while not finished.all():
        chunk = policy.act(obs, deterministic=deterministic).action
        for t in range(chunk.shape[1]):
            obs, reward, terminated, truncated, info = env.step(chunk[:, t])
            returns[~finished] += reward.cpu()[~finished]
            success |= info["success"].cpu() & ~finished
            for name, now in info.get("stages", {}).items():
                stages[name] = stages.get(name, torch.zeros(episodes, dtype=torch.bool)) | (now.cpu() & ~finished)
            finished |= (terminated | truncated).cpu()
            if camera is not None:
                from embodied.demo import tile

                shown = info.get("final_observation", obs)[camera][:video_envs].cpu().numpy()
                frames.append(tile(shown, int(math.ceil(math.sqrt(len(shown))))))
            if finished.all():
                break
    return success, returns, stages, frames
