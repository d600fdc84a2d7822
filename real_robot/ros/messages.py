"""ROS messages as plain dicts (rosbridge's JSON layout), the one form the bridge handles.

rosbridge and `roslibpy` already speak dicts; `to_rospy` / `from_rospy` convert native
rospy (ROS 1) messages and `to_rclpy` / `from_rclpy` ROS 2 messages to and from the same
layout (``uint8[]`` fields as bytes natively, base64 strings over rosbridge; `as_bytes`
accepts both). ROS 1 stamps are ``{secs, nsecs}``, ROS 2's ``{sec, nanosec}``: dicts from
ROS 2 carry the ROS 1 names, `to_rclpy` and `stamp_seconds` accept both, and ROS 2 headers
have no ``seq`` (dropped). Also the conversions between the arm's
messages and `observation.*` arrays: joint states, poses (ROS quaternions are x, y, z, w;
`sims` uses w, x, y, z), raw and compressed images.
"""

from __future__ import annotations

import array
import base64
import io
import time
from typing import Any

import numpy as np

MESSAGE_TYPES = (
    "sensor_msgs/JointState", "sensor_msgs/Image", "sensor_msgs/CompressedImage", "geometry_msgs/PoseStamped",
    "std_msgs/Float64MultiArray", "std_msgs/Float64", "std_msgs/Bool", "std_msgs/Int64",
    "trajectory_msgs/JointTrajectory",
)


def message_class(type_name: str):
    """The rospy or rclpy class of ``package/Type`` (ROS 2's ``package/msg/Type`` too)."""
    import importlib

    package, _, name = type_name.partition("/")
    name = name.removeprefix("msg/")
    if not package or not name or "/" in name:
        raise ValueError(f"ROS message types look like package/Type; got {type_name!r}.")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def from_rospy(message: Any) -> Any:
    """A rospy message (or field value) as a dict / list / scalar in rosbridge's layout."""
    if hasattr(message, "__slots__") and hasattr(message, "_slot_types"):
        return {slot: from_rospy(getattr(message, slot)) for slot in message.__slots__}
    if hasattr(message, "secs") and hasattr(message, "nsecs"):  # rospy.Time / Duration
        return {"secs": int(message.secs), "nsecs": int(message.nsecs)}
    if isinstance(message, (list, tuple)):
        return [from_rospy(v) for v in message]
    return message


def to_rospy(type_name: str, data: dict[str, Any]):
    """A rospy message of `type_name` filled from a rosbridge-layout dict."""
    return _fill(message_class(type_name)(), data)


def _fill(message: Any, data: dict[str, Any]):
    import genpy

    for slot, slot_type in zip(message.__slots__, message._slot_types, strict=True):
        if slot not in data:
            continue
        value = data[slot]
        current = getattr(message, slot)
        if slot_type in ("time", "duration"):
            cls = genpy.Time if slot_type == "time" else genpy.Duration
            setattr(message, slot, cls(int(value.get("secs", 0)), int(value.get("nsecs", 0))))
        elif hasattr(current, "__slots__") and hasattr(current, "_slot_types"):
            _fill(current, value)
        elif slot_type.endswith("]") and "/" in slot_type:  # an array of messages
            item_type = slot_type[: slot_type.index("[")]
            setattr(message, slot, [_fill(message_class(item_type)(), v) for v in value])
        elif slot_type.startswith("uint8[") or slot_type.startswith("char["):
            setattr(message, slot, as_bytes(value))
        else:
            setattr(message, slot, value)
    return message


# ------------------------------------------------------------------ ROS 2 (rclpy)
ROS2_TIME_TYPES = ("builtin_interfaces/Time", "builtin_interfaces/Duration")
ROS2_FLOAT_TYPES = ("double", "float", "float64", "float32")
ROS2_INT_TYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "byte", "octet", "char")


