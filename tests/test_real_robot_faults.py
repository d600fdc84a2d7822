"""Fault tests of the deployment path: the robot is held within the watchdog bound, nothing
crashes, and the episode data so far is saved."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

from policies.mlp import MLPPolicy, MLPPolicyConfig
from real_robot.client import PolicyClient
from real_robot.deploy import DeployConfig, deploy
from real_robot.policy_runtime import LocalPolicy
from real_robot.protocol import encode_message
from real_robot.safety import SafetyConfig, SafetyLayer
from real_robot.server import PolicyServer
from real_robot.sim_robot import SimRobot, SimRobotConfig

TIMEOUT = 0.2  # the watchdog bound under test (the default)
HZ = 20.0
SLACK = 0.1  # thread wake-up latency on a loaded 2-core machine


class FaultySim(SimRobot):
    """A SimRobot whose sensors misbehave from step `fault_step` on."""

    def __init__(self, fault: str, fault_step: int = 5, cameras: tuple[str, ...] = ()):
        super().__init__(SimRobotConfig(task="Reach", cameras=cameras, image_size=64))
        self.fault, self.fault_step = fault, fault_step
        self.fault_time: float | None = None
        self.frozen: dict | None = None

    def get_observation(self):
        obs = super().get_observation()
        if self.steps < self.fault_step:
            return obs
        if self.fault_time is None:
            self.fault_time = time.time()
        if self.fault == "camera_stops":  # the camera's last frame and its stamp stay
            if self.frozen is None:
                self.frozen = obs
            obs = {**obs, "observation.images.front": self.frozen["observation.images.front"], "timestamp": self.frozen["timestamp"]}
        elif self.fault == "delayed_joint_state":  # joint states arrive 300 ms late
            obs["timestamp"] = time.time() - 0.3
        return obs


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("faults") / "policy"
    MLPPolicy(MLPPolicyConfig(obs_dim=31, action_dim=7, chunk_size=2, hidden_sizes=(16,))).save_pretrained(path)
    return LocalPolicy.from_path(path)


def safe(robot, **cfg):
    return SafetyLayer(robot, SafetyConfig(watchdog_timeout_s=TIMEOUT, **cfg))


def first_event(safety, kind, text, after=0.0):
    return next(e for e in safety.events if e.kind == kind and text in e.reason and e.time >= after)


def load(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/deploy", root=root)


def test_camera_stops_publishing(policy, tmp_path):
    robot = FaultySim("camera_stops", fault_step=5, cameras=("front",))
    safety = safe(robot)
    cfg = DeployConfig(max_steps=20, record=str(tmp_path / "d"), record_video=False, display=False)
    summary = deploy(safety, cfg, policy=policy)
    assert summary["aborted"] is None and summary["steps"] == 20
    stale = first_event(safety, "reject", "stale observation")
    assert stale.time - robot.fault_time <= TIMEOUT + 1 / HZ + SLACK  # held by the first tick past the bound
    assert robot.steps < 20  # commands after the stall never reached the arm
    assert load(tmp_path / "d").num_frames == 20  # every tick recorded (held ones with the hold action)


def test_delayed_joint_state_holds_the_arm(policy):
    robot = FaultySim("delayed_joint_state", fault_step=3)
    safety = safe(robot)
    summary = deploy(safety, DeployConfig(max_steps=10, realtime=False, display=False), policy=policy)
    assert summary["aborted"] is None
    assert robot.steps == 3  # nothing moved once the joint states were late
    assert sum(e.kind == "reject" and "stale observation" in e.reason for e in safety.events) == 7


class NaNPolicy:
    metadata = {"chunk_size": 1}

    def __init__(self, policy, every: int = 2):
        self.policy, self.every, self.calls = policy, every, 0

    def infer(self, obs):
        self.calls += 1
        chunk = self.policy.infer(obs)
        return np.full_like(chunk, np.nan) if self.calls % self.every == 0 else chunk


def test_nan_action_rejected_and_held(policy, tmp_path):
    robot = SimRobot(SimRobotConfig(task="Reach"))
    safety = safe(robot)
    summary = deploy(safety, DeployConfig(max_steps=8, realtime=False, record=str(tmp_path / "d"), display=False),
                     policy=NaNPolicy(policy))
    assert summary["aborted"] is None and robot.steps == 4 and robot.holds >= 4  # every other chunk is NaN
    dataset = load(tmp_path / "d")
    assert dataset.num_frames == 8 and all(torch.isfinite(dataset[i]["action"]).all() for i in range(8))


class HungPolicy:
    """Answers the first `good` requests, then takes `delay` seconds (a stalled server)."""

    metadata = {"chunk_size": 1}

    def __init__(self, policy, good: int, delay: float):
        self.policy, self.good, self.delay, self.calls = policy, good, delay, 0

    def infer(self, obs):
        self.calls += 1
        if self.calls > self.good:
            time.sleep(self.delay)
        return self.policy.infer(obs)[:1]


def test_stalled_policy_is_covered_by_the_watchdog(policy):
    robot = SimRobot(SimRobotConfig(task="Reach"))
    safety = safe(robot)
    summary = deploy(safety, DeployConfig(max_steps=6, display=False), policy=HungPolicy(policy, good=3, delay=0.5))
    assert summary["aborted"] is None
    hold = first_event(safety, "hold", "watchdog")  # the arm is held while the policy hangs
    assert robot.holds >= 1
    assert TIMEOUT <= hold_delay(safety, hold) <= TIMEOUT * 1.25 + SLACK
    assert robot.steps == 3  # answers computed on a >200 ms old observation are refused too
    assert any("stale observation" in e.reason for e in safety.events if e.kind == "reject")


def hold_delay(safety, hold) -> float:
    """Time from the last command the robot received before `hold` to `hold` (from its reason)."""
    return float(hold.reason.split("no command for ")[1].split(" ms")[0]) / 1e3


@pytest.fixture()
def server(policy):
    server = PolicyServer(policy, max_message_bytes=4096).start()
    yield server
    server.stop()


class StopServerAfter:
    """A client that stops the server after `n` answered requests (the server dies mid-episode)."""

    def __init__(self, client, server, n):
        self.client, self.server, self.n, self.calls = client, server, n, 0
        self.metadata = client.metadata

    def infer(self, obs):
        self.calls += 1
        if self.calls == self.n + 1:
            self.server.stop()
            self.died = time.time()
        return self.client.infer(obs)

    def reconnect(self):
        self.client.reconnect()

    def close(self):
        self.client.close()


def test_server_dies_mid_episode(server, tmp_path):
    robot = SimRobot(SimRobotConfig(task="Reach"))
    safety = safe(robot)
    client = StopServerAfter(PolicyClient(server.url, timeout_s=1.0), server, n=4)
    cfg = DeployConfig(policy=server.url, episodes=3, max_steps=30, record=str(tmp_path / "d"), display=False, server_timeout_s=0.5)
    summary = deploy(safety, cfg, policy=client)
    assert summary["policy_failures"] == 1 and summary["episodes"] == 1
    assert summary["aborted"] and "policy server lost" in summary["aborted"]  # no server to reconnect to
    hold = first_event(safety, "hold", "policy unavailable")
    assert hold.time - client.died <= TIMEOUT
    dataset = load(tmp_path / "d")
    assert dataset.num_episodes == 1 and dataset.num_frames == summary["steps"] == 8  # 4 chunks of 2 actions


def test_oversized_observation_ends_the_episode_not_the_run(server, tmp_path):
    robot = SimRobot(SimRobotConfig(task="Reach", cameras=("front",), image_size=64))  # 12 kB image > 4 kB limit
    safety = safe(robot)
    cfg = DeployConfig(policy=server.url, episodes=2, max_steps=5, realtime=False, display=False)
    summary = deploy(safety, cfg)
    assert summary["policy_failures"] == 2 and summary["episodes"] == 2 and summary["aborted"] is None
    assert any("policy unavailable" in e.reason for e in safety.events if e.kind == "hold")
    assert PolicyClient(server.url).metadata["max_message_bytes"] == 4096  # the server is still up


def test_client_disconnecting_mid_request_leaves_the_server_serving(server):
    from websockets.sync.client import connect

    for _ in range(5):
        ws = connect(server.url, **({"legacy": True} if "legacy" in connect.__code__.co_varnames else {}))
        ws.send(encode_message("hello", token=None))
        ws.recv(timeout=2)
        ws.send(encode_message("infer", id=0, obs={"observation.state": np.zeros(25, np.float32),
                                                   "observation.environment_state": np.zeros(6, np.float32)}))
        ws.close()  # gone before the answer
    raw = socket.create_connection((server.host, server.port))
    raw.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not even a websocket
    raw.close()
    client = PolicyClient(server.url)
    assert client.infer({"observation.state": np.zeros(25, np.float32), "observation.environment_state": np.zeros(6, np.float32)}).shape == (2, 7)
    client.close()


def test_runner_thread_killed_robot_held_by_watchdog(policy):
    """The client side dies (the runner stops sending): the watchdog holds the arm."""
    robot = SimRobot(SimRobotConfig(task="Reach"))
    safety = safe(robot)
    safety.connect()
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            obs = safety.get_observation()
            safety.send_action({"action": policy.infer(obs)[0]})
            time.sleep(1 / HZ)

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join()
    gone = time.time()
    time.sleep(TIMEOUT * 2)
    hold = first_event(safety, "hold", "watchdog")
    assert hold.time - gone <= TIMEOUT + SLACK and TIMEOUT <= hold_delay(safety, hold) <= TIMEOUT * 1.25 + SLACK
    safety.disconnect()
