"""A stand-in for ROS 2's Python layer (`rclpy` and the generated message packages), for testing
`Ros2Transport` where no ROS 2 install exists (neither PyPI nor Debian bookworm has one).

It copies the behaviour that code written against rclpy can get wrong:

- messages are rosidl-generated classes: fields listed by ``get_fields_and_field_types()``
  with ROS 2 type strings, slot-backed properties whose setters assert the type (an int in a
  ``double`` field fails), numeric sequences stored as ``array.array``, ``builtin_interfaces``
  Time / Duration with ``sec`` / ``nanosec``, headers without ``seq``;
- a publisher accepts only its own message class; delivery is by topic AND type;
- QoS: a RELIABLE subscription receives nothing from a BEST_EFFORT publisher (DDS's rule);
  KEEP_LAST depth bounds each subscription's queue;
- callbacks run only inside an executor's ``spin_once`` on the thread that spins it, each on
  its own copy of the message (as if it had been serialised).

`install(monkeypatch)` puts the fake modules in ``sys.modules``.
"""

from __future__ import annotations

import array
import collections
import copy
import enum
import sys
import threading
import time
import types
from typing import Any

# ----------------------------------------------------------------------------- messages
FIELDS: dict[str, dict[str, str]] = {
    "builtin_interfaces/Time": {"sec": "int32", "nanosec": "uint32"},
    "builtin_interfaces/Duration": {"sec": "int32", "nanosec": "uint32"},
    "std_msgs/Header": {"stamp": "builtin_interfaces/Time", "frame_id": "string"},
    "std_msgs/Bool": {"data": "boolean"},
    "std_msgs/Float64": {"data": "double"},
    "std_msgs/Int64": {"data": "int64"},
    "std_msgs/MultiArrayDimension": {"label": "string", "size": "uint32", "stride": "uint32"},
    "std_msgs/MultiArrayLayout": {"dim": "sequence<std_msgs/MultiArrayDimension>", "data_offset": "uint32"},
    "std_msgs/Float64MultiArray": {"layout": "std_msgs/MultiArrayLayout", "data": "sequence<double>"},
    "sensor_msgs/JointState": {"header": "std_msgs/Header", "name": "sequence<string>", "position": "sequence<double>",
                               "velocity": "sequence<double>", "effort": "sequence<double>"},
    "sensor_msgs/Image": {"header": "std_msgs/Header", "height": "uint32", "width": "uint32", "encoding": "string",
                          "is_bigendian": "uint8", "step": "uint32", "data": "sequence<uint8>"},
    "sensor_msgs/CompressedImage": {"header": "std_msgs/Header", "format": "string", "data": "sequence<uint8>"},
    "geometry_msgs/Point": {"x": "double", "y": "double", "z": "double"},
    "geometry_msgs/Quaternion": {"x": "double", "y": "double", "z": "double", "w": "double"},
    "geometry_msgs/Pose": {"position": "geometry_msgs/Point", "orientation": "geometry_msgs/Quaternion"},
    "geometry_msgs/PoseStamped": {"header": "std_msgs/Header", "pose": "geometry_msgs/Pose"},
    "trajectory_msgs/JointTrajectoryPoint": {
        "positions": "sequence<double>", "velocities": "sequence<double>", "accelerations": "sequence<double>",
        "effort": "sequence<double>", "time_from_start": "builtin_interfaces/Duration"},
    "trajectory_msgs/JointTrajectory": {"header": "std_msgs/Header", "joint_names": "sequence<string>",
                                        "points": "sequence<trajectory_msgs/JointTrajectoryPoint>"},
}
INTS = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
CLASSES: dict[str, type] = {}


def _check(field: str, kind: str, value: Any) -> Any:
    """rosidl's setter: assert the type, store numeric sequences as array.array."""
    if kind.startswith("sequence<"):
        element = kind[len("sequence<") : -1]
        if element == "double":
            if isinstance(value, array.array):
                assert value.typecode == "d", f"The '{field}' array.array() must have the type code of 'd'"
                return value
            assert all(isinstance(v, float) for v in value), f"The '{field}' field must be a set or sequence of float"
            return array.array("d", value)
        if element == "uint8":
            if isinstance(value, array.array):
                assert value.typecode == "B", f"The '{field}' array.array() must have the type code of 'B'"
                return value
            assert all(isinstance(v, int) and 0 <= v < 256 for v in value), f"The '{field}' field must be uint8s"
            return array.array("B", value)
        if element == "string":
            assert all(isinstance(v, str) for v in value), f"The '{field}' field must be a sequence of str"
            return list(value)
        assert all(isinstance(v, CLASSES[element]) for v in value), f"The '{field}' field must be {element}s"
        return list(value)
    if kind == "double":
        assert isinstance(value, float), f"The '{field}' field must be of type 'float'"
    elif kind in INTS:
        assert isinstance(value, int) and not isinstance(value, bool), f"The '{field}' field must be of type 'int'"
    elif kind == "boolean":
        assert isinstance(value, bool), f"The '{field}' field must be of type 'bool'"
    elif kind == "string":
        assert isinstance(value, str), f"The '{field}' field must be of type 'str'"
    else:
        assert isinstance(value, CLASSES[kind]), f"The '{field}' field must be a sub message of type '{kind}'"
    return value