def from_rclpy(message: Any) -> Any:
    """An rclpy message (or field value) as a dict / list / scalar in rosbridge's ROS 1 layout:
    ``builtin_interfaces`` Time / Duration as ``{secs, nsecs}``, ``uint8`` arrays as bytes."""
    fields = getattr(message, "get_fields_and_field_types", None)
    if fields is not None:
        names = list(fields())
        if names == ["sec", "nanosec"]:
            return {"secs": int(message.sec), "nsecs": int(message.nanosec)}
        return {name: from_rclpy(getattr(message, name)) for name in names}
    if isinstance(message, array.array):
        return message.tobytes() if message.typecode == "B" else message.tolist()
    if isinstance(message, np.ndarray):  # rclpy's fixed-size numeric arrays
        return message.tobytes() if message.dtype == np.uint8 else message.tolist()
    if isinstance(message, (list, tuple)):
        return [from_rclpy(v) for v in message]
    return message


def to_rclpy(type_name: str, data: dict[str, Any]):
    """An rclpy message of `type_name` filled from a rosbridge-layout dict (either stamp naming).
    Values are cast to each field's type: rclpy's setters reject an int for a float field."""
    return _fill_rclpy(message_class(type_name)(), data)


def _ros2_element(field_type: str) -> tuple[str, bool]:
    """(element type, is an array) of a ROS 2 field type such as ``sequence<double, 3>``,
    ``double[9]``, ``sequence<std_msgs/Header>`` or ``string<=10``."""
    if field_type.startswith("sequence<"):
        return field_type[len("sequence<") : -1].split(",")[0].strip(), True
    if field_type.endswith("]"):
        return field_type[: field_type.index("[")], True
    return field_type, False


def _ros2_scalar(element: str, value: Any) -> Any:
    if element in ROS2_FLOAT_TYPES:
        return float(value)
    if element in ROS2_INT_TYPES:
        return int(value)
    if element == "boolean":
        return bool(value)
    if element.startswith("string") or element.startswith("wstring"):
        return str(value)
    return value


def _fill_rclpy(message: Any, data: dict[str, Any]):
    for name, field_type in message.get_fields_and_field_types().items():
        if field_type in ROS2_TIME_TYPES and name in data:
            value = data[name]
            seconds = int(value.get("sec", value.get("secs", 0)))
            nanoseconds = int(value.get("nanosec", value.get("nsecs", 0)))
            setattr(message, name, message_class(field_type)(sec=seconds, nanosec=nanoseconds))
            continue
        if name not in data:
            continue
        value = data[name]
        element, is_array = _ros2_element(field_type)
        if "/" in element:  # nested message(s)
            if is_array:
                setattr(message, name, [_fill_rclpy(message_class(element)(), v) for v in value])
            else:
                _fill_rclpy(getattr(message, name), value)
        elif is_array and element in ("uint8", "char"):
            setattr(message, name, array.array("B", as_bytes(value)))
        elif is_array and element == "octet":
            setattr(message, name, [bytes([b]) for b in as_bytes(value)])
        elif is_array and element in ("double", "float64"):
            setattr(message, name, array.array("d", (float(v) for v in value)))
        elif is_array and element in ("float", "float32"):
            setattr(message, name, array.array("f", (float(v) for v in value)))
        elif is_array:
            setattr(message, name, [_ros2_scalar(element, v) for v in value])
        else:
            setattr(message, name, _ros2_scalar(element, value))
    return message


def as_bytes(value: Any) -> bytes:
    """``uint8[]`` data: bytes natively, a base64 string over rosbridge, or a list of ints."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, array.array):
        return value.tobytes()
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(bytearray(value))


def stamp(seconds: float | None = None) -> dict[str, int]:
    seconds = time.time() if seconds is None else seconds
    secs = int(seconds)
    return {"secs": secs, "nsecs": int(round((seconds - secs) * 1e9))}


def stamp_seconds(message: dict[str, Any]) -> float | None:
    """The header stamp of a message in seconds, or None for headerless messages. ROS 1's
    ``{secs, nsecs}`` and ROS 2's ``{sec, nanosec}`` (rosbridge on ROS 2 sends those) alike."""
    header = message.get("header") if isinstance(message, dict) else None
    if not isinstance(header, dict) or "stamp" not in header:
        return None
    s = header["stamp"]
    return float(s.get("secs", s.get("sec", 0))) + float(s.get("nsecs", s.get("nanosec", 0))) * 1e-9


