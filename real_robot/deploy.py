"""The deployment runner: ``embodied deploy --robot CONFIG --policy CHECKPOINT_OR_URL``.

A fixed-rate loop (absolute schedule, ``1 / control_hz``; a tick more than one period late
skips a period and counts an overrun instead of sending a burst) that per tick reads an observation,
takes the next action from the policy's chunks, lets a corrector take over where it wants,
sends the action through the safety layer and records the frame:

    obs -> [corrector takes over?] -> ActionChunker (queue | temporal ensembling) -> SafetyLayer -> robot

- **Chunks**: ``queue`` executes the first `actions_per_chunk` actions of each chunk, then
  asks for a new one; ``ensemble`` asks every tick and averages the predictions of all
  chunks overlapping this tick with ACT's weights ``exp(-m * i)`` (i = 0 the oldest).
- **Interventions**: a corrector (``scripted``: the task's expert over a window of steps,
  sims only; ``keyboard``: 't' toggles takeover, then w/s a/d r/f move the TCP, o/c open and
  close the gripper) replaces the policy's action; those frames are recorded with
  ``complementary_info.is_intervention = True`` and the chunk queue is flushed.
- **Faults**: the robot is held and the loop ends cleanly on any error, a lost policy
  server or Ctrl-C; the episode so far is written and the dataset finalised. A lost server
  ends the episode; the next one reconnects (or the run stops if it cannot).
- **Console**: one live status line per tick on a TTY (step, rate, latency, interventions,
  safety events), one line per episode otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from real_robot.client import PolicyClient, PolicyServerError
from real_robot.safety import SafetyLayer

if TYPE_CHECKING:
    from sims.tasks.base import ScriptedExpert

LOG = logging.getLogger("real_robot.deploy")


@dataclasses.dataclass
class DeployConfig:
    policy: str = ""  # a checkpoint / run directory / policy folder, or ws://host:port
    episodes: int = 1
    max_steps: int = 0  # per episode; 0: until the robot reports done (sims), else 200
    chunking: str = "queue"  # queue | ensemble
    actions_per_chunk: int = 0  # queue: actions executed per chunk; 0: the whole chunk
    ensemble_decay: float = 0.01  # ensemble: ACT's m
    realtime: bool = True  # pace the loop at the robot's control rate (a SimRobot may run faster)
    seed: int = 0
    token: str | None = None  # shared token of the policy server
    server_timeout_s: float = 1.0
    record: str = ""  # dataset root; "" records nothing
    record_video: bool = True  # camera frames as mp4 (LeRobot's default) or PNG images
    overwrite: bool = False
    intervention: str = "none"  # none | scripted | keyboard
    intervention_start: int = 10  # scripted: first step of the takeover
    intervention_steps: int = 10  # scripted: its length
    display: bool = True


# ---------------------------------------------------------------------------------- chunks
class ActionChunker:
    """Turns (T, A) chunks into one action per tick."""

    def __init__(self, mode: str = "queue", actions_per_chunk: int = 0, decay: float = 0.01):
        if mode not in ("queue", "ensemble"):
            raise ValueError(f"Unknown chunking {mode!r}; valid: queue, ensemble.")
        self.mode, self.actions_per_chunk, self.decay = mode, actions_per_chunk, decay
        self.reset()

    def reset(self) -> None:
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.chunks: list[tuple[int, np.ndarray]] = []  # (start tick, chunk)
        self.tick = 0

    def needs_chunk(self) -> bool:
        return self.mode == "ensemble" or not self.queue

    def add(self, chunk: np.ndarray) -> None:
        """A new chunk predicted at the current tick."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2:
            raise ValueError(f"An action chunk must be (T, A); got shape {chunk.shape}.")
        if self.mode == "queue":
            keep = self.actions_per_chunk or len(chunk)
            self.queue.extend(chunk[:keep])
        else:
            self.chunks.append((self.tick, chunk))

    def next_action(self) -> np.ndarray:
        """The action of this tick; advances the tick."""
        if self.mode == "queue":
            if not self.queue:
                raise RuntimeError("No action queued: add a chunk first.")
            action = self.queue.popleft()
        else:
            self.chunks = [(s, c) for s, c in self.chunks if self.tick - s < len(c)]
            if not self.chunks:
                raise RuntimeError("No chunk covers this tick: add a chunk first.")
            predictions = np.stack([c[self.tick - s] for s, c in self.chunks])  # oldest first
            weights = np.exp(-self.decay * np.arange(len(predictions)))
            action = (weights[:, None] * predictions).sum(0) / weights.sum()
        self.tick += 1
        return action.astype(np.float32)

    def flush(self) -> None:
        """Forget pending actions (after a takeover the policy replans from the new state)."""
        self.queue.clear()
        self.chunks.clear()


