"""Scripted experts on every task: success rates over many seeded episodes, and videos.

This is the quickstart's main job until training lands: it shows that every task is solvable
from its whole initial-state distribution and what the scenes look like."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

import sims


@dataclasses.dataclass
class ExpertResult:
    task: str
    episodes: int
    successes: int
    mean_steps: float
    seconds: float

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes


def evaluate_expert(task: str, episodes: int = 100, seed: int = 0, randomize: bool = False, num_threads: int = 0) -> ExpertResult:
    """Run the task's scripted expert for `episodes` episodes (one per env, in parallel)."""
    env = sims.make(
        task, num_envs=episodes, seed=seed, num_threads=num_threads,
        randomization=sims.RandomizationConfig(enabled=randomize),
    )
    expert = sims.scripted_expert(env)
    obs = env.reset(seed=seed)
    success = torch.zeros(episodes, dtype=torch.bool)
    finished = torch.zeros(episodes, dtype=torch.bool)
    length = torch.zeros(episodes)
    start = time.perf_counter()
    while not finished.all():
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        length[~finished] += 1
        new = (terminated | truncated) & ~finished
        success |= new & info["success"]
        finished |= new
    env.close()
    return ExpertResult(task, episodes, int(success.sum()), float(length.mean()), time.perf_counter() - start)


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(n, H, W, 3) -> one (rows * H, columns * W, 3) grid image."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=images.dtype)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def record_expert_video(
    task: str, path: Path, num_envs: int = 4, steps: int | None = None, size: int = 160, seed: int = 0,
    camera: str = "front", randomize: bool = False,
) -> Path:
    """An mp4 of `num_envs` envs (a grid) driven by the expert for `steps` control steps."""
    import imageio.v2 as imageio

    env = sims.make(
        task, num_envs=num_envs, seed=seed, obs_mode="rgb", cameras=(camera,),
        render=sims.RenderSettings(width=size, height=size),
        randomization=sims.RandomizationConfig(enabled=randomize),
    )
    expert = sims.scripted_expert(env)
    obs = env.reset(seed=seed)
    key = f"observation.images.{camera}"
    columns = int(np.ceil(np.sqrt(num_envs)))
    frames: list[npt.ArrayLike] = [tile(obs[key].numpy(), columns)]  # as imageio types them
    for _ in range(steps or env.max_episode_steps):
        obs, _, _, _, info = env.step(expert.act(obs))
        final = info.get("final_observation", obs)  # show the last frame of finished episodes
        frames.append(tile(final[key].numpy(), columns))
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=int(env.cfg.control_hz), macro_block_size=1)
    return path


def success_table(results: list[ExpertResult]) -> str:
    """A Markdown table of expert success rates."""
    lines = ["| task | episodes | success | mean steps | wall s |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.task} | {r.episodes} | {r.success_rate:.1%} | {r.mean_steps:.1f} | {r.seconds:.1f} |")
    return "\n".join(lines)


def run_demo(
    out: Path, tasks: list[str] | None = None, episodes: int = 100, seed: int = 0, video: bool = True,
    randomize: bool = False,
) -> list[ExpertResult]:
    """Evaluate every task's expert and record a video of each; write a table and JSON to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = tasks or sims.list_tasks()
    results = []
    for task in tqdm(tasks, desc="experts", unit="task"):
        result = evaluate_expert(task, episodes=episodes, seed=seed, randomize=randomize)
        results.append(result)
        tqdm.write(f"{task:>12}: {result.success_rate:6.1%} of {episodes} episodes in {result.seconds:.1f} s")
        if video:
            record_expert_video(task, out / f"{task}.mp4", seed=seed, randomize=randomize)
    table = success_table(results)
    (out / "success.md").write_text(table + "\n")
    (out / "success.json").write_text(
        json.dumps([dataclasses.asdict(r) | {"success_rate": r.success_rate} for r in results], indent=2)
    )
    return results
