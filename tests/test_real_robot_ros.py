"""The ROS bridge: message conversion and RosRobot on an in-process bus (fast), then end to end
on a real ROS master with the simulated arm node, over native rospy and rosbridge.

The end-to-end tests need Debian's ROS 1 packages: the set-up installs them with apt-get
when running as root with apt available, and skips otherwise, saying why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from real_robot.config import load_robot
from real_robot.robot import RobotError
from real_robot.ros import messages as m
from real_robot.ros.bridge import RosRobot, RosRobotConfig, TopicConfig
from real_robot.ros.sim_node import ARM_JOINTS, FINGER_JOINTS, SimArmNode
from real_robot.safety import SafetyConfig, SafetyLayer

ROOT = Path(__file__).resolve().parents[1]
ROS_PACKAGES = ["ros-core", "python3-rospy", "python3-sensor-msgs", "python3-std-msgs", "python3-trajectory-msgs", "python3-geometry-msgs"]


# ----------------------------------------------------------------------------- fast: messages
def test_joint_state_and_pose_conversions():
    message = m.joint_state(["b", "a"], [1.0, 2.0], [3.0, 4.0], seconds=12.5)
    q, v = m.joints_from_state(message, ["a", "b"])
    assert q.tolist() == [2.0, 1.0] and v.tolist() == [4.0, 3.0]
    assert m.stamp_seconds(message) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="lacks joints"):
        m.joints_from_state(message, ["c"])
    pose = m.pose_stamped([1, 2, 3], [0.5, 0.1, 0.2, 0.3])  # w, x, y, z in
    assert pose["pose"]["orientation"] == {"x": 0.1, "y": 0.2, "z": 0.3, "w": 0.5}  # ROS order out
    position, quaternion = m.pose_arrays(pose)
    assert position.tolist() == [1, 2, 3] and quaternion.tolist() == pytest.approx([0.5, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("compressed", [False, True])
def test_images_raw_compressed_and_base64(compressed):
    image = np.random.default_rng(0).integers(0, 255, (8, 6, 3), dtype=np.uint8)
    message = m.image_message(image, compressed=compressed)
    np.testing.assert_array_equal(m.image_array(message), image)
    np.testing.assert_array_equal(m.image_array(m.jsonable(message)), image)  # rosbridge: base64 strings
    if not compressed:
        bgr = {**message, "encoding": "bgr8", "data": image[..., ::-1].tobytes()}
        np.testing.assert_array_equal(m.image_array(bgr), image)
        with pytest.raises(ValueError, match="encoding"):
            m.image_array({**message, "encoding": "mono16"})


# ----------------------------------------------------------------------------- fast: a fake bus
class Bus:
    """An in-process topic bus with the Transport interface (latched topics)."""

    def __init__(self):
        self.subscribers: dict[str, list] = {}
        self.published: list[tuple[str, str, dict]] = []

    def connect(self, timeout_s=10.0):
        pass

    def subscribe(self, topic, type_name, callback):
        """Subscribers get the topic's latest message at once (as from a latched topic)."""
        self.subscribers.setdefault(topic, []).append(callback)
        latest = [msg for t, _, msg in self.published if t == topic]
        if latest:
            callback(latest[-1])

    def advertise(self, topic, type_name):
        pass

    def publish(self, topic, type_name, message):
        self.published.append((topic, type_name, message))
        for callback in self.subscribers.get(topic, []):
            callback(message)

    def close(self):
        pass

    def last(self, topic):
        return next(msg for t, _, msg in reversed(self.published) if t == topic)


def ros_config(**overrides) -> RosRobotConfig:
    cfg = load_robot(ROOT / "configs/robots/ros_reach.yaml").robot.cfg
    import dataclasses

    return dataclasses.replace(cfg, **{"connect_timeout_s": 1.0, **overrides})


def test_config_file_builds_a_ros_robot_behind_safety():
    robot = load_robot(ROOT / "configs/robots/ros_reach.yaml", ["robot.transport=rosbridge"])
    assert isinstance(robot, SafetyLayer) and isinstance(robot.robot, RosRobot)
    assert robot.robot.cfg.transport == "rosbridge" and robot.action_spec.kind == "ee_delta"
    assert robot.robot.cfg.vectors["observation.environment_state"].topic == "/embodied/environment_state"


