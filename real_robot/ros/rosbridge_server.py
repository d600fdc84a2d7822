"""A small rosbridge-protocol server for tests (no rosbridge server is packaged for Debian).

    python -m real_robot.ros.rosbridge_server [--host 127.0.0.1] [--port 9090]

It speaks the subset of rosbridge v2 that topic traffic needs (``advertise``,
``unadvertise``, ``publish``, ``subscribe``, ``unsubscribe``) on a websocket with JSON
messages, and bridges it into a real ROS 1 graph with rospy, as rosbridge_server does:
a websocket ``subscribe`` becomes a rospy Subscriber whose messages go back as ``publish``
ops, and a websocket ``publish`` becomes a rospy publication. ``uint8[]`` fields travel as
base64 strings, as in rosbridge. Other ops get a ``status`` error reply. Not for production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from real_robot.ros.messages import from_rospy, jsonable, message_class, to_rospy

LOG = logging.getLogger("real_robot.ros.rosbridge_server")


class RosbridgeServer:
    """Websocket clients <-> a rospy node."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9090):
        self.host, self.port = host, port
        self.rospy: Any = None  # the rospy module (untyped), once serving
        self._publishers: dict[str, Any] = {}
        self._subscribers: dict[str, Any] = {}
        self._clients: dict[str, set] = {}  # topic -> websockets subscribed
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ros_callback(self, topic: str):
        loop = self._loop
        assert loop is not None, "subscriptions are made while serving"

        def forward(message) -> None:
            try:
                text = json.dumps({"op": "publish", "topic": topic, "msg": jsonable(from_rospy(message))})
                with self._lock:
                    clients = list(self._clients.get(topic, ()))
                for websocket in clients:
                    asyncio.run_coroutine_threadsafe(self._send(websocket, text), loop)
            except Exception:  # rospy swallows callback errors: say what happened
                LOG.exception("forwarding %s failed", topic)
        return forward

    async def _send(self, websocket, text: str) -> None:
        try:
            await websocket.send(text)
        except Exception as error:  # noqa: BLE001 - a client gone mid-send
            LOG.info("dropping a client: %s", error)
            self._drop(websocket)

    def _drop(self, websocket) -> None:
        with self._lock:
            for clients in self._clients.values():
                clients.discard(websocket)

    async def _handle(self, websocket) -> None:
        try:
            async for text in websocket:
                try:
                    request = json.loads(text)
                    await self._dispatch(websocket, request)
                except Exception as error:  # noqa: BLE001 - one bad op never ends the connection
                    await websocket.send(json.dumps({"op": "status", "level": "error", "msg": f"{type(error).__name__}: {error}"}))
        except Exception:  # noqa: BLE001, S110 - connection closed
            pass
        finally:
            self._drop(websocket)

    async def _dispatch(self, websocket, request: dict[str, Any]) -> None:
        op, topic = request.get("op"), request.get("topic")
        if not isinstance(topic, str):
            raise ValueError(f"op {op!r} needs a topic (a string)")
        rospy = self.rospy
        if op == "advertise":
            with self._lock:
                exists = topic in self._publishers
            if not exists:
                publisher = rospy.Publisher(topic, message_class(request["type"]), queue_size=1)
                with self._lock:
                    self._publishers.setdefault(topic, (publisher, request["type"]))
        elif op == "publish":
            with self._lock:
                entry = self._publishers.get(topic)
            if entry is None:
                raise ValueError(f"publish on {topic!r} before advertise")
            publisher, type_name = entry
            publisher.publish(to_rospy(type_name, request.get("msg", {})))
        elif op == "subscribe":
            with self._lock:  # never held while calling into rospy (its callback threads take it too)
                self._clients.setdefault(topic, set()).add(websocket)
                create = topic not in self._subscribers
                if create:
                    self._subscribers[topic] = None
            if create:
                subscriber = rospy.Subscriber(topic, message_class(request["type"]), self._ros_callback(topic), queue_size=1)
                with self._lock:
                    self._subscribers[topic] = subscriber
        elif op == "unsubscribe":
            with self._lock:
                self._clients.get(topic, set()).discard(websocket)
        elif op == "unadvertise":
            pass  # publishers stay for other clients of this test server
        else:
            raise ValueError(f"op {op!r} is not supported by this test server")

    async def serve(self, ready: threading.Event | None = None) -> None:
        from websockets.asyncio.server import serve

        from real_robot.ros.transport import NativeTransport

        transport = NativeTransport("rosbridge_test_server")
        transport.connect()
        self.rospy = transport.rospy
        self._loop = asyncio.get_running_loop()
        async with serve(self._handle, self.host, self.port, max_size=64 * 1024 * 1024, ping_interval=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            print(f"rosbridge test server on ws://{self.host}:{self.port}", flush=True)
            if ready is not None:
                ready.set()
            await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(RosbridgeServer(args.host, args.port).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