def _default(kind: str) -> Any:
    if kind.startswith("sequence<"):
        return _check("default", kind, [])
    return {"double": 0.0, "boolean": False, "string": ""}.get(kind, 0) if kind in (*INTS, "double", "boolean", "string") \
        else message_class(kind)()


def _property(field: str, kind: str) -> property:
    def get(self):
        return getattr(self, "_" + field)

    def set_(self, value):
        setattr(self, "_" + field, _check(field, kind, value))

    return property(get, set_)


def message_class(type_name: str) -> type:
    if type_name not in CLASSES:
        fields = FIELDS[type_name]
        def __init__(self, **values):
            for field, kind in fields.items():
                setattr(self, field, values[field] if field in values else _default(kind))

        namespace: dict[str, Any] = {
            "__slots__": tuple("_" + f for f in fields),
            "_fields_and_field_types": dict(fields),
            "get_fields_and_field_types": classmethod(lambda cls: dict(cls._fields_and_field_types)),
            "__init__": __init__,
            "__eq__": lambda self, other: type(self) is type(other)
            and all(getattr(self, f) == getattr(other, f) for f in fields),
            "__repr__": lambda self: f"{type_name}({', '.join(f'{f}={getattr(self, f)!r}' for f in fields)})",
        }
        namespace.update({f: _property(f, k) for f, k in fields.items()})
        CLASSES[type_name] = type(type_name.split("/")[1], (), namespace)
    return CLASSES[type_name]


# ----------------------------------------------------------------------------- qos
class ReliabilityPolicy(enum.Enum):
    RELIABLE = 1
    BEST_EFFORT = 2


class HistoryPolicy(enum.Enum):
    KEEP_LAST = 1
    KEEP_ALL = 2


class QoSProfile:
    def __init__(self, *, depth: int = 10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE):
        self.depth, self.history, self.reliability = depth, history, reliability


qos_profile_sensor_data = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)


# ----------------------------------------------------------------------------- the graph
class Graph:
    """Every publisher and subscription of the process, by topic."""

    def __init__(self):
        self.lock = threading.Lock()
        self.subscriptions: dict[str, list[Subscription]] = collections.defaultdict(list)
        self.publishers: dict[str, list[Publisher]] = collections.defaultdict(list)
        self.delivered = 0
        self.refused: list[str] = []  # why a publish reached a subscription's topic but not the subscription


GRAPH = Graph()
STATE: dict[str, Any] = {"ok": False, "init_calls": 0, "domain_id": None, "signals": None}


class Publisher:
    def __init__(self, node: Node, msg_type: type, topic: str, qos: QoSProfile):
        self.node, self.msg_type, self.topic, self.qos = node, msg_type, topic, qos

    def publish(self, message) -> None:
        if not isinstance(message, self.msg_type):
            raise TypeError(f"Expected {self.msg_type.__name__}, got {type(message).__name__}")
        with GRAPH.lock:
            subscriptions = list(GRAPH.subscriptions[self.topic])
        for subscription in subscriptions:
            if subscription.msg_type is not self.msg_type:
                GRAPH.refused.append(f"{self.topic}: type {self.msg_type.__name__} != {subscription.msg_type.__name__}")
            elif (subscription.qos.reliability is ReliabilityPolicy.RELIABLE
                  and self.qos.reliability is ReliabilityPolicy.BEST_EFFORT):
                GRAPH.refused.append(f"{self.topic}: reliable subscription, best-effort publisher")
            else:
                subscription.node.deliver(subscription, copy.deepcopy(message))


class Subscription:
    def __init__(self, node: Node, msg_type: type, topic: str, callback, qos: QoSProfile):
        self.node, self.msg_type, self.topic, self.callback, self.qos = node, msg_type, topic, callback, qos
        self.queue: collections.deque = collections.deque(maxlen=qos.depth)


