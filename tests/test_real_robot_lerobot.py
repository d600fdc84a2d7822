"""LeRobot's robots behind our Robot: feature translation, safety, deploy (on a LeRobot-shaped fake)."""

from __future__ import annotations

import numpy as np
import pytest

from real_robot.lerobot_robot import LeRobotRobot
from real_robot.safety import SafetyConfig, SafetyLayer

MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


class FakeSO101:
    """LeRobot's Robot interface: per-motor '.pos' floats and camera images by name."""

    def __init__(self):
        self.positions = {m: 0.0 for m in MOTORS}
        self.connected = False
        self.sent = []

    @property
    def observation_features(self):
        return {**{f"{m}.pos": float for m in MOTORS}, "front": (4, 5, 3)}

    @property
    def action_features(self):
        return {f"{m}.pos": float for m in MOTORS}

    @property
    def is_connected(self):
        return self.connected

    def connect(self, calibrate=True):
        self.connected = True

    def get_observation(self):
        return {**{f"{m}.pos": self.positions[m] for m in MOTORS}, "front": np.zeros((4, 5, 3), np.uint8)}

    def send_action(self, action):
        self.sent.append(dict(action))
        for key, value in action.items():
            self.positions[key.removesuffix(".pos")] = value
        return action

    def disconnect(self):
        self.connected = False


def test_features_translate_to_dataset_names():
    robot = LeRobotRobot(FakeSO101())
    robot.connect()
    assert robot.observation_features == {"observation.state": (6,), "observation.images.front": (4, 5, 3)}
    assert robot.action_features == {"action": (6,)}
    robot.send_action({"action": np.arange(6, dtype=np.float32)})
    assert robot.robot.sent[-1] == {f"{m}.pos": float(i) for i, m in enumerate(MOTORS)}
    obs = robot.get_observation()
    assert obs["observation.state"].tolist() == list(range(6)) and obs["observation.images.front"].shape == (4, 5, 3)
    np.testing.assert_array_equal(robot.hold_action(), np.arange(6))
    with pytest.raises(ValueError, match="takes 6 targets"):
        robot.send_action({"action": np.zeros(3)})


def test_safety_limits_apply_in_the_robots_units():
    fake = FakeSO101()
    robot = SafetyLayer(LeRobotRobot(fake), SafetyConfig(
        joint_position_low=(-90.0,) * 6, joint_position_high=(90.0,) * 6, joint_limit_margin=0.0,
        max_joint_velocity=600.0, max_joint_acceleration=1e9, max_command_hz=1e6,
    ))
    robot.connect()
    robot.get_observation()
    robot.send_action({"action": np.full(6, 200.0, dtype=np.float32)})  # 200 units in one 30 Hz tick: 6000 units/s
    assert fake.sent[-1]["elbow_flex.pos"] == pytest.approx(20.0)  # 600 units/s at 30 Hz: 20 per tick
    fake.positions = {m: 85.0 for m in MOTORS}
    robot.get_observation()
    robot.send_action({"action": np.full(6, 100.0, dtype=np.float32)})
    assert fake.sent[-1]["elbow_flex.pos"] == pytest.approx(90.0)  # the position limit
    assert {e.reason.split(" ")[0] for e in robot.events if e.kind == "clip"} == {"joint"}
    robot.disconnect()
    assert not fake.connected
