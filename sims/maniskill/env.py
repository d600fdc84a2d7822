"""`ManiSkillBatchedEnv`: ManiSkill3's GPU-parallel tasks under the `BatchedEnv` contract.

ManiSkill (SAPIEN/PhysX) needs a Vulkan device SAPIEN accepts, in practice an NVIDIA GPU: on a
machine without one, building the env raises `ManiSkillUnavailable` with SAPIEN's message.
The conversion of ManiSkill's observations and states to our vocabulary are plain functions of
nested dicts of tensors (`convert_obs`, `flatten_state`, `unflatten_state`), tested without
SAPIEN.

Mapping to the contract:
- ``observation.state``: robot qpos (9) + qvel (9) + TCP pose (7) when ManiSkill gives one;
  ``observation.environment_state``: the task's other ``extra`` entries (object poses, goals),
  flattened in ManiSkill's order; ``observation.images.<ours>`` from the ManiSkill sensor
  (`tasks.CAMERAS`: front -> base_camera, wrist -> hand_camera); ``task``: our instruction.
- reward: ManiSkill's ``normalized_dense`` (dense) or ``sparse``; ``info["success"]``.
- episodes end on success (``terminate_on_success``) or ManiSkill's ``fail``, and are truncated
  at ``max_episode_steps``; finished envs reset automatically (a partial reset by env_idx)
  and their last observation is ``info["final_observation"]``.
- `get_state` flattens ``env.get_state_dict()`` (actors, articulations, controller) to
  ``"sim.<path>"`` keys plus ``elapsed_steps`` and ``instruction_index``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from sims.core import BatchedEnv, EnvConfig, Obs, check_choice
from sims.maniskill.tasks import CAMERAS, CONTROL_MODES, MANISKILL_TASKS, OBS_MODES, REWARD_MODES

if TYPE_CHECKING:
    from mani_skill.envs.sapien_env import BaseEnv

_STATE_PREFIX = "sim."
_ROBOT_STATE_EXTRA = ("tcp_pose",)


class ManiSkillUnavailable(RuntimeError):
    """mani-skill is not installed, or SAPIEN found no device to simulate or render on."""


def flatten_state(nested: dict[str, Any], prefix: str = _STATE_PREFIX) -> dict[str, torch.Tensor]:
    """{"actors": {"cube": t}} -> {"sim.actors.cube": t}; every leaf is an (N, ...) tensor."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in nested.items():
        if "." in key:
            raise ValueError(
                f"State key {key!r} contains '.', which flat state keys use as separator."
            )
        if isinstance(value, dict):
            flat.update(flatten_state(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten_state(flat: dict[str, torch.Tensor], prefix: str = _STATE_PREFIX) -> dict[str, Any]:
    """Inverse of `flatten_state` for the keys that start with `prefix` (others are ignored)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        *path, leaf = key[len(prefix) :].split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _flat(value: Any) -> list[torch.Tensor]:
    """Leaves of a (nested) dict of (N, ...) tensors as (N, D) float32, in dict order."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flat(item)]
    tensor = torch.as_tensor(value)
    tensor = tensor[:, None] if tensor.ndim == 1 else tensor.reshape(tensor.shape[0], -1)
    return [tensor.float()]


def convert_obs(raw: dict[str, Any], cameras: dict[str, str], instructions: list[str]) -> Obs:
    """ManiSkill's dict observation -> our feature names.

    Args:
        raw: ``{"agent": {"qpos": (N, 9), "qvel": (N, 9)}, "extra": {...},
            "sensor_data": {sensor: {"rgb": uint8 (N, H, W, 3), "depth": int16 (N, H, W, 1) mm}}}``
            (``sensor_data`` only with camera observations).
        cameras: our camera name -> ManiSkill sensor name, for the cameras to return.
        instructions: one instruction per env.
    """
    agent, extra = raw["agent"], dict(raw.get("extra", {}))
    robot = [agent["qpos"], agent["qvel"]] + [
        extra.pop(k) for k in _ROBOT_STATE_EXTRA if k in extra
    ]
    n = agent["qpos"].shape[0]
    obs: Obs = {"observation.state": torch.cat([t for leaf in robot for t in _flat(leaf)], dim=1)}
    leaves = _flat(extra)
    obs["observation.environment_state"] = (
        torch.cat(leaves, dim=1)
        if leaves
        else torch.zeros(n, 0, device=obs["observation.state"].device)
    )
    sensors = raw.get("sensor_data", {})
    for ours, theirs in cameras.items():
        if theirs not in sensors:
            raise KeyError(
                f"ManiSkill returned no sensor {theirs!r} for camera {ours!r}; it has {sorted(sensors)}."
            )
        data = sensors[theirs]
        if "rgb" in data:
            obs[f"observation.images.{ours}"] = data["rgb"][..., :3].to(torch.uint8)
        if "depth" in data:
            obs[f"observation.depth.{ours}"] = data["depth"][..., 0].float() / 1000.0  # mm -> m
    obs["task"] = list(instructions)
    return obs


class ManiSkillBatchedEnv(BatchedEnv):
    """N parallel copies of a ManiSkill3 task (GPU simulation when cfg.device is CUDA)."""

    def __init__(self, cfg: EnvConfig):
        check_choice("ManiSkill task", cfg.task, tuple(MANISKILL_TASKS))
        check_choice("controller", cfg.controller, tuple(CONTROL_MODES))
        if cfg.randomization.enabled:
            raise ValueError(
                "Domain randomization is configured inside ManiSkill's tasks; set randomization.enabled=False."
            )
        try:
            import gymnasium as gym
            import mani_skill.envs  # noqa: F401  (registers the tasks)
        except ImportError as error:
            raise ManiSkillUnavailable(
                f"backend='maniskill' needs the 'maniskill' extra: uv sync --extra maniskill ({error})."
            ) from error
        self.cfg = cfg
        self.spec = MANISKILL_TASKS[cfg.task]
        self.instructions = self.spec.instructions
        self.num_envs = cfg.num_envs
        self.cameras = {}
        if cfg.obs_mode != "state":
            for camera in cfg.cameras:
                check_choice("ManiSkill camera", camera, tuple(CAMERAS))
            self.cameras = {camera: CAMERAS[camera] for camera in cfg.cameras}
        kwargs: dict[str, Any] = dict(
            num_envs=cfg.num_envs,
            obs_mode=OBS_MODES[cfg.obs_mode],
            reward_mode=REWARD_MODES[cfg.reward_mode],
            control_mode=CONTROL_MODES[cfg.controller],
            sim_backend="physx_cuda" if torch.device(cfg.device).type == "cuda" else "physx_cpu",
            render_backend="gpu" if cfg.obs_mode != "state" else "none",
            sensor_configs=dict(width=cfg.render.width, height=cfg.render.height),
        )
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        if "wrist" in self.cameras:
            kwargs["robot_uids"] = "panda_wristcam"
        try:
            self.env = gym.make(self.spec.env_id, **kwargs)
        except RuntimeError as error:
            raise ManiSkillUnavailable(
                f"ManiSkill could not build {self.spec.env_id}: {error}"
            ) from error
        self.base = cast("BaseEnv", self.env.unwrapped)  # ManiSkill's env under gym's wrappers
        self.device = self.base.device
        action_shape = self.env.action_space.shape
        assert action_shape is not None  # a Box: the controller's (N, A) actions
        self.action_dim = int(action_shape[-1])
        if cfg.max_episode_steps:
            self.max_episode_steps = cfg.max_episode_steps
        else:
            spec = self.env.spec  # gym.make's: ManiSkill registers every task with a step limit
            assert spec is not None and spec.max_episode_steps is not None
            self.max_episode_steps = int(spec.max_episode_steps)
        self.elapsed_steps = self.base.elapsed_steps  # ManiSkill's counter (updated in place)
        self.instruction_index = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self.reset(seed=cfg.seed)

    # ------------------------------------------------------------------ the contract
    def reset(self, seed: int | None = None, env_ids: torch.Tensor | None = None) -> Obs:
        ids = self._ids(env_ids)
        options = {} if env_ids is None else {"env_idx": ids}
        seeds = None if seed is None else [seed * 1_000_003 + i for i in ids.tolist()]
        if seed is not None:
            self._generator.manual_seed(seed)
        self.base.reset(seed=seeds, options=options)
        draws = torch.randint(len(self.instructions), (len(ids),), generator=self._generator)
        self.instruction_index[ids] = draws.to(self.device)
        return self._convert(self._raw_obs())

    def step(
        self, action: torch.Tensor
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        expected = (self.num_envs, self.action_dim)
        if tuple(action.shape) != expected:
            raise ValueError(
                f"Actions must have shape (num_envs, action_dim) = {expected}; got {tuple(action.shape)}."
            )
        _, reward, terminated, _, raw_info = self.base.step(action.to(self.device).clamp(-1.0, 1.0))
        obs = self._convert(self._raw_obs())
        success = raw_info["success"].to(torch.bool)
        fail = raw_info.get("fail", torch.zeros_like(success)).to(torch.bool)
        terminated = fail | (
            success if self.cfg.terminate_on_success else torch.zeros_like(success)
        )
        truncated = (self.base.elapsed_steps >= self.max_episode_steps) & ~terminated
        info: dict = {"success": success, "unstable": torch.zeros_like(success)}
        done = terminated | truncated
        if done.any():
            info["final_observation"] = obs
            info["done"] = done
            obs = self.reset(env_ids=done.nonzero()[:, 0])
        return obs, reward.float(), terminated, truncated, info

    def get_state(self) -> dict[str, torch.Tensor]:
        state = flatten_state(self.base.get_state_dict())
        state["elapsed_steps"] = self.base.elapsed_steps.clone()
        state["instruction_index"] = self.instruction_index.clone()
        return {k: v.clone() for k, v in state.items()}

    def set_state(self, state: dict[str, torch.Tensor], env_ids: torch.Tensor | None = None) -> Obs:
        ids = self._ids(env_ids)
        rows = state["elapsed_steps"].shape[0]
        if rows != len(ids):
            raise ValueError(f"State has {rows} rows for {len(ids)} env ids.")
        # ManiSkill applies row j of each tensor to env env_idx[j] (a reset mask of those envs).
        self.base.set_state_dict(
            unflatten_state({k: v.to(self.device) for k, v in state.items()}), env_idx=ids
        )
        self.base._elapsed_steps[ids] = state["elapsed_steps"].to(self.device)
        self.instruction_index[ids] = state["instruction_index"].to(self.device)
        return self._convert(self._raw_obs())

    def get_rng_state(self) -> dict[str, Any]:
        """What the draws to come depend on: our instruction generator; ManiSkill's seeding state
        (its seed lists and numpy generators, per env and main); and, on a GPU, the CUDA generator
        its tasks draw initial poses from (the CPU one is the trainer's to save)."""
        base = self.base
        state: dict[str, Any] = {
            "instructions": self._generator.get_state(),
            "main_seed": copy.deepcopy(base._main_seed),
            "episode_seed": copy.deepcopy(base._episode_seed),
            "main_rng": None if base._main_rng is None else base._main_rng.get_state(),
            "batched_main_rng": _rng_states(base._batched_main_rng),
            "batched_episode_rng": _rng_states(base._batched_episode_rng),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        base = self.base
        self._generator.set_state(state["instructions"])
        base._main_seed = copy.deepcopy(state["main_seed"])
        base._episode_seed = copy.deepcopy(state["episode_seed"])
        base._main_rng = None if state["main_rng"] is None else _random_state(state["main_rng"])
        base._batched_main_rng = _batched_rng(state["batched_main_rng"])
        base._batched_episode_rng = _batched_rng(state["batched_episode_rng"])
        base._episode_rng = None if base._batched_episode_rng is None else base._batched_episode_rng[0]
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ helpers
    def _raw_obs(self) -> dict:
        return self.base.get_obs(unflattened=True)

    def _convert(self, raw: dict) -> Obs:
        return convert_obs(
            raw, self.cameras, [self.instructions[i] for i in self.instruction_index.tolist()]
        )

    def _ids(self, env_ids: torch.Tensor | None) -> torch.Tensor:
        if env_ids is None:
            return torch.arange(self.num_envs, device=self.device)
        ids = torch.as_tensor(env_ids, device=self.device).long().reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise ValueError(f"env_ids must lie in [0, {self.num_envs}); got {ids.tolist()}.")
        return ids


def _random_state(state: tuple) -> np.random.RandomState:
    rng = np.random.RandomState()
    rng.set_state(state)
    return rng


def _rng_states(batched: Any) -> list[tuple] | None:
    """A ManiSkill `BatchedRNG`'s per-env numpy states (it forwards every attribute to its
    generators, so neither copy.deepcopy nor pickle can take it whole)."""
    return None if batched is None else [rng.get_state() for rng in batched.rngs]


def _batched_rng(states: list[tuple] | None) -> Any:
    from mani_skill.envs.utils.randomization.batched_rng import BatchedRNG

    return None if states is None else BatchedRNG.from_rngs([_random_state(s) for s in states])