def header(frame_id: str = "", seconds: float | None = None) -> dict[str, Any]:
    return {"seq": 0, "stamp": stamp(seconds), "frame_id": frame_id}


# ------------------------------------------------------------------ arm messages
def joint_state(names: list[str], position, velocity, seconds: float | None = None) -> dict[str, Any]:
    return {
        "header": header("", seconds), "name": list(names), "position": [float(v) for v in position],
        "velocity": [float(v) for v in velocity], "effort": [],
    }


def joints_from_state(message: dict[str, Any], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(positions, velocities) of `names`, in that order, from a JointState dict."""
    index = {name: i for i, name in enumerate(message.get("name", []))}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"JointState lacks joints {missing}; it has {list(index)}.")
    position = message.get("position") or []
    velocity = message.get("velocity") or []
    q = np.array([position[index[n]] for n in names], dtype=np.float32)
    v = np.array([velocity[index[n]] if len(velocity) > index[n] else 0.0 for n in names], dtype=np.float32)
    return q, v


def pose_stamped(position, quaternion_wxyz, frame_id: str = "world", seconds: float | None = None) -> dict[str, Any]:
    w, x, y, z = (float(v) for v in quaternion_wxyz)
    px, py, pz = (float(v) for v in position)
    return {
        "header": header(frame_id, seconds),
        "pose": {"position": {"x": px, "y": py, "z": pz}, "orientation": {"x": x, "y": y, "z": z, "w": w}},
    }


def pose_arrays(message: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quaternion w, x, y, z (4,)) of a PoseStamped dict."""
    p, o = message["pose"]["position"], message["pose"]["orientation"]
    return (
        np.array([p["x"], p["y"], p["z"]], dtype=np.float32),
        np.array([o["w"], o["x"], o["y"], o["z"]], dtype=np.float32),
    )


def float_array(values, seconds: float | None = None) -> dict[str, Any]:
    return {"layout": {"dim": [], "data_offset": 0}, "data": [float(v) for v in np.asarray(values).reshape(-1)]}


def image_message(image: np.ndarray, compressed: bool = False, frame_id: str = "camera", seconds: float | None = None) -> dict[str, Any]:
    """A uint8 (H, W, 3) image as sensor_msgs/Image (rgb8) or CompressedImage (png)."""
    if compressed:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return {"header": header(frame_id, seconds), "format": "png", "data": buffer.getvalue()}
    h, w = image.shape[:2]
    return {
        "header": header(frame_id, seconds), "height": h, "width": w, "encoding": "rgb8", "is_bigendian": 0,
        "step": w * 3, "data": np.ascontiguousarray(image, dtype=np.uint8).tobytes(),
    }


def image_array(message: dict[str, Any]) -> np.ndarray:
    """uint8 (H, W, 3) from a raw (rgb8 / bgr8) or compressed image dict."""
    data = as_bytes(message["data"])
    if "encoding" in message:
        h, w, encoding = int(message["height"]), int(message["width"]), message["encoding"]
        if encoding not in ("rgb8", "bgr8"):
            raise ValueError(f"Image encoding {encoding!r} is not supported (rgb8, bgr8).")
        step = int(message.get("step") or w * 3)
        rows = np.frombuffer(data, dtype=np.uint8)[: h * step].reshape(h, step)[:, : w * 3]
        image = rows.reshape(h, w, 3)
        return np.ascontiguousarray(image[..., ::-1] if encoding == "bgr8" else image)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def jsonable(message: Any) -> Any:
    """A dict with bytes turned into base64 strings, for rosbridge's JSON."""
    if isinstance(message, dict):
        return {k: jsonable(v) for k, v in message.items()}
    if isinstance(message, list):
        return [jsonable(v) for v in message]
    if isinstance(message, (bytes, bytearray)):
        return base64.b64encode(bytes(message)).decode()
    return message
