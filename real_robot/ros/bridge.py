"""`RosRobot`: an arm on a ROS graph behind the `Robot` interface, over any transport (rospy,
rclpy or rosbridge).

Observations come in from topics (joint states, the TCP pose, cameras raw or compressed,
extra float vectors such as an object tracker's), commands go out (end-effector deltas as a
``std_msgs/Float64MultiArray``, or joint positions as a one-point
``trajectory_msgs/JointTrajectory``; the gripper as ``std_msgs/Float64``). Topic names and
message types come from the robot config file (configs/robots/ros_reach.yaml).

``observation.state`` is assembled in `sims`' layout: arm q, finger q, arm qdot, finger qdot,
TCP position, hand quaternion (w, x, y, z).

Every observation is checked: its ``timestamp`` is the OLDEST of its parts (header stamps
where a message has one, arrival time otherwise), so the safety layer's watchdog sees a
camera or joint-state stream that stopped; stamps from the future (clock skew) and streams
slower than half their configured rate are counted in `checks` and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import numpy as np

from real_robot.config import RobotConfig
from real_robot.robot import ActionSpec, Robot, RobotError, hold_gripper_command
from real_robot.ros import messages as m

LOG = logging.getLogger("real_robot.ros")


@dataclasses.dataclass
class TopicConfig:
    topic: str = ""
    type: str = ""
    rate_hz: float = 0.0  # expected publishing rate; 0: not checked


@dataclasses.dataclass
class RosRobotConfig(RobotConfig):
    """An arm on ROS. The defaults match `real_robot.ros.sim_node` (a simulated Panda)."""

    type: str = "ros"
    transport: str = "native"  # native (rclpy under a sourced ROS 2, else rospy) | rospy | rclpy | rosbridge (roslibpy)
    master_uri: str = ""  # rospy: ROS_MASTER_URI ("" keeps the environment's)
    domain_id: int | None = None  # rclpy: ROS_DOMAIN_ID (None keeps the environment's)
    rosbridge_host: str = "127.0.0.1"
    rosbridge_port: int = 9090
    control_hz: float = 20.0
    connect_timeout_s: float = 15.0
    arm_joints: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, 8))
    finger_joints: tuple[str, ...] = ("finger_joint1", "finger_joint2")
    joint_states: TopicConfig = dataclasses.field(default_factory=lambda: TopicConfig("/joint_states", "sensor_msgs/JointState", 20.0))
    ee_pose: TopicConfig | None = dataclasses.field(default_factory=lambda: TopicConfig("/ee_pose", "geometry_msgs/PoseStamped", 20.0))
    cameras: dict[str, TopicConfig] = dataclasses.field(default_factory=dict)  # camera name -> Image / CompressedImage
    vectors: dict[str, TopicConfig] = dataclasses.field(default_factory=dict)  # feature key -> Float64MultiArray
    command_kind: str = "ee_delta"  # ee_delta | joint_position
    command: TopicConfig = dataclasses.field(default_factory=lambda: TopicConfig("/embodied/ee_delta", "std_msgs/Float64MultiArray"))
    gripper: TopicConfig | None = dataclasses.field(default_factory=lambda: TopicConfig("/gripper/command", "std_msgs/Float64"))
    position_scale: float = 0.03  # ee_delta: metres per unit (sims' controller)
    rotation_scale: float = 0.15
    gripper_max_width: float = 0.08
    estop: TopicConfig | None = dataclasses.field(default_factory=lambda: TopicConfig("/embodied/estop", "std_msgs/Bool"))
    reset: TopicConfig | None = None  # std_msgs/Int64 (a simulated arm's episode reset, with its seed)
    episode_status: TopicConfig | None = None  # Float64MultiArray [episode, step, success, done]
    future_tolerance_s: float = 0.05


def make_transport(cfg: RosRobotConfig):
    from real_robot.ros import transport

    return transport.make_transport(cfg.transport, "embodied_robot", master_uri=cfg.master_uri, domain_id=cfg.domain_id,
                                    rosbridge_host=cfg.rosbridge_host, rosbridge_port=cfg.rosbridge_port)


class RosRobot(Robot):
    """See the module docstring."""

    name = "ros"

    def __init__(self, cfg: RosRobotConfig | None = None, transport=None):
        self.cfg = cfg = cfg or RosRobotConfig()
        if cfg.command_kind not in ("ee_delta", "joint_position"):
            raise ValueError(f"Unknown command_kind {cfg.command_kind!r}; valid: ee_delta, joint_position.")
        from real_robot.ros.transport import TRANSPORTS

        if transport is None and cfg.transport not in TRANSPORTS:
            raise ValueError(f"Unknown ROS transport {cfg.transport!r}; valid: {', '.join(TRANSPORTS)}.")
        self.control_hz = cfg.control_hz
        n_arm = len(cfg.arm_joints)
        if cfg.command_kind == "ee_delta":
            self.action_spec = ActionSpec("ee_delta", 7, n_arm, cfg.position_scale, cfg.rotation_scale, gripper=cfg.gripper is not None)
        else:
            self.action_spec = ActionSpec("joint_position", n_arm + (cfg.gripper is not None), n_arm, gripper=cfg.gripper is not None)
        self.transport = transport
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[dict[str, Any], float]] = {}  # stream -> (message, its time)
        self._arrivals: dict[str, list[float]] = {}
        self._status: dict[str, Any] | None = None
        self._estop_callbacks: list = []
        self.checks = {"future_stamp": 0, "slow_rate": 0}
        self._connected = False
        self._last_rate_warning = 0.0

    # ------------------------------------------------------------------ streams
    def _streams(self) -> dict[str, TopicConfig]:
        c = self.cfg
        streams = {"joint_states": c.joint_states}
        if c.ee_pose is not None:
            streams["ee_pose"] = c.ee_pose
        streams.update({f"observation.images.{name}": t for name, t in c.cameras.items()})
        streams.update(c.vectors)
        return streams

    def _receiver(self, stream: str):
        def receive(message: dict[str, Any]) -> None:
            now = time.time()
            stamp = m.stamp_seconds(message)
            with self._lock:
                self._latest[stream] = (message, stamp if stamp else now)
                arrivals = self._arrivals.setdefault(stream, [])
                arrivals.append(now)
                del arrivals[:-20]
        return receive

    # ------------------------------------------------------------------ contract
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        c = self.cfg
        self.transport = self.transport or make_transport(c)
        try:
            self.transport.connect(c.connect_timeout_s)
        except ConnectionError as error:
            raise RobotError(str(error)) from None
        for stream, topic in self._streams().items():
            self.transport.subscribe(topic.topic, topic.type, self._receiver(stream))
        if c.episode_status is not None:
            self.transport.subscribe(c.episode_status.topic, c.episode_status.type, self._on_status)
        if c.estop is not None:
            self.transport.subscribe(c.estop.topic, c.estop.type, self._on_estop)
        for publication in (c.command, c.gripper, c.reset):
            if publication is not None:
                self.transport.advertise(publication.topic, publication.type)
        deadline = time.time() + c.connect_timeout_s
        while time.time() < deadline:
            with self._lock:
                missing = [s for s in self._streams() if s not in self._latest]
            if not missing:
                break
            time.sleep(0.02)
        else:
            self.transport.close()
            raise RobotError(f"No messages on {missing} within {c.connect_timeout_s} s of connecting ({c.transport}).")
        self._connected = True

    @property
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        obs = self.get_observation()
        return {k: tuple(np.asarray(v).shape) for k, v in obs.items() if k.startswith("observation.")}

    def get_observation(self) -> dict[str, Any]:
        if not self._connected and not self._latest:
            raise RobotError("RosRobot is not connected; call connect() first.")
        with self._lock:
            latest = dict(self._latest)
            arrivals = {k: list(v) for k, v in self._arrivals.items()}
        c = self.cfg
        now = time.time()
        message, _ = latest["joint_states"]
        q_arm, v_arm = m.joints_from_state(message, list(c.arm_joints))
        q_finger, v_finger = m.joints_from_state(message, list(c.finger_joints))
        parts = [q_arm, q_finger, v_arm, v_finger]
        if "ee_pose" in latest:
            position, quaternion = m.pose_arrays(latest["ee_pose"][0])
            parts += [position, quaternion]
        obs: dict[str, Any] = {"observation.state": np.concatenate(parts).astype(np.float32)}
        for name in c.cameras:
            obs[f"observation.images.{name}"] = m.image_array(latest[f"observation.images.{name}"][0])
        for key in c.vectors:
            obs[key] = np.asarray(latest[key][0]["data"], dtype=np.float32)
        stamps = {stream: t for stream, (_, t) in latest.items()}
        if any(t > now + c.future_tolerance_s for t in stamps.values()):
            self.checks["future_stamp"] += 1
            LOG.warning("stamps from the future (clock skew?): %s", {k: round(t - now, 3) for k, t in stamps.items() if t > now})
        self._check_rates(arrivals, now)
        obs["timestamp"] = min(min(stamps.values()), now)
        obs["task"] = (self._status or {}).get("task", "")
        return obs

    def _check_rates(self, arrivals: dict[str, list[float]], now: float) -> None:
        slow = []
        for stream, topic in self._streams().items():
            times = arrivals.get(stream, [])
            if topic.rate_hz <= 0 or len(times) < 5:
                continue
            rate = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
            if rate < 0.5 * topic.rate_hz:
                slow.append(f"{topic.topic} {rate:.1f} Hz < {topic.rate_hz:g}/2")
        if slow:
            self.checks["slow_rate"] += 1
            if now - self._last_rate_warning > 1.0:
                LOG.warning("slow streams: %s", ", ".join(slow))
                self._last_rate_warning = now

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        if not self._connected:
            raise RobotError("RosRobot is not connected.")
        value = np.asarray(action["action"], dtype=np.float64).reshape(-1)
        if value.shape != (self.action_spec.dim,) or not np.isfinite(value).all():
            raise ValueError(f"RosRobot needs a finite action of shape ({self.action_spec.dim},); got {value}.")
        self._publish(value)
        return {"action": value.astype(np.float32)}

    def _publish(self, value: np.ndarray) -> None:
        c = self.cfg
        if c.command_kind == "ee_delta":
            arm = value[:6] if c.gripper is not None else value
            self.transport.publish(c.command.topic, c.command.type, m.float_array(arm))
        else:
            n = len(c.arm_joints)
            point = {"positions": [float(v) for v in value[:n]], "velocities": [], "accelerations": [], "effort": [],
                     "time_from_start": {"secs": 0, "nsecs": int(1e9 / c.control_hz)}}
            trajectory = {"header": m.header(), "joint_names": list(c.arm_joints), "points": [point]}
            self.transport.publish(c.command.topic, c.command.type, trajectory)
        if c.gripper is not None:
            self.transport.publish(c.gripper.topic, c.gripper.type, {"data": float(value[-1])})

    def hold_action(self) -> np.ndarray:
        action = np.zeros(self.action_spec.dim, dtype=np.float32)
        with self._lock:
            joints = self._latest.get("joint_states")
        if joints is None:
            return action
        state = joints[0]
        if self.cfg.command_kind == "joint_position":
            q, _ = m.joints_from_state(state, list(self.cfg.arm_joints))
            action[: len(q)] = q
        if self.action_spec.gripper:
            fingers, _ = m.joints_from_state(state, list(self.cfg.finger_joints))
            action[-1] = hold_gripper_command(float(fingers.sum()), self.cfg.gripper_max_width)
        return action

    def hold(self) -> None:
        if self._connected:
            try:
                self._publish(self.hold_action().astype(np.float64))
            except Exception as error:  # noqa: BLE001 - holding never raises
                LOG.error("hold failed: %s", error)

    def disconnect(self) -> None:
        if self._connected:
            self.hold()
            time.sleep(0.05)  # let the hold go out before the publishers close
            self.transport.close()
            self._connected = False

    # ------------------------------------------------------------------ episodes and e-stop
    def _on_status(self, message: dict[str, Any]) -> None:
        data = message.get("data") or []
        if len(data) >= 4:
            self._status = {"episode": int(data[0]), "step": int(data[1]), "success": bool(data[2]), "done": bool(data[3])}

    def _on_estop(self, message: dict[str, Any]) -> None:
        if message.get("data"):
            assert self.cfg.estop is not None  # subscribed only when configured
            for callback in self._estop_callbacks:
                callback(self.cfg.estop.topic)

    def subscribe_estop(self, callback) -> None:
        self._estop_callbacks.append(callback)

    def reset_episode(self, seed: int | None = None) -> None:
        c = self.cfg
        if c.reset is None:
            return
        previous = (self._status or {}).get("episode", -1)
        deadline = time.time() + 5.0
        while time.time() < deadline:  # re-sent until the node reports the new episode
            self.transport.publish(c.reset.topic, c.reset.type, {"data": int(seed or 0)})
            until = time.time() + 0.5
            while time.time() < until:
                status = self._status or {}
                if status.get("episode", -1) != previous and not status.get("done") and status.get("step") == 0:
                    with self._lock:  # observations from before the reset are not this episode's
                        self._latest.clear()
                    self._wait_fresh()
                    return
                time.sleep(0.01)
        raise RobotError(f"The robot did not report a new episode within 5 s of a reset on {c.reset.topic}.")

    def _wait_fresh(self, timeout_s: float = 2.0) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self._lock:
                if all(stream in self._latest for stream in self._streams()):
                    return
            time.sleep(0.005)
        raise RobotError(f"No fresh observation within {timeout_s} s of the episode reset.")

    def episode_status(self) -> dict[str, bool]:
        if self.cfg.episode_status is None or self._status is None:
            return {} if self.cfg.episode_status is None else {"success": False, "done": False}
        return {"success": self._status["success"], "done": self._status["done"]}
