"""A simulated arm as a ROS node: one env of the task suite that publishes and subscribes as
a real arm's driver would, so that `embodied deploy` runs end to end against it.

    python -m real_robot.ros.sim_node --task Reach [--hz 20] [--cameras front [--compressed]]
        [--controller ee_delta|joint_delta] [--transport native|rospy|rclpy]

At `hz`, the node publishes

    /joint_states                  sensor_msgs/JointState      arm + finger joints (stamped)
    /ee_pose                       geometry_msgs/PoseStamped   TCP position, hand orientation
    /embodied/environment_state    std_msgs/Float64MultiArray  the task's object / goal state
    /camera/<name>/image_raw       sensor_msgs/Image           (or .../compressed, PNG)
    /embodied/episode              std_msgs/Float64MultiArray  [episode, step, success, done]

and subscribes to

    /embodied/ee_delta             std_msgs/Float64MultiArray  6 normalised TCP deltas (sims' ee_delta)
  or, with --controller joint_delta, a position-controlled arm's command:
    /embodied/joint_command        trajectory_msgs/JointTrajectory  absolute arm joint targets (its
                                   last point), reached at sims' joint_delta rate (0.1 rad/step)
    /gripper/command               std_msgs/Float64            -1 closed .. +1 open
    /embodied/reset                std_msgs/Int64              start a new episode with this seed

Each command moves the arm for one control period, once; a tick without a new command holds
the arm (zero motion, gripper unchanged) and does not count towards the task's step limit.
So a command stream that stops, or arrives late, holds the arm, like a real driver's
watchdog. After success or the step limit the arm holds until the next reset.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time

import numpy as np

from real_robot.ros import messages as m

ARM_JOINTS = [f"joint{i}" for i in range(1, 8)]
FINGER_JOINTS = ["finger_joint1", "finger_joint2"]


class SimArmNode:
    """The node's state and its tick; the transport is any `real_robot.ros.transport.Transport`."""

    def __init__(self, transport, task: str = "Reach", hz: float = 20.0, cameras: tuple[str, ...] = (),
                 compressed: bool = False, seed: int = 0, controller: str = "ee_delta"):
        from real_robot.sim_robot import SimRobot, SimRobotConfig

        if controller not in ("ee_delta", "joint_delta"):
            raise ValueError(f"Unknown controller {controller!r}; valid: ee_delta, joint_delta.")
        self.transport, self.hz, self.cameras, self.compressed = transport, hz, cameras, compressed
        self.controller = controller
        self.robot = SimRobot(SimRobotConfig(task=task, control_hz=hz, cameras=cameras, seed=seed, controller=controller))
        self.robot.connect()
        self.episode = 0
        self._lock = threading.Lock()
        self._command: np.ndarray | None = None
        self._gripper: float | None = None
        self._reset_seed: int | None = None
        self.commands_applied = 0

    def start(self) -> None:
        t = self.transport
        if self.controller == "ee_delta":
            t.subscribe("/embodied/ee_delta", "std_msgs/Float64MultiArray", self._on_command)
        else:
            t.subscribe("/embodied/joint_command", "trajectory_msgs/JointTrajectory", self._on_joint_command)
        t.subscribe("/gripper/command", "std_msgs/Float64", self._on_gripper)
        t.subscribe("/embodied/reset", "std_msgs/Int64", self._on_reset)
        for topic, kind in self._publications():
            t.advertise(topic, kind)

    def _publications(self):
        yield "/joint_states", "sensor_msgs/JointState"
        yield "/ee_pose", "geometry_msgs/PoseStamped"
        yield "/embodied/environment_state", "std_msgs/Float64MultiArray"
        yield "/embodied/episode", "std_msgs/Float64MultiArray"
        for camera in self.cameras:
            yield self.camera_topic(camera), "sensor_msgs/CompressedImage" if self.compressed else "sensor_msgs/Image"

    def camera_topic(self, camera: str) -> str:
        return f"/camera/{camera}/image_raw" + ("/compressed" if self.compressed else "")

    def _on_command(self, message) -> None:
        data = np.asarray(message.get("data") or [], dtype=np.float32)
        if data.shape == (6,) and np.isfinite(data).all():
            with self._lock:
                self._command = data

    def _on_joint_command(self, message) -> None:
        """A JointTrajectory's last point, as absolute targets of the arm joints (any order)."""
        points = message.get("points") or []
        names = list(message.get("joint_names") or [])
        if not points or sorted(names) != sorted(ARM_JOINTS):
            return
        positions = points[-1].get("positions") or []
        if len(positions) != len(names):
            return
        goal = np.asarray([positions[names.index(joint)] for joint in ARM_JOINTS], dtype=np.float64)
        if np.isfinite(goal).all():
            with self._lock:
                self._command = goal

    def _joint_deltas(self, goal: np.ndarray) -> np.ndarray:
        """sims' joint_delta action that moves the servo targets towards `goal`, at most 0.1 rad."""
        from sims.mujoco.controllers import JointDeltaController

        targets = np.asarray(self.robot._env().ctrl[0, :7], dtype=np.float64)
        return np.clip((goal - targets) / JointDeltaController.scale, -1.0, 1.0).astype(np.float32)

    def _on_gripper(self, message) -> None:
        value = message.get("data")
        if isinstance(value, (int, float)) and np.isfinite(value):
            with self._lock:
                self._gripper = float(value)

    def _on_reset(self, message) -> None:
        with self._lock:
            self._reset_seed = int(message.get("data", 0))

    def tick(self) -> None:
        """One control period: reset if asked, apply the newest command once (or hold), publish."""
        robot = self.robot
        with self._lock:
            command, self._command = self._command, None
            gripper = self._gripper
            seed, self._reset_seed = self._reset_seed, None
        if seed is not None:
            robot.reset_episode(seed)
            self.episode += 1
            command = None
        elif not robot.episode_status()["done"]:
            action = robot.hold_action()
            if command is not None:
                if self.controller == "ee_delta":
                    action[:6] = command
                else:
                    action[:7] = self._joint_deltas(command)
                self.commands_applied += 1
            if gripper is not None:
                action[-1] = gripper
            robot.send_action({"action": action})
            if command is None and not robot.episode_status()["done"]:  # holding is not a task step
                robot._env().elapsed_steps -= 1
                robot.steps -= 1
        self.publish()

    def publish(self) -> None:
        obs = self.robot.get_observation()
        state = obs["observation.state"]
        now = time.time()
        t = self.transport
        t.publish("/joint_states", "sensor_msgs/JointState",
                  m.joint_state(ARM_JOINTS + FINGER_JOINTS, state[0:9], state[9:18], now))
        t.publish("/ee_pose", "geometry_msgs/PoseStamped", m.pose_stamped(state[18:21], state[21:25], "world", now))
        t.publish("/embodied/environment_state", "std_msgs/Float64MultiArray", m.float_array(obs["observation.environment_state"]))
        for camera in self.cameras:
            kind = "sensor_msgs/CompressedImage" if self.compressed else "sensor_msgs/Image"
            t.publish(self.camera_topic(camera), kind, m.image_message(obs[f"observation.images.{camera}"], self.compressed, camera, now))
        status = self.robot.episode_status()
        t.publish("/embodied/episode", "std_msgs/Float64MultiArray",
                  m.float_array([self.episode, self.robot.steps, float(status["success"]), float(status["done"])]))

    def spin(self, stop: threading.Event | None = None) -> None:
        period = 1.0 / self.hz
        next_tick = time.perf_counter()
        while stop is None or not stop.is_set():
            self.tick()
            next_tick += period
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A simulated arm (one task of the suite) as a ROS node.")
    parser.add_argument("--task", default="Reach")
    parser.add_argument("--hz", type=float, default=20.0)
    parser.add_argument("--cameras", nargs="*", default=[])
    parser.add_argument("--compressed", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--controller", choices=("ee_delta", "joint_delta"), default="ee_delta")
    parser.add_argument("--transport", choices=("native", "rospy", "rclpy"), default="native",
                        help="native: rclpy under a sourced ROS 2 (ROS_VERSION=2), rospy otherwise")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    torch.set_num_threads(1)
    from real_robot.ros.transport import make_transport

    transport = make_transport(args.transport, "embodied_sim_arm")
    transport.connect()
    node = SimArmNode(transport, args.task, args.hz, tuple(args.cameras), args.compressed, args.seed, args.controller)
    node.start()
    print(f"sim arm node up: {args.task} at {args.hz:g} Hz", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        node.spin()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
