"""ROS messages as plain dicts (rosbridge's JSON layout), the one form the bridge handles.

rosbridge and `roslibpy` already speak dicts; `to_rospy` / `from_rospy` convert native
rospy messages to and from the same layout (``uint8[]`` fields as bytes natively, base64
strings over rosbridge; `as_bytes` accepts both). Also the conversions between the arm's
messages and `observation.*` arrays: joint states, poses (ROS quaternions are x, y, z, w;
`sims` uses w, x, y, z), raw and compressed images.
"""

from __future__ import annotations

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
    """The rospy class of ``package/Type``."""
    import importlib

    package, _, name = type_name.partition("/")
    if not name:
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


def as_bytes(value: Any) -> bytes:
    """``uint8[]`` data: bytes natively, a base64 string over rosbridge, or a list of ints."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(bytearray(value))


def stamp(seconds: float | None = None) -> dict[str, int]:
    seconds = time.time() if seconds is None else seconds
    secs = int(seconds)
    return {"secs": secs, "nsecs": int(round((seconds - secs) * 1e9))}


def stamp_seconds(message: dict[str, Any]) -> float | None:
    """The header stamp of a message in seconds, or None for headerless messages."""
    header = message.get("header") if isinstance(message, dict) else None
    if not isinstance(header, dict) or "stamp" not in header:
        return None
    s = header["stamp"]
    return float(s.get("secs", 0)) + float(s.get("nsecs", 0)) * 1e-9


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
