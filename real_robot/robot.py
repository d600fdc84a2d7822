"""The robot contract, in LeRobot's shape.

A `Robot` is one physical (or simulated) arm driven at a fixed control rate:

    robot.connect()
    obs = robot.get_observation()        # {"observation.state": (D,) float32, ...}
    robot.send_action({"action": a})     # (A,) float32; returns what was actually sent
    robot.disconnect()

Feature names are the datasets' (`observation.state`, `observation.environment_state`,
`observation.images.<camera>` uint8 (H, W, 3), `action`), so a robot's frames go straight into a
LeRobot dataset and into a policy trained on one. `observation_features` / `action_features`
map each name to its shape (LeRobot maps names to a shape tuple or a type, the same idea).
Besides the features, every observation carries ``timestamp`` (wall-clock seconds at which its
oldest part was measured; the safety layer's watchdog reads it) and ``task`` (the instruction).

`ActionSpec` says what an action means physically, so the safety layer can check it:
``ee_delta`` (TCP translation / rotation per step, normalised, as `sims`' controller),
``joint_delta`` (joint target increments per step, normalised) or ``joint_position``
(absolute joint targets in radians). The last entry is the gripper when `gripper` is set.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np
import torch

ACTION_KINDS = ("ee_delta", "joint_delta", "joint_position")


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """The physical meaning of an action vector (A,).

    kind:           one of ACTION_KINDS
    dim:            A
    num_joints:     arm joints (J)
    position_scale: metres (ee_delta) or radians (joint_delta) per unit of action; 1 for joint_position
    rotation_scale: radians of TCP rotation per unit (ee_delta only)
    gripper:        the last entry commands the gripper (-1 closed .. +1 open)
    """

    kind: str
    dim: int
    num_joints: int
    position_scale: float = 1.0
    rotation_scale: float = 0.0
    gripper: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"Unknown action kind {self.kind!r}; valid: {', '.join(ACTION_KINDS)}.")


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Where the safety layer finds joint positions, velocities and the TCP position inside
    ``observation.state``: index ranges [start, stop). `sims`' layout is the default:
    arm q (7), finger q (2), arm qdot (7), finger qdot (2), TCP position (3), hand quaternion (4)."""

    joint_positions: tuple[int, int] = (0, 7)
    joint_velocities: tuple[int, int] = (9, 16)
    tcp_position: tuple[int, int] | None = (18, 21)

    def joints(self, state: np.ndarray) -> np.ndarray:
        return state[self.joint_positions[0] : self.joint_positions[1]]

    def velocities(self, state: np.ndarray) -> np.ndarray:
        return state[self.joint_velocities[0] : self.joint_velocities[1]]

    def tcp(self, state: np.ndarray) -> np.ndarray | None:
        if self.tcp_position is None:
            return None
        return state[self.tcp_position[0] : self.tcp_position[1]]


class RobotError(RuntimeError):
    """A robot that cannot serve a request (not connected, no data, transport lost)."""


class Robot(abc.ABC):
    """One arm behind LeRobot's robot interface. Subclasses implement the abstract methods."""

    name: str = "robot"
    control_hz: float = 20.0
    action_spec: ActionSpec
    state_layout: StateLayout = StateLayout()
    joint_limits: np.ndarray | None = None  # (J, 2) radians, where the robot knows them

    @property
    @abc.abstractmethod
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        """Feature name -> shape of one observation (no batch dimension)."""

    @property
    def action_features(self) -> dict[str, tuple[int, ...]]:
        """Feature name -> shape of one action: ``{"action": (A,)}``."""
        return {"action": (self.action_spec.dim,)}

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether `connect` succeeded and `disconnect` has not been called."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (start threads, subscribe, wait for the first data)."""

    @abc.abstractmethod
    def get_observation(self) -> dict[str, Any]:
        """The latest observation: features as numpy arrays, plus ``timestamp`` and ``task``."""

    @abc.abstractmethod
    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        """Command ``action["action"]`` (A,); returns the action actually sent."""

    def hold_action(self) -> np.ndarray:
        """The action (A,) that keeps the arm still: zero for delta actions (override where the
        gripper or absolute targets need the current state)."""
        return np.zeros(self.action_spec.dim, dtype=np.float32)

    @abc.abstractmethod
    def hold(self) -> None:
        """Keep the arm where it is now (zero motion, gripper unchanged). Must be safe to call
        at any time, from any thread, and repeatedly."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Hold the arm and close the connection."""

    # ------------------------------------------------------------- optional episode hooks
    def reset_episode(self, seed: int | None = None) -> None:  # noqa: B027 - optional hook
        """Start a new episode (a simulator resets; a real setup waits for its operator)."""

    def episode_status(self) -> dict[str, bool]:
        """``{"success": ..., "done": ...}`` where the robot knows them (a simulator does);
        empty for a real arm, whose episodes end by time limit or the operator."""
        return {}

    def subscribe_estop(self, callback) -> None:  # noqa: B027 - optional hook
        """Call ``callback(reason)`` when the robot's own e-stop source fires (a ROS topic)."""

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


def hold_gripper_command(width: float, max_width: float = 0.08) -> float:
    """The gripper action (-1 closed .. +1 open) that keeps fingers `width` metres apart."""
    return float(np.clip(2.0 * width / max_width - 1.0, -1.0, 1.0))


def to_policy_batch(obs: dict[str, Any], device: str | torch.device = "cpu") -> dict[str, Any]:
    """One robot observation -> a policy's batch of one: arrays (1, ...) as tensors, ``task``
    as a one-element list; ``timestamp`` and other non-features dropped."""
    batch: dict[str, Any] = {}
    for key, value in obs.items():
        if key.startswith("observation.") or key == "action":
            batch[key] = torch.as_tensor(np.array(value)).unsqueeze(0).to(device)
    batch["task"] = [obs.get("task", "")]
    return batch


def observation_shapes(obs: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Feature name -> shape of the `observation.*` entries of one observation."""
    return {k: tuple(np.asarray(v).shape) for k, v in obs.items() if k.startswith("observation.")}
