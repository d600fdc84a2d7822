"""SimRobot: one env of the suite behind the Robot interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from real_robot.robot import RobotError, to_policy_batch
from real_robot.sim_robot import SimRobot, SimRobotConfig


def test_features_and_lifecycle():
    robot = SimRobot(SimRobotConfig(task="Reach"))
    with pytest.raises(RobotError):
        robot.get_observation()
    with robot:
        features = robot.observation_features
        assert features["observation.state"] == (25,)
        assert features["observation.environment_state"] == (6,)
        assert robot.action_features == {"action": (7,)}
        obs = robot.get_observation()
        assert obs["observation.state"].dtype == np.float32 and isinstance(obs["task"], str)
        assert "timestamp" in obs
        batch = to_policy_batch(obs)
        assert batch["observation.state"].shape == (1, 25) and batch["task"] == [obs["task"]]
    assert not robot.is_connected


def test_actions_move_the_arm_and_hold_action_keeps_it():
    with SimRobot(SimRobotConfig(task="Reach")) as robot:
        tcp0 = robot.get_observation()["observation.state"][18:21].copy()
        for _ in range(3):
            robot.send_action({"action": np.array([1.0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)})
        tcp1 = robot.get_observation()["observation.state"][18:21].copy()
        assert tcp1[0] - tcp0[0] > 0.04
        for _ in range(5):
            robot.send_action({"action": robot.hold_action()})
        tcp2 = robot.get_observation()["observation.state"][18:21]
        assert np.linalg.norm(tcp2 - tcp1) < 0.03  # settles where it was commanded
        with pytest.raises(ValueError, match="non-finite"):
            robot.send_action({"action": np.full(7, np.nan, dtype=np.float32)})


def test_expert_succeeds_through_the_robot_and_episode_ends():
    with SimRobot(SimRobotConfig(task="Reach", seed=3)) as robot:
        expert = robot.env.task.expert()
        for _ in range(50):
            robot.send_action({"action": expert.act(None)[0].numpy()})
            if robot.episode_status()["done"]:
                break
        assert robot.episode_status() == {"success": True, "done": True}
        steps = robot.steps
        robot.send_action({"action": np.zeros(7, dtype=np.float32)})  # ignored after the end
        assert robot.steps == steps
        robot.reset_episode(seed=4)
        assert robot.episode_status() == {"success": False, "done": False}


def test_cameras():
    with SimRobot(SimRobotConfig(task="Reach", cameras=("front",), image_size=32)) as robot:
        image = robot.get_observation()["observation.images.front"]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert torch.as_tensor(image).float().std() > 0