# ---------------------------------------------------------------------------------- takeovers
class Corrector:
    """Something that may take over: ``act(obs, step) -> action or None`` (None: no takeover)."""

    def act(self, obs: dict[str, Any], step: int) -> np.ndarray | None:
        return None

    def start(self) -> None:  # noqa: B027 - optional hook
        pass

    def stop(self) -> None:  # noqa: B027 - optional hook
        pass


class ScriptedCorrector(Corrector):
    """The sim task's scripted expert takes over for steps [start, start + steps) of each episode."""

    def __init__(self, robot, start: int, steps: int):
        inner = getattr(robot, "robot", robot)
        if not hasattr(inner, "env"):
            raise ValueError("The scripted corrector needs a simulated robot (its task's expert).")
        self.robot, self.start_step, self.steps = inner, start, steps
        self.expert: ScriptedExpert | None = None

    def act(self, obs: dict[str, Any], step: int) -> np.ndarray | None:
        if not self.start_step <= step < self.start_step + self.steps:
            return None
        if self.expert is None or step == self.start_step:
            self.expert = self.robot.env.task.expert()
        return self.expert.act(None)[0].cpu().numpy().astype(np.float32)


class KeyboardCorrector(Corrector):
    """'t' toggles takeover; w/s, a/d, r/f move the TCP along x, y, z; o/c open / close."""

    MOVES = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0)}

    def __init__(
        self, action_dim: int, stream: IO | None = None, force: bool = False, extra: dict[str, Any] | None = None,
    ):
        from real_robot.keyboard import KeyListener

        self.action_dim = action_dim
        self.active = False
        self.pending = np.zeros(action_dim, dtype=np.float32)
        self.gripper = 1.0
        bindings: dict[str, Callable[[], None]] = {
            "t": self._toggle, "o": lambda: self._grip(1.0), "c": lambda: self._grip(-1.0),
        }
        bindings.update({k: functools.partial(self._move, axis, sign) for k, (axis, sign) in self.MOVES.items()})
        bindings.update(extra or {})
        self.listener = KeyListener(bindings, stream=stream, force=force)

    def _toggle(self) -> None:
        self.active = not self.active

    def _grip(self, value: float) -> None:
        self.gripper = value

    def _move(self, axis: int, sign: float) -> None:
        self.pending[axis] = sign

    def act(self, obs: dict[str, Any], step: int) -> np.ndarray | None:
        if not self.active:
            return None
        action, self.pending = self.pending, np.zeros(self.action_dim, dtype=np.float32)
        action[-1] = self.gripper
        return action

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()


# ---------------------------------------------------------------------------------- display
class LiveDisplay:
    """A status line rewritten every tick on a TTY; per-episode lines otherwise."""

    def __init__(self, stream: IO | None = None, enabled: bool = True):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def tick(self, episode: int, step: int, hz: float, latency_ms: float, interventions: int, safety: int, source: str) -> None:
        if self.tty:
            self.stream.write(
                f"\repisode {episode} step {step:4d} | {hz:5.1f} Hz | policy {latency_ms:6.1f} ms | "
                f"{source:<8} | takeovers {interventions:3d} | safety events {safety:3d}  "
            )
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------- the loop
def open_policy(cfg: DeployConfig, control_hz: float):
    """A `LocalPolicy` for a path, a `PolicyClient` for a ws:// URL."""
    if cfg.policy.startswith(("ws://", "wss://")):
        return PolicyClient(cfg.policy, token=cfg.token, timeout_s=cfg.server_timeout_s)
    from real_robot.policy_runtime import LocalPolicy

    return LocalPolicy.from_path(cfg.policy, control_hz=control_hz)


