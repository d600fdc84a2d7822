"""N envs as S stages of N / S envs, each stepped on its own thread.

Stage s holds envs s * N/S .. (s + 1) * N/S - 1 of the run and seeds them as those envs of
one big batch would be seeded (`EnvConfig.first_env_index`), so a staged env resets to the
same initial states as an unstaged one. `StagedEnv` is itself a `BatchedEnv` (every call is
split over the stages and the results concatenated), so GRPO, checkpoints and evaluation use
it unchanged; the pipelined rollout (`rollout.py`) reaches into `stages` to overlap one
stage's physics and rendering with the policy's inference on another.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

import sims
from sims.core import BatchedEnv, EnvConfig, Obs


def concat_tree(parts: list[Any]) -> Any:
    """Concatenate per-stage results: tensors along dim 0, lists joined, dicts key by key."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: concat_tree([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [x for p in parts for x in p]
    raise TypeError(f"Cannot concatenate {type(first).__name__} across stages.")


class StagedEnv(BatchedEnv):
    """A BatchedEnv made of `num_stages` equal slices, each a BatchedEnv with its own thread;
    `pipelined` tells the rollout to overlap the stages' physics with inference."""

    def __init__(self, cfg: EnvConfig, num_stages: int, pipelined: bool = False):
        if num_stages < 1 or cfg.num_envs % num_stages:
            raise ValueError(f"env.num_envs ({cfg.num_envs}) must be a positive multiple of rollout.stages ({num_stages}).")
        self.cfg = cfg
        self.pipelined = pipelined  # what `collect_rollout` does with the stages
        self.num_envs = cfg.num_envs
        self.stage_size = cfg.num_envs // num_stages
        self.executors = [ThreadPoolExecutor(1, thread_name_prefix=f"env-stage-{s}") for s in range(num_stages)]
        self.stages: list[BatchedEnv] = [
            sims.make(dataclasses.replace(cfg, num_envs=self.stage_size, first_env_index=cfg.first_env_index + s * self.stage_size))
            for s in range(num_stages)
        ]
        first = self.stages[0]
        self.device, self.action_dim = first.device, first.action_dim
        self.max_episode_steps = first.max_episode_steps
        self.instructions = getattr(first, "instructions", ())
        self.task = getattr(first, "task", None)
        # One (N,) step counter whose slices are the stages' own (they update theirs in place),
        # so writing it moves truncation as the contract says (rsl_rl's random episode starts).
        self.elapsed_steps = torch.cat([stage.elapsed_steps for stage in self.stages])
        for s, stage in enumerate(self.stages):
            stage.elapsed_steps = self.elapsed_steps[self.rows(s)]

    def rows(self, stage: int) -> slice:
        """The rows of the full batch that stage `stage` holds."""
        return slice(stage * self.stage_size, (stage + 1) * self.stage_size)

    def submit(self, stage: int, fn, *args: Any) -> Future:
        """Run fn(stage_env, *args) on the stage's own thread."""
        return self.executors[stage].submit(fn, self.stages[stage], *args)

    def _all(self, fn, per_stage_args: list[tuple] | None = None) -> list[Any]:
        args = per_stage_args or [()] * len(self.stages)
        futures = [self.submit(s, fn, *args[s]) for s in range(len(self.stages))]
        return [f.result() for f in futures]

    def _split_ids(self, env_ids: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Global env ids -> per-stage local ids (None: all of the stage's envs)."""
        if env_ids is None:
            return [None] * len(self.stages)
        env_ids = env_ids.to(torch.long)
        return [env_ids[(env_ids // self.stage_size) == s] % self.stage_size for s in range(len(self.stages))]

    # ------------------------------------------------------------------ the BatchedEnv contract
    def reset(self, seed: int | None = None, env_ids: torch.Tensor | None = None) -> Obs:
        ids = self._split_ids(env_ids)
        return concat_tree(self._all(lambda env, i: env.reset(seed=seed, env_ids=i), [(i,) for i in ids]))

    def step(self, action: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        parts = self._all(lambda env, a: env.step(a), [(action[self.rows(s)],) for s in range(len(self.stages))])
        return merge_steps(parts)

    def get_state(self) -> dict[str, torch.Tensor]:
        return concat_tree(self._all(lambda env: env.get_state()))

    def set_state(self, state: dict[str, torch.Tensor], env_ids: torch.Tensor | None = None) -> Obs:
        ids = self._split_ids(env_ids)
        args = []
        for s, local in enumerate(ids):
            if env_ids is None:
                rows = torch.arange(self.stage_size) + s * self.stage_size
            else:
                rows = ((env_ids // self.stage_size) == s).nonzero()[:, 0]
            args.append(({k: v[rows.to(v.device)] for k, v in state.items()}, local))
        return concat_tree(self._all(lambda env, st, i: env.set_state(st, env_ids=i), args))

    def get_rng_state(self) -> list[dict]:
        return concat_tree(self._all(lambda env: env.get_rng_state()))

    def set_rng_state(self, states: list[dict]) -> None:
        self._all(lambda env, st: env.set_rng_state(st), [(states[self.rows(s)],) for s in range(len(self.stages))])

    def close(self) -> None:
        self._all(lambda env: env.close())
        for executor in self.executors:
            executor.shutdown()


def merge_steps(parts: list[tuple]) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Concatenate the stages' step results; `final_observation` / `done` appear when any stage
    has them (a stage without them contributes its obs / all False)."""
    obs = concat_tree([p[0] for p in parts])
    reward, terminated, truncated = (torch.cat([p[i] for p in parts]) for i in (1, 2, 3))
    infos = [p[4] for p in parts]
    info: dict[str, Any] = {k: torch.cat([i[k] for i in infos]) for k in ("success", "unstable")}
    if any("done" in i for i in infos):
        info["final_observation"] = concat_tree([i.get("final_observation", p[0]) for i, p in zip(infos, parts, strict=True)])
        info["done"] = torch.cat([i.get("done", torch.zeros_like(i["success"])) for i in infos])
    return obs, reward, terminated, truncated, info
