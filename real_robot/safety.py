"""The safety layer: a `Robot` that wraps every robot, on by default.

Every command passes these checks, in order; each intervention is logged (logger
``real_robot.safety``) and kept in `SafetyLayer.events` with its reason:

1. **e-stop** (from the API, the keyboard, or the robot's own source such as a ROS topic):
   every command is refused and the robot held until `release_estop`.
2. **non-finite** actions (NaN / inf) are refused; the robot is held.
3. **stale observations**: when the latest observation is older than `watchdog_timeout_s`
   (a camera or the joint states stopped), the command is refused and the robot held.
4. **command rate**: a command sooner than ``1 / max_command_hz`` after the previous one
   is dropped.
5. **limits**, which clip the command (the clipped action is sent):
   joint position (targets kept `joint_limit_margin` inside the limits), joint velocity and
   joint acceleration of the commanded motion (joint actions); TCP workspace box and TCP speed
   (end-effector actions), and measured joint velocities beyond the limit hold the robot.

A watchdog thread holds the robot when no command has come for `watchdog_timeout_s` (the
runner stalled, the policy server died, the client went away): the hold comes within
``watchdog_timeout_s * (1 + 1 / watchdog_checks)`` of the last command. The next command
resumes control.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from real_robot.robot import ActionSpec, Robot

LOG = logging.getLogger("real_robot.safety")


@dataclasses.dataclass
class SafetyConfig:
    """Limits of the safety layer. Joint limits default to the robot's own."""

    enabled: bool = True
    watchdog_timeout_s: float = 0.2  # hold when observations or commands are older than this
    watchdog_checks: int = 4  # watchdog polls per timeout
    max_command_hz: float | None = None  # None: 2x the robot's control rate
    joint_position_low: tuple[float, ...] | None = None
    joint_position_high: tuple[float, ...] | None = None
    joint_limit_margin: float = 0.02  # radians kept clear of the joint limits
    max_joint_velocity: float = 2.0  # rad/s, commanded (joint actions) and measured (all)
    max_joint_acceleration: float = 40.0  # rad/s^2, commanded (joint actions)
    workspace_low: tuple[float, float, float] = (-0.45, -0.5, 0.0)  # TCP box, metres (world frame)
    workspace_high: tuple[float, float, float] = (0.35, 0.5, 0.6)
    max_tcp_speed: float = 1.2  # m/s of commanded TCP translation (end-effector actions)


@dataclasses.dataclass
class SafetyEvent:
    """One intervention of the safety layer."""

    time: float  # wall clock, seconds
    kind: str  # "clip" | "reject" | "drop" | "hold" | "estop" | "resume"
    reason: str


