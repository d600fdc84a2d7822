"""Three ways to reach a ROS graph behind one interface: native rospy (ROS 1), native rclpy
(ROS 2), or rosbridge (websocket, `roslibpy`), which reaches ROS 1 or ROS 2 from a plain pip
install. All hand messages to callbacks as rosbridge-layout dicts (see
`real_robot.ros.messages`). `make_transport` picks one by name; ``native`` means rclpy when
a sourced ROS 2 environment says so (``ROS_VERSION=2``) and rospy otherwise.
"""

from __future__ import annotations

import abc
import glob
import itertools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from real_robot.ros.messages import from_rclpy, from_rospy, jsonable, to_rclpy, to_rospy

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
TRANSPORTS = ("native", "rospy", "rclpy", "rosbridge")

Callback = Callable[[dict[str, Any]], None]


def import_rospy():
    """`rospy`, from Debian's ROS packages when the venv has none: Debian's dist-packages go at
    the END of sys.path, so the venv's own packages (numpy, yaml) still win."""
    try:
        import rospy
    except ImportError:
        if os.path.isdir(DEBIAN_DIST_PACKAGES) and DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_DIST_PACKAGES)
        try:
            import rospy
        except ImportError as error:
            raise ImportError(
                "rospy is not importable: install Debian's ROS 1 packages (apt-get install ros-core python3-rospy "
                "python3-sensor-msgs python3-std-msgs python3-trajectory-msgs python3-geometry-msgs) or use "
                f"transport: rosbridge. ({error})"
            ) from None
    return rospy


def import_rclpy():
    """`rclpy`, from a ROS 2 install when the venv has none: ``/opt/ros/<distro>`` puts it in
    ``lib/python3.X/site-packages`` (appended to sys.path, the venv's packages still win).
    Its message libraries also need the install's environment: source its setup.bash first."""
    try:
        import rclpy
    except ImportError:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for directory in sorted(glob.glob(f"/opt/ros/*/lib/{version}/site-packages")):
            if directory not in sys.path:
                sys.path.append(directory)
        try:
            import rclpy
        except ImportError as error:
            raise ImportError(
                f"rclpy is not importable: install ROS 2 for this Python ({version}; Jazzy on Ubuntu 24.04 uses "
                "3.12) and `source /opt/ros/<distro>/setup.bash` before running, or use transport: rosbridge. "
                f"({error})"
            ) from None
    return rclpy