def make_corrector(cfg: DeployConfig, robot: SafetyLayer) -> Corrector:
    if cfg.intervention == "none":
        return Corrector()
    if cfg.intervention == "scripted":
        return ScriptedCorrector(robot, cfg.intervention_start, cfg.intervention_steps)
    if cfg.intervention == "keyboard":
        return KeyboardCorrector(robot.action_spec.dim)
    raise ValueError(f"Unknown intervention {cfg.intervention!r}; valid: none, scripted, keyboard.")


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def deploy(
    robot: SafetyLayer, cfg: DeployConfig, policy=None, corrector: Corrector | None = None,
    display: LiveDisplay | None = None,
) -> dict[str, Any]:
    """Run `cfg.episodes` episodes of `policy` (default: opened from `cfg.policy`) on `robot`
    (a connected or unconnected `SafetyLayer`); returns a summary. Never leaves the robot
    moving: any exception or Ctrl-C holds it, writes the episode so far and disconnects."""
    display = display or LiveDisplay(enabled=cfg.display)
    chunker = ActionChunker(cfg.chunking, cfg.actions_per_chunk, cfg.ensemble_decay)
    recorder = None
    summary: dict[str, Any] = {
        "episodes": 0, "successes": 0, "steps": 0, "intervention_steps": 0, "policy_failures": 0, "overruns": 0,
        "aborted": None, "results": [],
    }
    latencies: list[float] = []
    jitter: list[float] = []
    try:
        if not robot.is_connected:
            robot.connect()
        hz = robot.control_hz
        if not cfg.realtime:
            if not robot.episode_status():
                raise ValueError("realtime: false is for simulated robots only; a real arm runs at its control rate.")
            robot.rate_limit = False  # simulated time: steps may come faster than the wall-clock rate
        if policy is None:
            policy = open_policy(cfg, hz)
        summary["policy_metadata"] = policy.metadata
        corrector = corrector or make_corrector(cfg, robot)
        corrector.start()
        if cfg.record:
            recorder_features = robot.observation_features
            from real_robot.recorder import EpisodeRecorder

            recorder = EpisodeRecorder(
                cfg.record, recorder_features, robot.action_spec.dim, hz, robot_type=robot.robot.name,
                overwrite=cfg.overwrite, video=cfg.record_video,
            )
        for episode in range(cfg.episodes):
            robot.reset_episode(cfg.seed + episode)
            chunker.reset()
            if hasattr(policy, "reset"):  # a policy in this process; a server keeps its own
                policy.reset()
            result = _run_episode(robot, cfg, policy, chunker, corrector, recorder, display, episode, latencies, jitter, summary)
            summary["results"].append(result)
            summary["episodes"] += 1
            summary["successes"] += int(result["success"])
            display.line(
                f"episode {episode}: {'success' if result['success'] else 'failure'} after {result['steps']} steps"
                f" ({result['interventions']} takeover steps){' - ' + result['error'] if result['error'] else ''}"
            )
            if result["error"]:
                policy = _reconnect(policy, cfg, summary)
                if policy is None:
                    break
    except KeyboardInterrupt:
        summary["aborted"] = "interrupted (Ctrl-C)"
    except Exception as error:  # noqa: BLE001 - the robot is held whatever went wrong
        summary["aborted"] = f"{type(error).__name__}: {error}"
        LOG.exception("deployment stopped")
    finally:
        _safe(lambda: robot.hold("deployment ended"))
        if corrector is not None:
            _safe(corrector.stop)
        if recorder is not None:
            _safe(recorder.close)
            summary["recorded_episodes"] = recorder.episodes
            summary["recorded_frames"] = recorder.total_frames
            summary["dataset"] = str(recorder.root)
        if policy is not None and hasattr(policy, "close"):
            _safe(policy.close)
        _safe(robot.disconnect)
    episodes = max(summary["episodes"], 1)
    summary["success_rate"] = summary["successes"] / episodes
    summary["latency_ms_p50"] = percentile(latencies, 50)
    summary["latency_ms_p99"] = percentile(latencies, 99)
    summary["jitter_ms_p50"] = percentile(jitter, 50)
    summary["jitter_ms_p99"] = percentile(jitter, 99)
    summary["safety_events"] = collections.Counter(e.kind for e in robot.events)
    if summary["aborted"]:
        display.line(f"deployment stopped: {summary['aborted']}")
    return summary