class Node:
    def __init__(self, node_name: str):
        if not STATE["ok"]:
            raise RuntimeError("rclpy.init() has not been called")
        if not node_name.replace("_", "").isalnum():
            raise ValueError(f"Invalid node name {node_name!r}")
        self.name = node_name
        self.ready = threading.Condition()
        self.subscriptions: list[Subscription] = []
        self.publishers: list[Publisher] = []
        self.destroyed = False

    def create_publisher(self, msg_type, topic, qos_profile):
        publisher = Publisher(self, msg_type, topic, qos_profile)
        self.publishers.append(publisher)
        with GRAPH.lock:
            GRAPH.publishers[topic].append(publisher)
        return publisher

    def create_subscription(self, msg_type, topic, callback, qos_profile):
        subscription = Subscription(self, msg_type, topic, callback, qos_profile)
        self.subscriptions.append(subscription)
        with GRAPH.lock:
            GRAPH.subscriptions[topic].append(subscription)
        return subscription

    def destroy_publisher(self, publisher) -> bool:
        with GRAPH.lock:
            GRAPH.publishers[publisher.topic].remove(publisher)
        self.publishers.remove(publisher)
        return True

    def destroy_subscription(self, subscription) -> bool:
        with GRAPH.lock:
            GRAPH.subscriptions[subscription.topic].remove(subscription)
        self.subscriptions.remove(subscription)
        return True

    def destroy_node(self) -> None:
        for publisher in list(self.publishers):
            self.destroy_publisher(publisher)
        for subscription in list(self.subscriptions):
            self.destroy_subscription(subscription)
        self.destroyed = True

    def deliver(self, subscription: Subscription, message) -> None:
        with self.ready:
            subscription.queue.append(message)
            self.ready.notify_all()

    def take(self):
        for subscription in self.subscriptions:
            if subscription.queue:
                return subscription, subscription.queue.popleft()
        return None


class SingleThreadedExecutor:
    def __init__(self):
        self.nodes: list[Node] = []
        self.spinning_threads: set[int] = set()

    def add_node(self, node: Node) -> bool:
        self.nodes.append(node)
        return True

    def spin_once(self, timeout_sec: float | None = None) -> None:
        self.spinning_threads.add(threading.get_ident())
        deadline = time.monotonic() + (timeout_sec if timeout_sec is not None else 1e9)
        while True:
            for node in self.nodes:
                with node.ready:
                    work = node.take()
                if work is not None:
                    subscription, message = work
                    subscription.callback(message)
                    GRAPH.delivered += 1
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.nodes:
                return
            node = self.nodes[0]
            with node.ready:
                node.ready.wait(min(remaining, 0.01))

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        self.nodes.clear()
        return True


# ----------------------------------------------------------------------------- rclpy itself
class SignalHandlerOptions(enum.Enum):
    NO = 0
    SIGINT = 1
    SIGTERM = 2
    ALL = 3


def init(*, args=None, context=None, domain_id: int | None = None,
         signal_handler_options: SignalHandlerOptions | None = None) -> None:
    if STATE["ok"]:
        raise RuntimeError("Context.init() must only be called once")
    STATE.update(ok=True, init_calls=STATE["init_calls"] + 1, domain_id=domain_id,
                 signals=signal_handler_options or SignalHandlerOptions.ALL)


def ok(context=None) -> bool:
    return STATE["ok"]


def shutdown(context=None) -> None:
    STATE["ok"] = False


def create_node(node_name: str, **kwargs) -> Node:
    return Node(node_name)


def install(monkeypatch) -> Graph:
    """Put a fresh fake rclpy and message packages into sys.modules; returns the graph."""
    global GRAPH
    GRAPH = Graph()
    STATE.update(ok=False, init_calls=0, domain_id=None, signals=None)
    rclpy = types.ModuleType("rclpy")
    rclpy.init, rclpy.ok, rclpy.shutdown, rclpy.create_node = init, ok, shutdown, create_node
    executors = types.ModuleType("rclpy.executors")
    executors.SingleThreadedExecutor = SingleThreadedExecutor
    qos = types.ModuleType("rclpy.qos")
    qos.QoSProfile, qos.ReliabilityPolicy, qos.HistoryPolicy = QoSProfile, ReliabilityPolicy, HistoryPolicy
    qos.qos_profile_sensor_data = qos_profile_sensor_data
    node = types.ModuleType("rclpy.node")
    node.Node = Node
    signals = types.ModuleType("rclpy.signals")
    signals.SignalHandlerOptions = SignalHandlerOptions
    rclpy.executors, rclpy.qos, rclpy.node, rclpy.signals = executors, qos, node, signals
    modules = {"rclpy": rclpy, "rclpy.executors": executors, "rclpy.qos": qos, "rclpy.node": node, "rclpy.signals": signals}
    for type_name in FIELDS:
        package, name = type_name.split("/")
        modules.setdefault(package, types.ModuleType(package))
        msg = modules.setdefault(f"{package}.msg", types.ModuleType(f"{package}.msg"))
        modules[package].msg = msg
        setattr(msg, name, message_class(type_name))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return GRAPH


__all__ = ["Graph", "install", "message_class"]
