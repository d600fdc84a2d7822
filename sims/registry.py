"""`sims.make`: the one way to build a batched environment from a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sims.core import OBS_MODES, REWARD_MODES, BatchedEnv, EnvConfig, check_choice
from sims.tasks import TASKS

if TYPE_CHECKING:
    from sims.tasks.base import ScriptedExpert


def _make_mujoco(cfg: EnvConfig) -> BatchedEnv:
    from sims.mujoco.env import MujocoBatchedEnv

    return MujocoBatchedEnv(cfg, TASKS[cfg.task]())


def _make_warp(cfg: EnvConfig) -> BatchedEnv:
    try:
        from sims.warp.env import WarpBatchedEnv
    except ImportError as error:
        raise ImportError(f"backend='mujoco_warp' needs the 'warp' extra: uv sync --extra warp ({error}).") from error

    return WarpBatchedEnv(cfg, TASKS[cfg.task]())


def _make_maniskill(cfg: EnvConfig) -> BatchedEnv:
    from sims.maniskill.env import ManiSkillBatchedEnv

    return ManiSkillBatchedEnv(cfg)


BACKENDS: dict[str, Callable[[EnvConfig], BatchedEnv]] = {
    "mujoco": _make_mujoco,
    "mujoco_warp": _make_warp,
    "maniskill": _make_maniskill,
}


def list_tasks(backend: str = "mujoco") -> list[str]:
    """Names of the tasks `backend` runs: our task suite on both MuJoCo backends, ManiSkill's
    own tasks on 'maniskill'."""
    if backend == "maniskill":
        from sims.maniskill.tasks import list_maniskill_tasks

        return list_maniskill_tasks()
    return sorted(TASKS)


def make(task: str | EnvConfig = "PickCube", **overrides: Any) -> BatchedEnv:
    """Build a batched env: ``make("PickCube", num_envs=64, obs_mode="rgb")`` or ``make(cfg)``.

    Every name (task, backend, controller, obs mode, camera) is checked, and a bad one raises
    ValueError naming the valid choices."""
    cfg = task if isinstance(task, EnvConfig) else EnvConfig(task=task)
    fields = {f.name for f in dataclasses.fields(EnvConfig)}
    for key in overrides:
        check_choice("EnvConfig field", key, sorted(fields))
    cfg = dataclasses.replace(cfg, **overrides)
    check_choice("backend", cfg.backend, tuple(BACKENDS))
    check_choice("task", cfg.task, list_tasks(cfg.backend))
    check_choice("obs_mode", cfg.obs_mode, OBS_MODES)
    check_choice("reward_mode", cfg.reward_mode, REWARD_MODES)
    if cfg.num_envs < 1:
        raise ValueError(f"num_envs must be >= 1; got {cfg.num_envs}.")
    if cfg.control_hz <= 0:
        raise ValueError(f"control_hz must be > 0; got {cfg.control_hz}.")
    return BACKENDS[cfg.backend](cfg)


def scripted_expert(env: BatchedEnv) -> ScriptedExpert:
    """The scripted expert of `env`'s task, for the task suite's envs (both MuJoCo backends)."""
    from sims.mujoco.env import MujocoBatchedEnv

    if not isinstance(env, MujocoBatchedEnv):
        raise ValueError(f"Scripted experts drive the task suite's MuJoCo envs; a {type(env).__name__} has none.")
    return env.task.expert()
