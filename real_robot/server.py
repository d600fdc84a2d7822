"""`PolicyServer`: any checkpoint that `Policy.from_pretrained` loads, served over a websocket.

    server = PolicyServer(LocalPolicy.from_path("runs/ppo_reach_state"), token="s3cret")
    server.start()                  # background thread; server.url == "ws://127.0.0.1:<port>"
    ...
    server.stop()

Or ``embodied serve CHECKPOINT [--host H] [--port P] [--token T]`` in the foreground.

Listens on localhost unless told otherwise. A client first sends ``hello`` (with the shared
token when the server has one: a wrong token closes the connection with code 1008), gets
``metadata``, then sends ``infer`` requests, each answered by ``action`` or ``error``
(see `real_robot.protocol`). A malformed message is answered with an ``error`` and the
connection stays up; a frame over `max_message_bytes` closes it (websocket code 1009). The
server never crashes on client input.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from real_robot.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ProtocolError,
    check_observation,
    decode_message,
    encode_message,
)

if TYPE_CHECKING:
    from websockets.asyncio.server import Server

LOG = logging.getLogger("real_robot.server")


class PolicyServer:
    """Serves one policy (`LocalPolicy` or anything with `metadata` and `infer`) to many clients."""

    def __init__(
        self, policy, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, handshake_timeout_s: float = 5.0,
    ):
        self.policy = policy
        self.host, self.port = host, port
        self.token = token
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.metadata = {**policy.metadata, "max_message_bytes": max_message_bytes}
        self.requests = self.errors = self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PolicyServer:
        """Listen on a background thread; returns once the socket is bound (port 0 picks one)."""
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def serve_forever(self) -> None:
        """Listen in the foreground until interrupted."""
        asyncio.run(self._main(forever=True))

    def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._loop is not None and self._server is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: already stopped
                self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main(forever=False))
        except BaseException as error:  # noqa: BLE001 - reported to start()
            self._startup_error = error
            self._ready.set()

    async def _main(self, forever: bool) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        async with serve(
            self._handle, self.host, self.port, max_size=self.max_message_bytes, compression=None,
            ping_interval=None,
        ) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            LOG.info("policy server on %s", self.url)
            self._ready.set()
            await server.wait_closed()

    # ------------------------------------------------------------------ one connection
    async def _handle(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        try:
            raw = await asyncio.wait_for(websocket.recv(), timeout=self.handshake_timeout_s)
            try:
                hello = decode_message(raw, self.max_message_bytes)
            except ProtocolError as error:
                await self._refuse(websocket, f"bad hello: {error}", 1002)
                return
            if hello["type"] != "hello":
                await self._refuse(websocket, f"expected hello first, got {hello['type']!r}", 1002)
                return
            if self.token is not None:
                given = hello.get("token")
                if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
                    await self._refuse(websocket, "unauthorized: wrong or missing token", 1008)
                    return
            await websocket.send(encode_message("metadata", metadata=self.metadata))
            async for raw in websocket:
                await websocket.send(await self._answer(raw))
        except (ConnectionClosed, TimeoutError):
            pass
        except Exception as error:  # noqa: BLE001 - one connection's failure never stops the server
            LOG.error("connection failed: %s", error)

    async def _answer(self, raw: Any) -> bytes:
        request_id = None
        try:
            message = decode_message(raw, self.max_message_bytes)
            request_id = message.get("id") if isinstance(message.get("id"), int) else None
            if message["type"] != "infer":
                raise ProtocolError(f"expected infer, got {message['type']!r}")
            obs = check_observation(message.get("obs"), self.metadata.get("features"))
            start = time.perf_counter()
            chunk = await asyncio.get_running_loop().run_in_executor(None, self.policy.infer, obs)
            self.requests += 1
            return encode_message("action", id=request_id, action=chunk, infer_ms=(time.perf_counter() - start) * 1e3)
        except Exception as error:  # noqa: BLE001 - bad requests and policy failures answer with an error
            self.errors += 1
            return encode_message("error", id=request_id, message=f"{type(error).__name__}: {error}")

    async def _refuse(self, websocket, message: str, code: int) -> None:
        self.errors += 1
        await websocket.send(encode_message("error", id=None, message=message))
        await websocket.close(code, message[:100])
