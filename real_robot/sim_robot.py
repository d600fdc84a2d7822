"""`SimRobot`: one env of the task suite behind the `Robot` interface, for testing the whole
deployment path (safety layer, policy server, runner, recording) without hardware.

The simulation is synchronous: each `send_action` advances it one control step, and between
calls it stands still, which is what `hold` asks of it (a held `SimRobot` only counts holds).
An episode ends on success or at the task's step limit; after that the robot ignores actions
until `reset_episode`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from real_robot.config import RobotConfig
from real_robot.robot import ActionSpec, Robot, RobotError, hold_gripper_command, observation_shapes

if TYPE_CHECKING:
    from sims.mujoco.env import MujocoBatchedEnv


@dataclasses.dataclass
class SimRobotConfig(RobotConfig):
    """A simulated arm: one env of `task` (see `sims.make`)."""

    type: str = "sim"
    task: str = "Reach"
    controller: str = "ee_delta"
    cameras: tuple[str, ...] = ()  # none: state observations only
    image_size: int = 64
    control_hz: float = 20.0
    seed: int = 0
    max_episode_steps: int | None = None


def action_spec_for(controller: str, action_dim: int) -> ActionSpec:
    """The physical meaning of `sims`' controllers (sims/mujoco/controllers.py)."""
    from sims.mujoco.controllers import EEDeltaController, JointDeltaController

    if controller == "ee_delta":
        return ActionSpec("ee_delta", action_dim, 7, EEDeltaController.pos_scale, EEDeltaController.rot_scale)
    if controller == "joint_delta":
        return ActionSpec("joint_delta", action_dim, 7, JointDeltaController.scale)
    raise ValueError(f"No action spec for controller {controller!r}.")


class SimRobot(Robot):
    """One simulated Panda (`sims.make(task, num_envs=1)`) as a `Robot`."""

    name = "sim"

    def __init__(self, cfg: SimRobotConfig | None = None):
        self.cfg = cfg or SimRobotConfig()
        self.control_hz = self.cfg.control_hz
        self.env: MujocoBatchedEnv | None = None
        self._obs: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._status = {"success": False, "done": False}
        self.steps = 0
        self.holds = 0
        self.action_spec = ActionSpec("ee_delta", 7, 7)  # replaced on connect

    # ------------------------------------------------------------------ contract
    @property
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        if self._obs is None:
            raise RobotError("Connect the SimRobot before reading its features.")
        return observation_shapes(self._obs)

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    def connect(self) -> None:
        import sims
        from sims.mujoco.env import MujocoBatchedEnv

        if self.env is not None:
            return
        c = self.cfg
        env = sims.make(
            c.task, num_envs=1, controller=c.controller, control_hz=c.control_hz, seed=c.seed, num_threads=1,
            obs_mode="rgb" if c.cameras else "state", cameras=tuple(c.cameras) or ("front",),
            render=sims.RenderSettings(width=c.image_size, height=c.image_size), max_episode_steps=c.max_episode_steps,
        )
        assert isinstance(env, MujocoBatchedEnv)  # the default backend: it has arm limits
        self.env = env
        self.action_spec = action_spec_for(c.controller, env.action_dim)
        self.joint_limits = env.arm_limits.copy()
        self.reset_episode(c.seed)

    def reset_episode(self, seed: int | None = None) -> None:
        env = self._env()
        with self._lock:
            self._set_obs(env.reset(seed=seed))
            self._status = {"success": False, "done": False}
            self.steps = 0

    def get_observation(self) -> dict[str, Any]:
        self._env()
        with self._lock:
            assert self._obs is not None  # connect() reset the episode
            obs = dict(self._obs)
        obs["timestamp"] = time.time()  # the simulation stands still between steps: its state is current
        return obs

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        env = self._env()
        value = np.asarray(action["action"], dtype=np.float32).reshape(-1)
        if value.shape != (self.action_spec.dim,):
            raise ValueError(f"SimRobot expects an action of shape ({self.action_spec.dim},); got {value.shape}.")
        if not np.isfinite(value).all():
            raise ValueError("SimRobot got a non-finite action; nothing was applied.")
        with self._lock:
            if self._status["done"]:
                return {"action": np.zeros_like(value)}
            obs, _, terminated, truncated, info = env.step(torch.as_tensor(value)[None])
            done = bool((terminated | truncated)[0])
            if done:
                obs = info["final_observation"]
            self._set_obs(obs)
            self.steps += 1
            self._status["success"] |= bool(info["success"][0])
            self._status["done"] = done
        return {"action": value}

    def hold(self) -> None:
        """The synchronous simulation stands still between steps: holding is counted only."""
        self.holds += 1

    def hold_action(self) -> np.ndarray:
        """The action that keeps the arm still: zero deltas, the gripper at its current width."""
        action = np.zeros(self.action_spec.dim, dtype=np.float32)
        if self.action_spec.gripper and self._obs is not None:
            fingers = self._obs["observation.state"][7:9]
            action[-1] = hold_gripper_command(float(fingers.sum()))
        return action

    def episode_status(self) -> dict[str, bool]:
        return dict(self._status)

    def disconnect(self) -> None:
        if self.env is not None:
            self.hold()
            self.env.close()
            self.env = None

    # ------------------------------------------------------------------ helpers
    def _env(self) -> MujocoBatchedEnv:
        if self.env is None:
            raise RobotError("SimRobot is not connected; call connect() first.")
        return self.env

    def _set_obs(self, batch: dict[str, Any]) -> None:
        obs: dict[str, Any] = {}
        for key, value in batch.items():
            if key == "task":
                obs["task"] = value[0]
            elif key.startswith("observation.") and not key.startswith("observation.depth."):
                obs[key] = value[0].cpu().numpy()
        obs["timestamp"] = time.time()
        self._obs = obs
