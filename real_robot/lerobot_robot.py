"""LeRobot's own robots (SO-100/101, Koch, ...) behind our `Robot`, so `embodied deploy` and the
safety layer drive them too.

LeRobot robots name one float per motor (``"shoulder_pan.pos"``) and one image per camera
(``"front"``); datasets and policies use ``observation.state`` (the motor values in
`observation_features` order), ``observation.images.<camera>`` and ``action`` (the ``.pos``
targets in `action_features` order). This adapter translates both ways. Actions are absolute
joint targets in the robot's own units (``joint_position``); set the safety layer's joint
limits in those units.

Tested against a LeRobot-shaped fake; untested on hardware here.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any

import numpy as np

from real_robot.config import RobotConfig
from real_robot.robot import ActionSpec, Robot, StateLayout


@dataclasses.dataclass
class LeRobotRobotConfig(RobotConfig):
    """A LeRobot robot by its config type (``so101_follower``) and that config's fields."""

    type: str = "lerobot"
    robot_type: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. {port: /dev/ttyACM0, id: arm}
    control_hz: float = 30.0
    calibrate: bool = False


def make_lerobot_robot(cfg: LeRobotRobotConfig):
    """LeRobot's robot for `cfg` (its own registry and factory)."""
    from lerobot.robots.config import RobotConfig as LeRobotConfig
    from lerobot.robots.utils import make_robot_from_config

    if cfg.robot_type not in LeRobotConfig.get_known_choices():
        for module in (f"lerobot.robots.{cfg.robot_type}", f"lerobot.robots.{cfg.robot_type.rsplit('_', 1)[0]}"):
            try:
                importlib.import_module(module)
                break
            except ImportError:
                continue
    choices = LeRobotConfig.get_known_choices()
    if cfg.robot_type not in choices:
        raise ValueError(f"Unknown LeRobot robot type {cfg.robot_type!r}; known after import: {', '.join(choices) or 'none'}.")
    return make_robot_from_config(LeRobotConfig.get_choice_class(cfg.robot_type)(**cfg.options))


class LeRobotRobot(Robot):
    """Wraps a LeRobot `Robot` instance (anything with its interface)."""

    name = "lerobot"

    def __init__(self, robot, control_hz: float = 30.0, calibrate: bool = False):
        self.robot = robot
        self.control_hz = control_hz
        self.calibrate = calibrate
        features = robot.observation_features
        self.state_keys = [k for k, v in features.items() if not isinstance(v, tuple)]
        self.cameras = [k for k, v in features.items() if isinstance(v, tuple)]
        self.action_keys = list(robot.action_features)
        n = len(self.action_keys)
        self.action_spec = ActionSpec("joint_position", n, n, gripper=False)
        positions = [i for i, k in enumerate(self.state_keys) if k in self.action_keys]
        self.state_layout = StateLayout(joint_positions=(0, n) if positions == list(range(n)) else (0, 0),
                                        joint_velocities=(0, 0), tcp_position=None)
        self._last: dict[str, Any] | None = None

    @property
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        features: dict[str, tuple[int, ...]] = {"observation.state": (len(self.state_keys),)}
        features.update({f"observation.images.{c}": tuple(self.robot.observation_features[c]) for c in self.cameras})
        return features

    @property
    def is_connected(self) -> bool:
        return bool(self.robot.is_connected)

    def connect(self) -> None:
        self.robot.connect(calibrate=self.calibrate)

    def get_observation(self) -> dict[str, Any]:
        raw = self.robot.get_observation()
        obs: dict[str, Any] = {"observation.state": np.array([raw[k] for k in self.state_keys], dtype=np.float32)}
        for camera in self.cameras:
            obs[f"observation.images.{camera}"] = np.asarray(raw[camera])
        obs["timestamp"] = time.time()
        obs["task"] = ""
        self._last = obs
        return obs

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        value = np.asarray(action["action"], dtype=np.float64).reshape(-1)
        if value.shape != (len(self.action_keys),):
            raise ValueError(f"{self.robot.__class__.__name__} takes {len(self.action_keys)} targets {self.action_keys}; got {value.shape}.")
        sent = self.robot.send_action({k: float(v) for k, v in zip(self.action_keys, value, strict=True)})
        return {"action": np.array([sent[k] for k in self.action_keys], dtype=np.float32)}

    def hold_action(self) -> np.ndarray:
        """The current positions as targets (the motors that are also state entries)."""
        last = self._last if self._last is not None else self.get_observation()
        state = dict(zip(self.state_keys, last["observation.state"], strict=True))
        return np.array([state.get(k, 0.0) for k in self.action_keys], dtype=np.float32)

    def hold(self) -> None:
        if self.is_connected:
            self.robot.send_action({k: float(v) for k, v in zip(self.action_keys, self.hold_action(), strict=True)})

    def disconnect(self) -> None:
        if self.is_connected:
            self.hold()
            self.robot.disconnect()
