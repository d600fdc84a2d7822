"""The ROS 2 (rclpy) transport, on `ros2_fake`: a stand-in for rclpy and its generated messages
with rosidl's strict field types, DDS's QoS matching and executor-driven callbacks (no ROS 2
install exists on PyPI or in Debian bookworm; on a machine with one, run
`python -m real_robot.ros.sim_node --transport rclpy` and deploy with robot.transport=rclpy).

End to end as on ROS 1: the simulated arm node on its own rclpy node, `embodied deploy`'s
runner driving it through RosRobot behind the safety layer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ros2_fake
import torch

from real_robot.config import load_robot
from real_robot.ros import messages as m
from real_robot.ros.sim_node import ARM_JOINTS, FINGER_JOINTS, SimArmNode
from real_robot.ros.transport import (
    NativeTransport,
    Ros2Transport,
    RosbridgeTransport,
    make_transport,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def graph(monkeypatch):
    return ros2_fake.install(monkeypatch)


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError(f"{what} not met within {timeout} s")


def test_messages_round_trip_through_rclpy_types(graph):
    now = 1_700_000_000.25
    image = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    trajectory = {"header": m.header(), "joint_names": ARM_JOINTS,
                  "points": [{"positions": [0.1 * i for i in range(7)], "time_from_start": {"secs": 0, "nsecs": 50_000_000}}]}
    cases = [
        ("sensor_msgs/JointState", m.joint_state(ARM_JOINTS + FINGER_JOINTS, np.arange(9), np.ones(9), now)),
        ("geometry_msgs/PoseStamped", m.pose_stamped([1, 2, 3], [1, 0, 0, 0], "world", now)),
        ("std_msgs/Float64MultiArray", m.float_array([1.5, -2.0])),
        ("sensor_msgs/Image", m.image_message(image, seconds=now)),
        ("sensor_msgs/CompressedImage", m.image_message(image, compressed=True, seconds=now)),
        ("trajectory_msgs/JointTrajectory", trajectory),
        ("std_msgs/Float64", {"data": 1}),  # an int for a double field: rclpy's setter would reject it uncast
        ("std_msgs/Int64", {"data": 7}),
        ("std_msgs/Bool", {"data": True}),
    ]
    for type_name, message in cases:
        native = m.to_rclpy(type_name, message)
        assert type(native).__name__ == type_name.split("/")[1]
        back = m.from_rclpy(native)
        if "header" in message:
            assert "seq" not in back["header"]  # ROS 2 headers have none
            assert m.stamp_seconds(back) == pytest.approx(m.stamp_seconds(message), abs=1e-6)
    joints = m.from_rclpy(m.to_rclpy(*cases[0]))
    q, v = m.joints_from_state(joints, ARM_JOINTS + FINGER_JOINTS)
    assert q.tolist() == list(range(9)) and v.tolist() == [1.0] * 9
    np.testing.assert_array_equal(m.image_array(m.from_rclpy(m.to_rclpy(*cases[3]))), image)
    np.testing.assert_array_equal(m.image_array(m.from_rclpy(m.to_rclpy(*cases[4]))), image)
    point = m.from_rclpy(m.to_rclpy(*cases[5]))["points"][0]
    assert point["positions"] == pytest.approx([0.1 * i for i in range(7)])
    assert point["time_from_start"] == {"secs": 0, "nsecs": 50_000_000}
    assert m.from_rclpy(m.to_rclpy(*cases[6])) == {"data": 1.0}
    assert m.message_class("sensor_msgs/msg/JointState") is m.message_class("sensor_msgs/JointState")  # ROS 2 spelling
    # rosbridge on ROS 2 stamps {sec, nanosec}
    assert m.stamp_seconds({"header": {"stamp": {"sec": 3, "nanosec": 500_000_000}}}) == pytest.approx(3.5)


def test_native_means_rclpy_under_a_sourced_ros2(monkeypatch):
    monkeypatch.setenv("ROS_VERSION", "2")
    assert isinstance(make_transport("native", "x"), Ros2Transport)
    monkeypatch.setenv("ROS_VERSION", "1")
    assert isinstance(make_transport("native", "x"), NativeTransport)
    assert isinstance(make_transport("rclpy", "x", domain_id=3), Ros2Transport)
    assert isinstance(make_transport("rosbridge", "x"), RosbridgeTransport)
    with pytest.raises(ValueError, match="valid: native, rospy, rclpy, rosbridge"):
        make_transport("ros3", "x")
    with pytest.raises(ValueError, match="Unknown ROS transport 'ros3'"):
        load_robot(ROOT / "configs/robots/ros_reach.yaml", ["robot.transport=ros3"])


def test_transport_qos_and_executor_thread(graph):
    """Sensor streams are received from best-effort publishers (camera drivers' default); callbacks
    run on the transport's executor thread, never the publisher's; close removes everything."""
    received, threads = [], []
    transport = Ros2Transport("qos_test", domain_id=7)
    transport.connect()
    assert ros2_fake.STATE["domain_id"] == 7
    assert ros2_fake.STATE["signals"] is ros2_fake.SignalHandlerOptions.NO  # Ctrl-C is deploy's to handle
    transport.subscribe("/camera/front/image_raw", "sensor_msgs/Image", lambda msg: (received.append(msg), threads.append(threading.get_ident())))
    transport.subscribe("/embodied/estop", "std_msgs/Bool", received.append)
    driver = ros2_fake.Node("camera_driver")
    best_effort = ros2_fake.QoSProfile(depth=1, reliability=ros2_fake.ReliabilityPolicy.BEST_EFFORT)
    camera = driver.create_publisher(m.message_class("sensor_msgs/Image"), "/camera/front/image_raw", best_effort)
    camera.publish(m.to_rclpy("sensor_msgs/Image", m.image_message(np.zeros((2, 2, 3), np.uint8))))
    wait_for(lambda: len(received) == 1, what="a best-effort image")
    assert threads[0] != threading.get_ident() and received[0]["width"] == 2
    estop = driver.create_publisher(m.message_class("std_msgs/Bool"), "/embodied/estop", ros2_fake.QoSProfile(depth=1))
    estop.publish(m.to_rclpy("std_msgs/Bool", {"data": True}))
    wait_for(lambda: len(received) == 2, what="a reliable e-stop")
    assert received[1] == {"data": True} and not graph.refused
    transport.publish("/embodied/reset", "std_msgs/Int64", {"data": 3})  # reliable publisher, created on first use
    assert [p.qos.reliability for p in graph.publishers["/embodied/reset"]] == [ros2_fake.ReliabilityPolicy.RELIABLE]
    transport.close()
    assert not graph.subscriptions["/embodied/estop"] and not graph.publishers["/embodied/reset"]
    assert not transport._spinner.is_alive()


@pytest.fixture
def sim_node(graph):
    """The simulated arm on its own rclpy node, spinning at 20 Hz on a thread."""
    nodes, stop = [], threading.Event()

    def start(**kwargs):
        transport = Ros2Transport("embodied_sim_arm")
        transport.connect()
        node = SimArmNode(transport, **kwargs)
        node.start()
        thread = threading.Thread(target=node.spin, args=(stop,), daemon=True)
        thread.start()
        nodes.append((node, transport, thread))
        return node

    yield start
    stop.set()
    for node, transport, thread in nodes:
        thread.join(timeout=5)
        transport.close()
        node.robot.disconnect()


def test_deploy_over_rclpy_records_moves_the_arm_and_obeys_the_estop_topic(sim_node, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from policies.mlp import MLPPolicy, MLPPolicyConfig
    from real_robot.deploy import DeployConfig, deploy

    torch.manual_seed(0)
    policy = MLPPolicy(MLPPolicyConfig(obs_dim=31, action_dim=7, hidden_sizes=(16,)))
    with torch.no_grad():  # an untrained policy that moves: +x at half speed, gripper open
        policy.actor[-1].bias.copy_(torch.tensor([0.5, 0, 0, 0, 0, 0, 1.0]))
    policy.save_pretrained(tmp_path / "policy")
    node = sim_node(task="Reach")
    robot = load_robot(ROOT / "configs/robots/ros_reach.yaml", ["robot.transport=rclpy", "safety.watchdog_timeout_s=0.2"])
    cfg = DeployConfig(policy=str(tmp_path / "policy"), episodes=2, max_steps=10, seed=5, record=str(tmp_path / "d"),
                       intervention="none", display=False)
    summary = deploy(robot, cfg)
    assert summary["aborted"] is None and summary["episodes"] == 2 and summary["steps"] == 20
    assert summary["safety_events"].get("reject", 0) <= 5
    assert node.commands_applied >= 15  # commands crossed the graph and moved the simulated arm
    dataset = LeRobotDataset("local/deploy", root=tmp_path / "d")
    assert dataset.num_frames == 20
    states = np.stack([dataset[i]["observation.state"].numpy() for i in range(10)])
    assert states[-1, 18] - states[0, 18] > 0.02  # the arm moved along +x under the policy

    robot.connect()
    estop = Ros2Transport("estop_button")
    estop.connect()
    estop.publish("/embodied/estop", "std_msgs/Bool", {"data": True})
    wait_for(lambda: robot.estopped, what="e-stop from the topic")
    robot.send_action({"action": np.zeros(7, dtype=np.float32)})
    assert [e.kind for e in robot.events][-2:] == ["estop", "reject"]
    robot.disconnect()
    estop.close()


def test_joint_position_commands_drive_a_position_controlled_sim_arm(sim_node):
    """command_kind joint_position: RosRobot publishes JointTrajectory targets, the node (sims'
    joint_delta controller underneath) moves the joints towards them at 0.1 rad per step."""
    from real_robot.ros.bridge import RosRobot, TopicConfig

    node = sim_node(task="Reach", controller="joint_delta")
    base = load_robot(ROOT / "configs/robots/ros_reach.yaml", ["robot.transport=rclpy"]).robot.cfg
    import dataclasses

    cfg = dataclasses.replace(base, command_kind="joint_position",
                              command=TopicConfig("/embodied/joint_command", "trajectory_msgs/JointTrajectory"))
    robot = RosRobot(cfg)
    robot.connect()
    start = robot.get_observation()["observation.state"][:7].copy()
    goal = start.copy()
    goal[0] += 0.3
    goal[3] -= 0.2
    action = np.concatenate([goal, [1.0]]).astype(np.float32)
    for _ in range(12):
        robot.send_action({"action": action})
        time.sleep(1 / 20)
    wait_for(lambda: abs(robot.get_observation()["observation.state"][0] - goal[0]) < 0.03, 3.0, "joint 1 at its goal")
    q = robot.get_observation()["observation.state"][:7]
    np.testing.assert_allclose(q, goal, atol=0.05)
    assert node.commands_applied >= 4
    robot.disconnect()
