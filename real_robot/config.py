"""Robot config files: which robot, and its safety limits.

    # configs/robots/sim_reach.yaml
    robot:
      type: sim          # sim | ros | lerobot
      task: Reach
    safety:
      watchdog_timeout_s: 0.2

`load_robot(path)` builds the robot wrapped in its `SafetyLayer` (on unless
``safety.enabled: false``).
"""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path
from typing import ClassVar

from real_robot.safety import SafetyConfig, SafetyLayer


@dataclasses.dataclass
class RobotConfig:
    """Base of the robot configs; `type` picks the class."""

    variant_key: ClassVar[str] = "type"
    default_variant: ClassVar[str] = "sim"
    type: str = ""

    @staticmethod
    def variants() -> dict[str, builtins.type[RobotConfig]]:
        from real_robot.lerobot_robot import LeRobotRobotConfig
        from real_robot.sim_robot import SimRobotConfig

        variants: dict[str, type[RobotConfig]] = {
            "sim": SimRobotConfig, "lerobot": LeRobotRobotConfig,
        }
        try:
            from real_robot.ros.bridge import RosRobotConfig

            variants["ros"] = RosRobotConfig
        except ImportError:  # the ROS bridge module is optional
            pass
        return variants


@dataclasses.dataclass
class RobotFile:
    """A robot config file: the robot and its safety layer."""

    robot: RobotConfig = dataclasses.field(default_factory=RobotConfig)
    safety: SafetyConfig = dataclasses.field(default_factory=SafetyConfig)


def _config_as[C: RobotConfig](cfg: RobotConfig, cls: type[C]) -> C:
    """`cfg` as the config class its `type` names (`load_config` builds that class)."""
    if not isinstance(cfg, cls):
        raise TypeError(
            f"Robot type {cfg.type!r} needs a {cls.__name__}; got a {type(cfg).__name__}."
        )
    return cfg


def build_robot(cfg: RobotConfig):
    """The robot a config describes (not yet connected)."""
    if cfg.type == "sim":
        from real_robot.sim_robot import SimRobot, SimRobotConfig

        return SimRobot(_config_as(cfg, SimRobotConfig))
    if cfg.type == "ros":
        from real_robot.ros.bridge import RosRobot, RosRobotConfig

        return RosRobot(_config_as(cfg, RosRobotConfig))
    if cfg.type == "lerobot":
        from real_robot.lerobot_robot import LeRobotRobot, LeRobotRobotConfig, make_lerobot_robot

        robot_cfg = _config_as(cfg, LeRobotRobotConfig)
        return LeRobotRobot(make_lerobot_robot(robot_cfg), robot_cfg.control_hz, robot_cfg.calibrate)
    raise ValueError(f"Unknown robot type {cfg.type!r}; valid: {', '.join(RobotConfig.variants())}.")


def load_robot(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SafetyLayer:
    """The robot of a config file behind its safety layer (not yet connected)."""
    from embodied.config import load_config

    cfg = load_config(RobotFile, path, overrides)
    if not cfg.robot.type:
        cfg.robot = dataclasses.replace(cfg.robot, type=RobotConfig.default_variant)
    return SafetyLayer(build_robot(cfg.robot), cfg.safety)
