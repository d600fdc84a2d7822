"""Two ways to reach a ROS graph behind one interface: native rospy, or rosbridge (websocket,
`roslibpy`), which reaches ROS 1 or ROS 2 from a plain pip install. Both hand messages to
callbacks as rosbridge-layout dicts (see `real_robot.ros.messages`).
"""

from __future__ import annotations

import abc
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from real_robot.ros.messages import from_rospy, jsonable, to_rospy

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"

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
        self.rospy = None
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
            reactor.callFromThread(reactor.stop)

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
