"""The safety layer: every check on a fake robot whose state the test sets."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from real_robot.keyboard import KeyListener
from real_robot.robot import ActionSpec, Robot
from real_robot.safety import SafetyConfig, SafetyLayer


class FakeRobot(Robot):
    """Records what it is sent; its state is set by the test."""

    name = "fake"
    control_hz = 20.0

    def __init__(self, kind: str = "ee_delta"):
        if kind == "ee_delta":
            self.action_spec = ActionSpec("ee_delta", 7, 7, position_scale=0.03, rotation_scale=0.15)
        elif kind == "joint_delta":
            self.action_spec = ActionSpec("joint_delta", 8, 7, position_scale=0.1)
        else:
            self.action_spec = ActionSpec("joint_position", 8, 7)
        self.joint_limits = np.array([[-1.0, 1.0]] * 7)
        self.state = np.zeros(25, dtype=np.float32)
        self.state[18:21] = (0.0, 0.0, 0.2)
        self.timestamp: float | None = None
        self.sent: list[np.ndarray] = []
        self.holds = 0
        self.connected = False
        self.estop_callback = None

    @property
    def observation_features(self):
        return {"observation.state": (25,)}

    @property
    def is_connected(self):
        return self.connected

    def connect(self):
        self.connected = True

    def disconnect(self):
        self.connected = False

    def get_observation(self):
        return {"observation.state": self.state.copy(), "timestamp": self.timestamp or time.time(), "task": "t"}

    def send_action(self, action):
        self.sent.append(np.asarray(action["action"]))
        return action

    def hold(self):
        self.holds += 1

    def subscribe_estop(self, callback):
        self.estop_callback = callback


def make(kind="ee_delta", **cfg):
    robot = FakeRobot(kind)
    cfg.setdefault("max_command_hz", 1e6)  # the rate limit has its own test
    safety = SafetyLayer(robot, SafetyConfig(**cfg))
    safety.connect()
    safety.get_observation()
    return robot, safety


def reasons(safety, kind=None):
    return [e.reason for e in safety.events if kind is None or e.kind == kind]


def test_safe_action_passes_unchanged():
    robot, safety = make()
    action = np.array([0.1, -0.2, 0.1, 0.0, 0.0, 0.0, 1.0], dtype=np.float32)
    safety.send_action({"action": action})
    np.testing.assert_allclose(robot.sent[-1], action, atol=1e-6)
    assert safety.events == []
    safety.disconnect()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_rejected_and_held(bad):
    robot, safety = make()
    action = np.zeros(7, dtype=np.float32)
    action[2] = bad
    safety.send_action({"action": action})
    assert robot.sent == [] and robot.holds == 1
    assert any("non-finite" in r for r in reasons(safety, "reject"))
    safety.disconnect()


def test_wrong_shape_rejected():
    robot, safety = make()
    safety.send_action({"action": np.zeros(3)})
    assert robot.sent == [] and "action shape" in reasons(safety, "reject")[0]
    safety.disconnect()


def test_workspace_box_clips_tcp_target():
    robot, safety = make(workspace_low=(-0.5, -0.5, 0.19), workspace_high=(0.5, 0.5, 0.6))
    safety.send_action({"action": np.array([0, 0, -1.0, 0, 0, 0, 0], dtype=np.float32)})  # 3 cm down from 0.2
    sent = robot.sent[-1]
    assert sent[2] * 0.03 == pytest.approx(-0.01, abs=1e-6)  # stops at the floor of the box
    assert any("workspace" in r for r in reasons(safety, "clip"))
    safety.disconnect()


def test_tcp_speed_limit():
    robot, safety = make(max_tcp_speed=0.2)  # 0.2 m/s at 20 Hz: 1 cm per step
    safety.send_action({"action": np.array([1.0, 0, 0, 0, 0, 0, 0], dtype=np.float32)})
    assert np.linalg.norm(robot.sent[-1][:3] * 0.03) == pytest.approx(0.01, rel=1e-5)
    assert any("TCP speed" in r for r in reasons(safety, "clip"))
    safety.disconnect()


def test_joint_position_limits():
    robot, safety = make("joint_position", max_joint_velocity=100.0, max_joint_acceleration=1e6)
    robot.state[:7] = 0.95
    safety.get_observation()
    target = np.array([1.2] * 7 + [0.0], dtype=np.float32)
    safety.send_action({"action": target})
    np.testing.assert_allclose(robot.sent[-1][:7], 1.0 - 0.02, atol=1e-6)  # limit minus margin
    assert robot.sent[-1][7] == 0.0  # the gripper is untouched
    assert any("position limits" in r for r in reasons(safety, "clip"))
    safety.disconnect()


def test_joint_velocity_limit_on_deltas():
    robot, safety = make("joint_delta", max_joint_velocity=1.0, max_joint_acceleration=1e6)
    safety.send_action({"action": np.array([1.0] * 7 + [0.0], dtype=np.float32)})  # 0.1 rad/step = 2 rad/s
    np.testing.assert_allclose(robot.sent[-1][:7] * 0.1 * 20.0, 1.0, rtol=1e-5)
    assert any("joint velocity" in r for r in reasons(safety, "clip"))
    safety.disconnect()


def test_joint_acceleration_limit():
    robot, safety = make("joint_delta", max_joint_velocity=10.0, max_joint_acceleration=10.0)
    safety.send_action({"action": np.array([0.25] * 7 + [0.0], dtype=np.float32)})  # +0.5 rad/s from rest
    first = robot.sent[-1][:7] * 0.1 * 20  # the first command has no previous velocity: passes
    np.testing.assert_allclose(first, 0.5, rtol=1e-5)
    safety.send_action({"action": np.array([-0.25] * 7 + [0.0], dtype=np.float32)})  # reverse: -1 rad/s change
    second = robot.sent[-1][:7] * 0.1 * 20
    np.testing.assert_allclose(second, 0.5 - 10.0 / 20.0, atol=1e-5)  # change limited to a_max / hz
    assert any("acceleration" in r for r in reasons(safety, "clip"))
    safety.disconnect()


def test_measured_joint_velocity_holds():
    robot, safety = make(max_joint_velocity=1.0)
    robot.state[9] = 3.0
    safety.get_observation()
    safety.send_action({"action": np.zeros(7, dtype=np.float32)})
    assert robot.sent == [] and robot.holds == 1
    safety.disconnect()


def test_command_rate_limit_drops():
    robot, safety = make(max_command_hz=10.0)
    a = {"action": np.zeros(7, dtype=np.float32)}
    safety.send_action(a)
    safety.send_action(a)  # immediately after: above 10 Hz
    assert len(robot.sent) == 1
    assert reasons(safety, "drop") == ["command rate above 10 Hz"]
    time.sleep(0.11)
    safety.send_action(a)
    assert len(robot.sent) == 2
    safety.disconnect()


def test_stale_observation_rejected():
    robot, safety = make(watchdog_timeout_s=0.05)
    robot.timestamp = time.time() - 0.2
    safety.get_observation()
    safety.send_action({"action": np.zeros(7, dtype=np.float32)})
    assert robot.sent == [] and robot.holds >= 1
    assert "stale observation" in reasons(safety, "reject")[0]
    safety.disconnect()


def test_watchdog_holds_within_bound_when_commands_stop():
    robot, safety = make(watchdog_timeout_s=0.1, watchdog_checks=4)
    before = time.time()
    safety.send_action({"action": np.zeros(7, dtype=np.float32)})
    after = time.time()  # the command's own time lies between these two
    deadline = after + 1.0
    while robot.holds == 0 and time.time() < deadline:
        time.sleep(0.005)
    assert robot.holds == 1
    hold = next(e for e in safety.events if e.kind == "hold")
    assert hold.time - before >= 0.1  # never before the timeout
    assert hold.time - after <= 0.1 * 1.25 + 0.1  # timeout + one poll + thread wake-up on a loaded machine
    assert "watchdog" in hold.reason
    time.sleep(0.3)
    assert robot.holds == 1  # held once, not re-held every poll
    safety.get_observation()
    safety.send_action({"action": np.zeros(7, dtype=np.float32)})  # a fresh command resumes
    assert len(robot.sent) == 2 and reasons(safety, "resume")
    safety.disconnect()


def test_estop_from_api_and_robot_topic():
    robot, safety = make()
    a = {"action": np.zeros(7, dtype=np.float32)}
    safety.estop("operator")
    safety.send_action(a)
    assert robot.sent == [] and robot.holds >= 1
    safety.release_estop()
    safety.send_action(a)
    assert len(robot.sent) == 1
    robot.estop_callback("/embodied/estop")  # the robot's own source (a ROS topic)
    safety.send_action(a)
    assert len(robot.sent) == 1 and safety.estopped
    assert [e.kind for e in safety.events].count("estop") == 2
    safety.disconnect()


def test_estop_from_keyboard():
    robot, safety = make()
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        keys = KeyListener({"e": lambda: safety.estop("keyboard")}, stream=stream, force=True)
        assert keys.start()
        os.write(write_fd, b"xe")
        deadline = time.time() + 2.0
        while not safety.estopped and time.time() < deadline:
            time.sleep(0.01)
        keys.stop()
    os.close(write_fd)
    assert safety.estopped and "keyboard" in reasons(safety, "estop")[0]
    safety.disconnect()


def test_keyboard_listener_inactive_without_tty():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        assert KeyListener({}, stream=stream).start() is False
    os.close(write_fd)


def test_disabled_layer_passes_everything():
    robot, safety = make(enabled=False)
    action = np.array([5.0] * 7, dtype=np.float32)
    safety.send_action({"action": action})
    np.testing.assert_array_equal(robot.sent[-1], action)
    safety.disconnect()


def test_every_intervention_logged(caplog):
    robot, safety = make()
    with caplog.at_level("WARNING", logger="real_robot.safety"):
        safety.send_action({"action": np.full(7, np.nan, dtype=np.float32)})
    assert "non-finite" in caplog.text
    safety.disconnect()
