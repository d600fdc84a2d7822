"""`PolicyClient`: the robot side of the policy server (synchronous, one request at a time).

    client = PolicyClient("ws://127.0.0.1:8765", token="s3cret")   # connects, reads metadata
    chunk = client.infer(robot.get_observation())                   # (T, A) float32
    client.close()
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import numpy as np

from real_robot.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ProtocolError,
    decode_message,
    encode_message,
)


class PolicyServerError(RuntimeError):
    """The server answered with an error, timed out, or went away."""


class PolicyClient:
    """Connects on construction; `metadata` is the server's announcement."""

    def __init__(
        self, url: str, token: str | None = None, timeout_s: float = 2.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count()
        self._connect()

    def reconnect(self) -> None:
        """Drop the connection and open a new one (after the server was lost)."""
        self.close()
        self._connect()

    def _connect(self) -> None:
        import inspect

        from websockets.sync.client import connect

        url, token, timeout_s, max_message_bytes = self.url, self.token, self.timeout_s, self.max_message_bytes
        try:
            options: dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
            self._ws = connect(
                url, open_timeout=timeout_s, max_size=max_message_bytes, compression=None, ping_interval=None,
                close_timeout=1.0, **options,
            )
        except Exception as error:  # noqa: BLE001 - OSError, InvalidURI, handshake errors
            raise PolicyServerError(f"Cannot reach the policy server at {url}: {error}") from None
        self._ws.send(encode_message("hello", token=token))
        reply = self._receive()
        if reply["type"] != "metadata":
            self.close()
            raise PolicyServerError(f"Policy server refused the connection: {reply.get('message', reply['type'])}")
        self.metadata: dict[str, Any] = reply["metadata"]

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        """The action chunk (T, A) for one robot observation (features and ``task`` are sent)."""
        features: dict[str, Any] = {k: np.asarray(v) for k, v in obs.items() if k.startswith("observation.")}
        if "task" in obs:
            features["task"] = str(obs["task"])
        request_id = next(self._ids)
        try:
            self._ws.send(encode_message("infer", id=request_id, obs=features))
        except Exception as error:  # noqa: BLE001 - ConnectionClosed and socket errors
            raise PolicyServerError(f"Policy server connection lost: {error}") from None
        reply = self._receive()
        while isinstance(reply.get("id"), int) and reply["id"] < request_id:  # late answer to a timed-out request
            reply = self._receive()
        if reply["type"] == "error":
            raise PolicyServerError(f"Policy server error: {reply.get('message')}")
        if reply["type"] != "action" or reply.get("id") != request_id:
            raise PolicyServerError(f"Unexpected reply {reply['type']!r} (id {reply.get('id')}) to request {request_id}.")
        action = reply.get("action")
        if not isinstance(action, np.ndarray) or action.ndim != 2:
            raise PolicyServerError("The server's action is not a (T, A) array.")
        return np.array(action, dtype=np.float32)

    def send_raw(self, data: bytes) -> dict[str, Any]:
        """Send arbitrary bytes and return the decoded reply (fault tests)."""
        self._ws.send(data)
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        try:
            raw = self._ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            raise PolicyServerError(f"No answer from the policy server within {self.timeout_s} s.") from None
        except Exception as error:  # noqa: BLE001 - ConnectionClosed and socket errors
            raise PolicyServerError(f"Policy server connection lost: {error}") from None
        try:
            return decode_message(raw, self.max_message_bytes)
        except ProtocolError as error:
            raise PolicyServerError(f"Malformed reply from the policy server: {error}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection
            self._ws.close()