class SafetyLayer(Robot):
    """Wraps `robot`; the deployment runner only ever talks to this."""

    def __init__(self, robot: Robot, cfg: SafetyConfig | None = None, clock: Callable[[], float] = time.time):
        self.robot = robot
        self.cfg = cfg or SafetyConfig()
        self.clock = clock
        self.name = f"safe:{robot.name}"
        self.events: list[SafetyEvent] = []
        self.estopped = False
        self.held = False
        self._lock = threading.RLock()
        self._last_command_time: float | None = None
        self._last_obs: dict[str, Any] | None = None
        self._previous_velocity: np.ndarray | None = None  # commanded joint velocity (J,)
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self._listeners: list[Callable[[SafetyEvent], None]] = []
        self.rate_limit = True  # off only for a simulated robot stepped faster than real time

    # ------------------------------------------------------------------ delegation
    @property
    def control_hz(self) -> float:  # type: ignore[override]
        return self.robot.control_hz

    @property
    def action_spec(self) -> ActionSpec:  # type: ignore[override]
        return self.robot.action_spec

    @property
    def observation_features(self) -> dict[str, tuple[int, ...]]:
        return self.robot.observation_features

    @property
    def action_features(self) -> dict[str, tuple[int, ...]]:
        return self.robot.action_features

    @property
    def is_connected(self) -> bool:
        return self.robot.is_connected

    def reset_episode(self, seed: int | None = None) -> None:
        with self._lock:
            self.robot.reset_episode(seed)
            self._previous_velocity = None
            self._last_command_time = None

    def episode_status(self) -> dict[str, bool]:
        return self.robot.episode_status()

    def hold_action(self) -> np.ndarray:
        return self.robot.hold_action()

    def on_event(self, listener: Callable[[SafetyEvent], None]) -> None:
        """Call `listener(event)` on every intervention (the console display counts them)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        self.robot.connect()
        self.robot.subscribe_estop(lambda reason: self.estop(f"robot: {reason}"))
        if self.cfg.enabled and self._watchdog is None:
            self._stop.clear()
            self._watchdog = threading.Thread(target=self._watch, name="safety-watchdog", daemon=True)
            self._watchdog.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=2.0)
            self._watchdog = None
        if self.robot.is_connected:
            self.hold("disconnect")
            self.robot.disconnect()

    # ------------------------------------------------------------------ e-stop
    def estop(self, reason: str = "api") -> None:
        """Stop now: hold the robot and refuse every command until `release_estop`."""
        with self._lock:
            self.estopped = True
            self._log("estop", reason)
            self._hold_robot()

    def release_estop(self) -> None:
        with self._lock:
            if self.estopped:
                self.estopped = False
                self._log("resume", "e-stop released")

    # ------------------------------------------------------------------ observations
    def get_observation(self) -> dict[str, Any]:
        obs = self.robot.get_observation()
        with self._lock:
            self._last_obs = obs
        if self.cfg.enabled:
            state = obs.get("observation.state")
            if state is not None and not np.isfinite(state).all():
                self.hold("non-finite observation.state")
        return obs

    # ------------------------------------------------------------------ commands
    def hold(self, reason: str = "requested") -> None:
        """Hold the robot (logged with `reason`)."""
        with self._lock:
            self._log("hold", reason)
            self._hold_robot()

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        if not self.cfg.enabled:
            return self.robot.send_action(action)
        with self._lock:
            now = self.clock()
            if self.estopped:
                self._reject("e-stop active")
                return {"action": self.robot.hold_action()}
            value = np.asarray(action.get("action"), dtype=np.float64).reshape(-1)
            spec = self.robot.action_spec
            if value.shape != (spec.dim,):
                self._reject(f"action shape {value.shape}, expected ({spec.dim},)")
                return {"action": self.robot.hold_action()}
            if not np.isfinite(value).all():
                self._reject("non-finite action (NaN/inf)")
                return {"action": self.robot.hold_action()}
            obs = self._last_obs
            if obs is None:
                self._reject("no observation read yet")
                return {"action": self.robot.hold_action()}
            age = now - float(obs.get("timestamp", now))
            if age > self.cfg.watchdog_timeout_s:
                self._reject(f"stale observation ({age * 1000:.0f} ms > {self.cfg.watchdog_timeout_s * 1000:.0f} ms)")
                return {"action": self.robot.hold_action()}
            max_hz = self.cfg.max_command_hz or 2.0 * self.robot.control_hz
            if self.rate_limit and self._last_command_time is not None and now - self._last_command_time < 1.0 / max_hz:
                self._log("drop", f"command rate above {max_hz:g} Hz")
                return {"action": self.robot.hold_action()}
            state = np.asarray(obs["observation.state"], dtype=np.float64)
            measured = np.abs(self.robot.state_layout.velocities(state))
            if measured.size and measured.max() > self.cfg.max_joint_velocity:
                self._reject(f"measured joint velocity {measured.max():.2f} rad/s > {self.cfg.max_joint_velocity}")
                return {"action": self.robot.hold_action()}
            value = self._limit(value, state)
            if self.held:
                self._log("resume", "fresh command")
                self.held = False
            sent = self.robot.send_action({"action": value.astype(np.float32)})
            self._last_command_time = now
            return sent

    # ------------------------------------------------------------------ limits
    def _joint_bounds(self, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = joints.shape[0]
        low = np.full(n, -np.inf)
        high = np.full(n, np.inf)
        if self.robot.joint_limits is not None:
            low, high = self.robot.joint_limits[:n, 0].astype(float), self.robot.joint_limits[:n, 1].astype(float)
        if self.cfg.joint_position_low is not None:
            low = np.asarray(self.cfg.joint_position_low, dtype=float)[:n]
        if self.cfg.joint_position_high is not None:
            high = np.asarray(self.cfg.joint_position_high, dtype=float)[:n]
        return low + self.cfg.joint_limit_margin, high - self.cfg.joint_limit_margin

    def _limit(self, value: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The command clipped to every limit; each clip logged."""
        spec, layout, cfg = self.robot.action_spec, self.robot.state_layout, self.cfg
        hz = self.robot.control_hz
        value = value.copy()
        if spec.kind in ("ee_delta", "joint_delta"):
            # the controllers' own range (they clip too; Gaussian policies' means often exceed it):
            # not an intervention, so not logged
            value = np.clip(value, -1.0, 1.0)
        if spec.kind == "ee_delta":
            delta = value[:3] * spec.position_scale
            tcp = layout.tcp(state)
            if tcp is not None:
                target = tcp + delta
                inside = np.clip(target, cfg.workspace_low, cfg.workspace_high)
                if not np.allclose(inside, target):
                    self._log("clip", f"TCP target {np.round(target, 3).tolist()} outside the workspace box")
                    delta = inside - tcp
            speed = np.linalg.norm(delta) * hz
            if speed > cfg.max_tcp_speed:
                self._log("clip", f"TCP speed {speed:.2f} m/s > {cfg.max_tcp_speed}")
                delta = delta * (cfg.max_tcp_speed / speed)
            value[:3] = delta / spec.position_scale
            return value
        joints = layout.joints(state)[: spec.num_joints]
        low, high = self._joint_bounds(joints)
        if spec.kind == "joint_delta":
            delta = value[: spec.num_joints] * spec.position_scale
        else:
            delta = value[: spec.num_joints] - joints
        velocity = delta * hz
        limit = cfg.max_joint_velocity
        if np.abs(velocity).max() > limit:
            self._log("clip", f"joint velocity {np.abs(velocity).max():.2f} rad/s > {limit}")
            velocity = np.clip(velocity, -limit, limit)
        if self._previous_velocity is not None:
            change = velocity - self._previous_velocity
            max_change = cfg.max_joint_acceleration / hz
            if np.abs(change).max() > max_change:
                self._log("clip", f"joint acceleration {np.abs(change).max() * hz:.1f} rad/s^2 > {cfg.max_joint_acceleration}")
                velocity = self._previous_velocity + np.clip(change, -max_change, max_change)
        target = joints + velocity / hz
        bounded = np.clip(target, low, high)
        if not np.allclose(bounded, target):
            self._log("clip", f"joint targets beyond the position limits (joints {np.nonzero(~np.isclose(bounded, target))[0].tolist()})")
            target = bounded
        delta = target - joints
        self._previous_velocity = delta * hz
        if spec.kind == "joint_delta":
            value[: spec.num_joints] = delta / spec.position_scale
        else:
            value[: spec.num_joints] = target
        return value

    # ------------------------------------------------------------------ internals
    def _reject(self, reason: str) -> None:
        self._log("reject", reason)
        self._hold_robot()

    def _hold_robot(self) -> None:
        self.held = True
        self._previous_velocity = None
        try:
            self.robot.hold()
        except Exception as error:  # noqa: BLE001 - holding must never raise into the caller
            LOG.error("hold failed: %s", error)

    def _log(self, kind: str, reason: str) -> None:
        event = SafetyEvent(self.clock(), kind, reason)
        self.events.append(event)
        LOG.warning("safety %s: %s", kind, reason)
        for listener in self._listeners:
            listener(event)

    def _watch(self) -> None:
        period = self.cfg.watchdog_timeout_s / max(1, self.cfg.watchdog_checks)
        while not self._stop.wait(period):
            with self._lock:
                last = self._last_command_time
                if last is None or self.held or self.estopped:
                    continue
                silence = self.clock() - last
                if silence > self.cfg.watchdog_timeout_s:
                    self._log("hold", f"watchdog: no command for {silence * 1000:.0f} ms")
                    self._hold_robot()
