"""The policy server's wire format: msgpack maps, numpy arrays as typed buffers, never pickle.

Schema version 1. Every message is a msgpack map with ``v`` (the schema version) and
``type``:

==========  ================  ========================================================
type        direction         fields
==========  ================  ========================================================
hello       client -> server  ``token`` (str or nil)
metadata    server -> client  ``metadata``: schema, policy kind, features, action_dim,
                              chunk_size, control_hz, max_message_bytes
infer       client -> server  ``id`` (int), ``obs``: {feature: array, "task": str}
action      server -> client  ``id``, ``action``: float32 (T, A) array, ``infer_ms``
error       server -> client  ``id`` (or nil), ``message``
==========  ================  ========================================================

An array is the map ``{"__ndarray__": true, "dtype": "<f4", "shape": [T, A], "data": bytes}``
(little-endian, C order). The decoder accepts only the dtypes in `ALLOWED_DTYPES`, checks
that shape and byte length agree, bounds the element count and the nesting depth, and
raises `ProtocolError` on anything else: it never executes or imports anything named by
a message.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MESSAGE_TYPES = ("hello", "metadata", "infer", "action", "error")
ALLOWED_DTYPES = ("|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<u2", "<f2", "<f4", "<f8")
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 8
MAX_ARRAY_DIMS = 6


class ProtocolError(ValueError):
    """A message that does not follow the schema."""


def _encode_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype.str not in ALLOWED_DTYPES:
            raise ProtocolError(f"Cannot send arrays of dtype {array.dtype}; allowed: {', '.join(ALLOWED_DTYPES)}.")
        array = array.astype(dtype, copy=False)
        return {"__ndarray__": True, "dtype": dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        return _encode_value(value.detach().cpu().numpy())
    if isinstance(value, dict):
        return {str(k): _encode_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    return value


def encode_message(kind: str, **fields: Any) -> bytes:
    """A schema message of `kind` with `fields` (numpy arrays and tensors become typed buffers)."""
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(f"Unknown message type {kind!r}; valid: {', '.join(MESSAGE_TYPES)}.")
    return msgpack.packb({"v": SCHEMA_VERSION, "type": kind, **_encode_value(fields)}, use_bin_type=True)


def _decode_array(value: dict, max_elements: int) -> np.ndarray:
    if set(value) != {"__ndarray__", "dtype", "shape", "data"}:
        raise ProtocolError(f"An array needs exactly __ndarray__, dtype, shape, data; got {sorted(value)}.")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"Array dtype {dtype!r} is not allowed; allowed: {', '.join(ALLOWED_DTYPES)}.")
    if not isinstance(shape, list) or len(shape) > MAX_ARRAY_DIMS:
        raise ProtocolError(f"Array shape must be a list of at most {MAX_ARRAY_DIMS} sizes; got {shape!r}.")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= max_elements for s in shape):
        raise ProtocolError(f"Array shape entries must be non-negative ints; got {shape!r}.")
    count = math.prod(shape)
    if count > max_elements:
        raise ProtocolError(f"Array of {count} elements exceeds the limit of {max_elements}.")
    if not isinstance(data, bytes):
        raise ProtocolError("Array data must be bytes.")
    itemsize = np.dtype(dtype).itemsize
    if len(data) != count * itemsize:
        raise ProtocolError(f"Array data has {len(data)} bytes; shape {shape} of {dtype} needs {count * itemsize}.")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def _decode_value(value: Any, depth: int, max_elements: int) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"Message nested deeper than {MAX_DEPTH} levels.")
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return _decode_array(value, max_elements)
        return {k: _decode_value(v, depth + 1, max_elements) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_value(v, depth + 1, max_elements) for v in value]
    return value


def decode_message(data: bytes | str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Parse and check one message; `ProtocolError` for anything outside the schema."""
    if isinstance(data, str):
        raise ProtocolError("Messages are binary msgpack frames, not text.")
    if len(data) > max_bytes:
        raise ProtocolError(f"Message of {len(data)} bytes exceeds the limit of {max_bytes}.")
    try:
        raw = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, max_ext_len=0,
        )
    except Exception as error:  # noqa: BLE001 - msgpack raises several types for bad input
        raise ProtocolError(f"Not a valid msgpack message: {type(error).__name__}: {error}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"A message must be a map; got {type(raw).__name__}.")
    if raw.get("v") != SCHEMA_VERSION:
        raise ProtocolError(f"Schema version {raw.get('v')!r} is not supported; this side speaks {SCHEMA_VERSION}.")
    if raw.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(f"Unknown message type {raw.get('type')!r}; valid: {', '.join(MESSAGE_TYPES)}.")
    return _decode_value(raw, 0, max_elements=max_bytes)


def check_observation(obs: Any, expected: dict[str, list[int] | None] | None = None) -> dict[str, Any]:
    """An infer message's ``obs``: a map of feature arrays (finite) and an optional ``task``
    string; with `expected`, every expected feature present (with its shape where not None)."""
    if not isinstance(obs, dict):
        raise ProtocolError("infer.obs must be a map of features.")
    for key, value in obs.items():
        if key == "task":
            if not isinstance(value, str):
                raise ProtocolError("infer.obs.task must be a string.")
        elif not key.startswith("observation."):
            raise ProtocolError(f"Unknown observation key {key!r}: features start with 'observation.'.")
        elif not isinstance(value, np.ndarray):
            raise ProtocolError(f"Observation {key!r} must be an array.")
        elif value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ProtocolError(f"Observation {key!r} contains NaN or inf.")
    expected = expected or {}
    for key, shape in expected.items():
        if key not in obs:
            raise ProtocolError(f"Observation lacks {key!r}; the policy reads {sorted(expected)}.")
        if shape is not None and tuple(obs[key].shape) != tuple(shape):
            raise ProtocolError(f"Observation {key!r} has shape {tuple(obs[key].shape)}; expected {tuple(shape)}.")
    return obs