class Transport(abc.ABC):
    """Publish / subscribe on a ROS graph with dict messages."""

    @abc.abstractmethod
    def connect(self, timeout_s: float = 10.0) -> None: ...

    @abc.abstractmethod
    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None: ...

    @abc.abstractmethod
    def publish(self, topic: str, type_name: str, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


_NODE_LOCK = threading.Lock()
_NODE_STARTED = False


class NativeTransport(Transport):
    """rospy: one node per process (``rospy.init_node`` once), publishers created on first use."""

    def __init__(self, node_name: str = "embodied", master_uri: str = ""):
        self.node_name, self.master_uri = node_name, master_uri
        self.rospy: Any = None  # the rospy module (untyped), once connected
        self._publishers: dict[str, Any] = {}
        self._subscribers: list[Any] = []

    def connect(self, timeout_s: float = 10.0) -> None:
        global _NODE_STARTED
        if self.master_uri:
            os.environ["ROS_MASTER_URI"] = self.master_uri
        rospy = self.rospy = import_rospy()
        with _NODE_LOCK:
            if not _NODE_STARTED:
                import rosgraph

                if not rosgraph.is_master_online():
                    raise ConnectionError(f"No ROS master at {os.environ.get('ROS_MASTER_URI', 'http://localhost:11311')}.")
                rospy.init_node(self.node_name, anonymous=True, disable_signals=True)
                _NODE_STARTED = True

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        from real_robot.ros.messages import message_class

        self._subscribers.append(
            self.rospy.Subscriber(topic, message_class(type_name), lambda m: callback(from_rospy(m)), queue_size=1)
        )

    def publish(self, topic: str, type_name: str, message: dict[str, Any]) -> None:
        from real_robot.ros.messages import message_class

        publisher = self._publishers.get(topic)
        if publisher is None:
            publisher = self._publishers[topic] = self.rospy.Publisher(topic, message_class(type_name), queue_size=1)
        publisher.publish(to_rospy(type_name, message))

    def advertise(self, topic: str, type_name: str) -> None:
        """Create the publisher now (subscribers need a moment to connect to it)."""
        from real_robot.ros.messages import message_class

        if topic not in self._publishers:
            self._publishers[topic] = self.rospy.Publisher(topic, message_class(type_name), queue_size=1)

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.unregister()
        for publisher in self._publishers.values():
            publisher.unregister()
        self._subscribers.clear()
        self._publishers.clear()


_RCLPY_LOCK = threading.Lock()
_RCLPY_NODES = itertools.count()
SENSOR_TYPES = ("sensor_msgs/", "geometry_msgs/PoseStamped", "std_msgs/Float64MultiArray")


class Ros2Transport(Transport):
    """rclpy: one node per transport, its callbacks run by an executor on a daemon thread.

    Quality of service: subscriptions to sensor streams (``sensor_msgs/*``, poses, float
    vectors) are best-effort with depth 1, which matches both reliable and best-effort
    publishers (camera drivers often publish best-effort, and a reliable subscription would
    silently receive nothing from them); every other subscription (e-stop, reset, episode
    status) and every publisher is reliable with depth 1.
    """

    def __init__(self, node_name: str = "embodied", domain_id: int | None = None):
        self.node_name, self.domain_id = node_name, domain_id
        # rclpy (untyped), its node and executor, once connected
        self.rclpy: Any = None
        self.node: Any = None
        self.executor: Any = None
        self._publishers: dict[str, Any] = {}
        self._subscriptions: list[Any] = []
        self._stop = threading.Event()
        self._spinner: threading.Thread | None = None

    def connect(self, timeout_s: float = 10.0) -> None:
        rclpy = self.rclpy = import_rclpy()
        from rclpy.executors import SingleThreadedExecutor

        with _RCLPY_LOCK:
            if not rclpy.ok():
                options: dict[str, Any] = {} if self.domain_id is None else {"domain_id": self.domain_id}
                try:  # as rospy's disable_signals: Ctrl-C must reach deploy, which holds the arm,
                    from rclpy.signals import SignalHandlerOptions  # not shut rclpy down first

                    options["signal_handler_options"] = SignalHandlerOptions.NO
                except ImportError:  # rclpy before Humble installs no handler to turn off
                    pass
                rclpy.init(**options)
            # ROS 2 node names are unique by convention (no anonymous flag): make this one so
            self.node = rclpy.create_node(f"{self.node_name}_{os.getpid()}_{next(_RCLPY_NODES)}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._stop.clear()
        self._spinner = threading.Thread(target=self._spin, name=f"rclpy-{self.node_name}", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _qos(self, type_name: str, subscription: bool):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        best_effort = subscription and type_name.startswith(SENSOR_TYPES)
        reliability = ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        from real_robot.ros.messages import message_class

        self._subscriptions.append(self.node.create_subscription(
            message_class(type_name), topic, lambda message: callback(from_rclpy(message)), self._qos(type_name, True)
        ))

    def advertise(self, topic: str, type_name: str) -> None:
        """Create the publisher now (subscribers need a moment to discover it)."""
        from real_robot.ros.messages import message_class

        if topic not in self._publishers:
            self._publishers[topic] = self.node.create_publisher(message_class(type_name), topic, self._qos(type_name, False))

    def publish(self, topic: str, type_name: str, message: dict[str, Any]) -> None:
        self.advertise(topic, type_name)
        self._publishers[topic].publish(to_rclpy(type_name, message))

    def close(self) -> None:
        """Stop the executor thread and destroy the node (rclpy itself stays initialised: other
        nodes of this process may still use it)."""
        if self.node is None:
            return
        self._stop.set()
        if self._spinner is not None:
            self._spinner.join(timeout=2.0)
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        for publisher in self._publishers.values():
            self.node.destroy_publisher(publisher)
        self._subscriptions.clear()
        self._publishers.clear()
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.node = None


def make_transport(kind: str, node_name: str, *, master_uri: str = "", domain_id: int | None = None,
                   rosbridge_host: str = "127.0.0.1", rosbridge_port: int = 9090) -> Transport:
    """A transport by name: native (rclpy when ``ROS_VERSION=2`` is in the environment, as a
    sourced ROS 2 setup.bash sets it, else rospy), rospy, rclpy or rosbridge."""
    if kind == "native":
        kind = "rclpy" if os.environ.get("ROS_VERSION") == "2" else "rospy"
    if kind == "rospy":
        return NativeTransport(node_name, master_uri)
    if kind == "rclpy":
        return Ros2Transport(node_name, domain_id)
    if kind == "rosbridge":
        return RosbridgeTransport(rosbridge_host, rosbridge_port)
    raise ValueError(f"Unknown ROS transport {kind!r}; valid: {', '.join(TRANSPORTS)}.")


class RosbridgeTransport(Transport):
    """rosbridge's websocket protocol through `roslibpy`."""

    @staticmethod
    def stop_event_loop() -> None:
        """Stop roslibpy's Twisted reactor (once per process, at its end: a reactor does not
        restart). Its thread pool's workers are not daemons, so without this a program that
        used rosbridge does not exit."""
        import sys

        if "twisted.internet.reactor" not in sys.modules:
            return
        from twisted.internet import reactor

        if reactor.running:
            reactor.callFromThread(reactor.stop)  # type: ignore[misc]  # zope.interface methods lack self

    def __init__(self, host: str = "127.0.0.1", port: int = 9090):
        self.host, self.port = host, port
        self.ros = None
        self._topics: dict[str, Any] = {}
        self._subscribed: list[Any] = []

    def connect(self, timeout_s: float = 10.0) -> None:
        import roslibpy

        ros = roslibpy.Ros(host=self.host, port=self.port)
        try:
            ros.run(timeout=timeout_s)
        except Exception as error:  # noqa: BLE001 - roslibpy raises several types
            raise ConnectionError(f"No rosbridge server at ws://{self.host}:{self.port}: {error}") from None
        self.ros = ros

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        import roslibpy

        subscription = roslibpy.Topic(self.ros, topic, type_name, queue_length=1)
        subscription.subscribe(lambda message: callback(dict(message)))
        self._subscribed.append(subscription)

    def publish(self, topic: str, type_name: str, message: dict[str, Any]) -> None:
        import roslibpy

        publisher = self._topics.get(topic)
        if publisher is None:
            publisher = self._topics[topic] = roslibpy.Topic(self.ros, topic, type_name, queue_size=1)
        publisher.publish(roslibpy.Message(jsonable(message)))

    def advertise(self, topic: str, type_name: str) -> None:
        import roslibpy

        if topic not in self._topics:
            self._topics[topic] = roslibpy.Topic(self.ros, topic, type_name, queue_size=1)
            self._topics[topic].advertise()

    def close(self, timeout_s: float = 3.0) -> None:
        """Unsubscribe, unadvertise and close; never blocks longer than `timeout_s` (a dead
        server can leave roslibpy waiting)."""
        if self.ros is None:
            return
        ros, self.ros = self.ros, None
        subscribed, topics = list(self._subscribed), list(self._topics.values())
        self._subscribed.clear()
        self._topics.clear()

        def shut() -> None:
            for subscription in subscribed:
                subscription.unsubscribe()
            for publisher in topics:
                publisher.unadvertise()
            ros.close()

        closer = threading.Thread(target=shut, name="rosbridge-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