def _run_episode(robot, cfg, policy, chunker, corrector, recorder, display, episode, latencies, jitter, summary) -> dict:
    period = 1.0 / robot.control_hz
    max_steps = cfg.max_steps or (0 if robot.episode_status() else 200)
    step = interventions = 0
    error = None
    status: dict[str, bool] = {}
    scheduled = time.perf_counter()  # when this tick should start
    last_tick = scheduled
    hz_estimate = robot.control_hz
    latency_ms = 0.0
    try:
        while not max_steps or step < max_steps:
            tick_start = time.perf_counter()
            if step:
                if cfg.realtime:
                    jitter.append(abs(tick_start - scheduled) * 1e3)
                hz_estimate = 1.0 / max(tick_start - last_tick, 1e-6)
            last_tick = tick_start
            obs = robot.get_observation()
            takeover = corrector.act(obs, step)
            if takeover is not None:
                action, source = takeover, "takeover"
                chunker.flush()
                interventions += 1
            else:
                if chunker.needs_chunk():
                    t0 = time.perf_counter()
                    try:
                        chunker.add(policy.infer(obs))
                    except PolicyServerError as failure:
                        summary["policy_failures"] += 1
                        robot.hold(f"policy unavailable: {failure}")
                        error = f"policy unavailable: {failure}"
                        break
                    latency_ms = (time.perf_counter() - t0) * 1e3
                    latencies.append(latency_ms)
                action, source = chunker.next_action(), "policy"
            sent = robot.send_action({"action": action})["action"]
            status = robot.episode_status()
            if recorder is not None:
                recorder.add(obs, sent, takeover is not None, status.get("success", False), status.get("done", False))
            step += 1
            display.tick(episode, step, hz_estimate, latency_ms, interventions, len(robot.events), source)
            if status.get("done"):
                break
            if cfg.realtime:
                scheduled += period
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -period:  # a whole tick missed: skip it rather than send a burst
                    summary["overruns"] += 1
                    scheduled = time.perf_counter() + period
                    time.sleep(period)
    finally:
        summary["steps"] += step
        summary["intervention_steps"] += interventions
        if recorder is not None:
            recorder.end_episode()  # the episode so far, also when an exception is on its way
    return {"success": bool(status.get("success", False)), "steps": step, "interventions": interventions, "error": error}


def _reconnect(policy, cfg: DeployConfig, summary: dict):
    """After a lost server: the client reconnected, or None (the run stops) if it cannot."""
    if not hasattr(policy, "reconnect"):
        return policy
    try:
        policy.reconnect()
        return policy
    except PolicyServerError as error:
        summary["aborted"] = f"policy server lost: {error}"
        return None


def _safe(fn) -> None:
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - shutdown goes on
        LOG.error("shutdown step failed: %s", error)


def run_from_files(robot_config: str | Path, cfg: DeployConfig, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """`embodied deploy`: the robot of `robot_config` behind its safety layer, driven by `cfg`."""
    from real_robot.config import load_robot
    from real_robot.keyboard import KeyListener

    robot = load_robot(robot_config, list(overrides))
    estop_keys = {"e": lambda: robot.estop("keyboard"), "x": robot.release_estop}  # wherever a terminal is attached
    corrector = None
    keyboard = None
    if cfg.intervention == "keyboard":
        if not robot.is_connected:
            robot.connect()
        corrector = KeyboardCorrector(robot.action_spec.dim, extra=estop_keys)
    else:
        keyboard = KeyListener(estop_keys)
        keyboard.start()
    try:
        return deploy(robot, cfg, corrector=corrector)
    finally:
        if keyboard is not None:
            keyboard.stop()
        from real_robot.ros.transport import RosbridgeTransport

        RosbridgeTransport.stop_event_loop()  # the CLI's process ends here


__all__ = ["ActionChunker", "DeployConfig", "KeyboardCorrector", "LiveDisplay", "ScriptedCorrector", "deploy", "run_from_files"]