def test_ros_robot_drives_the_sim_node_on_a_bus():
    bus = Bus()
    node = SimArmNode(bus, task="Reach")
    node.start()
    node.publish()
    robot = RosRobot(ros_config(), transport=bus)
    robot.connect()
    obs = robot.get_observation()
    local = node.robot.get_observation()
    np.testing.assert_allclose(obs["observation.state"], local["observation.state"], atol=1e-6)  # same layout as sims
    np.testing.assert_allclose(obs["observation.environment_state"], local["observation.environment_state"], atol=1e-6)
    assert robot.observation_features == {"observation.state": (25,), "observation.environment_state": (6,)}
    tcp = obs["observation.state"][18:21].copy()
    robot.send_action({"action": np.array([1.0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)})
    assert bus.last("/embodied/ee_delta")["data"] == [1.0, 0, 0, 0, 0, 0] and bus.last("/gripper/command") == {"data": 1.0}
    node.tick()  # applies the command once
    node.tick()  # no new command: holds, not counted as a task step
    assert node.commands_applied == 1 and node.robot.steps == 1
    assert robot.get_observation()["observation.state"][18] > tcp[0] + 0.01  # 3 cm commanded; the servos lag
    robot.hold()
    assert bus.last("/embodied/ee_delta")["data"] == [0.0] * 6
    assert bus.last("/gripper/command")["data"] == pytest.approx(1.0, abs=0.05)  # gripper kept where it is
    robot.disconnect()


def test_observation_timestamp_is_the_oldest_part_and_checks_count():
    bus = Bus()
    robot = RosRobot(ros_config(), transport=bus)
    names = ARM_JOINTS + FINGER_JOINTS

    def publish_all(joint_time, pose_time):
        bus.publish("/joint_states", "", m.joint_state(names, np.zeros(9), np.zeros(9), joint_time))
        bus.publish("/ee_pose", "", m.pose_stamped([0, 0, 0.2], [1, 0, 0, 0], seconds=pose_time))
        bus.publish("/embodied/environment_state", "", m.float_array(np.zeros(6)))

    now = time.time()
    publish_all(now - 0.5, now)
    robot.connect()
    assert robot.get_observation()["timestamp"] == pytest.approx(now - 0.5)  # a late joint state shows
    publish_all(now + 5.0, now)  # a clock five seconds ahead
    robot.get_observation()
    assert robot.checks["future_stamp"] == 1
    for _ in range(6):  # 20 Hz expected, 5 Hz arriving
        publish_all(time.time(), time.time())
        time.sleep(0.2)
    robot.get_observation()
    assert robot.checks["slow_rate"] >= 1


def test_connect_names_missing_topics():
    with pytest.raises(RobotError, match="/joint_states|joint_states"):
        RosRobot(ros_config(connect_timeout_s=0.2), transport=Bus()).connect()


def test_joint_position_commands_and_estop_topic():
    bus = Bus()
    cfg = ros_config(command_kind="joint_position", command=TopicConfig("/arm/command", "trajectory_msgs/JointTrajectory"),
                     ee_pose=None, vectors={})
    robot = RosRobot(cfg, transport=bus)
    bus.publish("/joint_states", "", m.joint_state(ARM_JOINTS + FINGER_JOINTS, np.linspace(0, 0.8, 9), np.zeros(9)))
    safety = SafetyLayer(robot, SafetyConfig(max_joint_velocity=100, max_joint_acceleration=1e6))
    safety.connect()
    safety.get_observation()
    assert robot.action_spec.kind == "joint_position" and robot.action_spec.dim == 8
    target = np.array([0.05] * 7 + [1.0], dtype=np.float32)
    safety.send_action({"action": target})
    trajectory = bus.last("/arm/command")
    assert trajectory["joint_names"] == ARM_JOINTS and trajectory["points"][0]["positions"] == pytest.approx([0.05] * 7)
    np.testing.assert_allclose(robot.hold_action()[:7], np.linspace(0, 0.8, 9)[:7], atol=1e-6)  # hold = stay here
    bus.publish("/embodied/estop", "std_msgs/Bool", {"data": True})
    assert safety.estopped and any("/embodied/estop" in e.reason for e in safety.events)
    safety.disconnect()


# ----------------------------------------------------------------------------- end to end on ROS
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_ros() -> None:
    """Install Debian's ROS 1 packages if missing (root + apt-get), else skip saying why."""
    if shutil.which("roscore") and os.path.isdir("/usr/lib/python3/dist-packages/rospy"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("ROS 1 (roscore, rospy) is not installed and cannot be: installing needs root and apt-get "
                    f"(apt-get install {' '.join(ROS_PACKAGES)})")
    result = subprocess.run(["apt-get", "install", "-y", *ROS_PACKAGES], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        result = subprocess.run(["sh", "-c", f"apt-get update && apt-get install -y {' '.join(ROS_PACKAGES)}"],
                                capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not shutil.which("roscore"):
        pytest.skip(f"apt-get could not install ROS 1: {result.stderr[-300:]}")


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not up within {timeout} s")


def port_open(port) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ros_graph(tmp_path_factory):
    """roscore on a free port, the simulated arm node, and the rosbridge test server."""
    ensure_ros()
    logs = tmp_path_factory.mktemp("ros")
    master_port, bridge_port = free_port(), free_port()
    env = {**os.environ, "ROS_MASTER_URI": f"http://127.0.0.1:{master_port}", "ROS_LOG_DIR": str(logs),
           "ROS_HOME": str(logs), "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    os.environ["ROS_MASTER_URI"] = env["ROS_MASTER_URI"]  # this process's rospy node joins the same master
    processes = []

    def start(args, name):
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        processes.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        return processes[-1]

    try:
        start(["roscore", "-p", str(master_port)], "roscore")
        wait_for(lambda: port_open(master_port), 30, "roscore")
        node = start([sys.executable, "-m", "real_robot.ros.sim_node", "--task", "Reach"], "sim_node")
        start([sys.executable, "-m", "real_robot.ros.rosbridge_server", "--port", str(bridge_port)], "rosbridge")
        wait_for(lambda: port_open(bridge_port), 60, "rosbridge test server")
        wait_for(lambda: "sim arm node up" in (logs / "sim_node.log").read_text(), 60, "sim arm node")
        yield {"master_uri": env["ROS_MASTER_URI"], "bridge_port": bridge_port, "node": node, "logs": logs}
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def ros_robot(graph, transport: str, watchdog=0.2) -> SafetyLayer:
    overrides = [f"robot.transport={transport}", f"robot.master_uri={graph['master_uri']}",
                 f"robot.rosbridge_port={graph['bridge_port']}", f"safety.watchdog_timeout_s={watchdog}"]
    return load_robot(ROOT / "configs/robots/ros_reach.yaml", overrides)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from policies.mlp import MLPPolicy, MLPPolicyConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ros_policy") / "policy"
    policy = MLPPolicy(MLPPolicyConfig(obs_dim=31, action_dim=7, hidden_sizes=(16,)))
    with torch.no_grad():  # an untrained policy that moves: +x at half speed, gripper open
        policy.actor[-1].bias.copy_(torch.tensor([0.5, 0, 0, 0, 0, 0, 1.0]))
    policy.save_pretrained(path)
    return path


@pytest.mark.parametrize("transport", ["native", "rosbridge"])
def test_deploy_over_ros_records_and_moves_the_arm(ros_graph, tiny_policy, transport, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from real_robot.deploy import DeployConfig, deploy

    robot = ros_robot(ros_graph, transport)
    cfg = DeployConfig(policy=str(tiny_policy), episodes=2, max_steps=10, seed=5, record=str(tmp_path / "d"),
                       intervention="none", display=False)
    summary = deploy(robot, cfg)
    assert summary["aborted"] is None and summary["episodes"] == 2 and summary["steps"] == 20
    # fresh observations at 20 Hz: a refused (stale) one only when the shared machine stalls a process
    assert summary["safety_events"].get("reject", 0) <= 5
    dataset = LeRobotDataset("local/deploy", root=tmp_path / "d")
    assert dataset.num_frames == 20
    states = np.stack([dataset[i]["observation.state"].numpy() for i in range(10)])
    assert states[-1, 18] - states[0, 18] > 0.02  # the arm moved along +x under the policy (1.5 cm per step)


def test_estop_topic_over_ros(ros_graph):
    from real_robot.ros.transport import NativeTransport

    robot = ros_robot(ros_graph, "native")
    robot.connect()
    publisher = NativeTransport("estop_test", ros_graph["master_uri"])
    publisher.connect()
    publisher.advertise("/embodied/estop", "std_msgs/Bool")
    time.sleep(0.5)  # let the subscription connect
    publisher.publish("/embodied/estop", "std_msgs/Bool", {"data": True})
    wait_for(lambda: robot.estopped, 5, "e-stop from the topic")
    robot.send_action({"action": np.zeros(7, dtype=np.float32)})
    assert [e.kind for e in robot.events][:2] == ["estop", "reject"]
    robot.disconnect()


def test_trained_policy_same_success_over_ros_as_in_sim(ros_graph, tmp_path):
    """PPO on Reach (the recipe), evaluated in plain simulation and through the ROS node over both
    transports: success rates agree within statistical error (Wilson 95% intervals overlap).
    About a minute on two cores, so it runs in CI."""
    from embodied.config import load_config
    from embodied.evaluate import evaluate_policy, wilson_interval
    from embodied.runner.trainer import TrainConfig, Trainer
    from real_robot.deploy import DeployConfig, deploy
    from real_robot.policy_runtime import load_policy

    quiet = ["log.tensorboard=false", "log.progress_bar=false", "log.final_video=false", "eval.every=0", "torch_threads=1"]
    cfg = load_config(TrainConfig, ROOT / "configs/ppo_reach_state.yaml", [*quiet, f"run_dir={tmp_path / 'run'}"])
    Trainer(cfg).train()
    episodes = 30
    sim = evaluate_policy(load_policy(tmp_path / "run"), cfg.env, episodes, seed=3_000_000)
    sim_low, sim_high = sim["success_ci95"]
    for transport in ("native", "rosbridge"):
        summary = deploy(ros_robot(ros_graph, transport),
                         DeployConfig(policy=str(tmp_path / "run"), episodes=episodes, seed=3_000_000, display=False))
        assert summary["aborted"] is None and summary["episodes"] == episodes
        low, high = wilson_interval(summary["successes"], episodes)
        print(f"{transport}: {summary['success_rate']:.1%} over ROS, {sim['success_rate']:.1%} in plain simulation")
        assert low <= sim_high and sim_low <= high, (transport, summary["success_rate"], sim["success_rate"])
        assert summary["success_rate"] >= 0.8


def test_sim_node_dies_mid_episode(ros_graph, tiny_policy, tmp_path):
    """The arm's driver dies (runs last: it kills the module's node): observations go stale,
    every later command is refused and the arm held within the watchdog bound; the episode
    so far is saved and nothing crashes."""
    import threading

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from real_robot.deploy import DeployConfig, deploy

    robot = ros_robot(ros_graph, "native")
    robot.connect()  # rospy's node starts in the main thread
    cfg = DeployConfig(policy=str(tiny_policy), episodes=1, max_steps=40, record=str(tmp_path / "d"), display=False)
    result = {}
    runner = threading.Thread(target=lambda: result.update(deploy(robot, cfg)))
    runner.start()
    time.sleep(0.8)
    ros_graph["node"].kill()
    died = time.time()
    runner.join(timeout=30)
    assert not runner.is_alive() and result["aborted"] is None, result
    assert result["steps"] == 40
    stale = next(e for e in robot.events if e.kind == "reject" and "stale observation" in e.reason)
    assert stale.time - died <= 0.2 + 1 / 20 + 0.1  # the bound, one tick, and the time rospy takes to notice nothing
    assert LeRobotDataset("local/deploy", root=tmp_path / "d").num_frames == 40
