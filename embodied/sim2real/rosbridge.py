"""rosbridge v2: a client transport (roslibpy) and a small stand-in server (websockets).

rosbridge (`rosbridge_suite`) lets anything with a websocket reach ROS 1 or ROS 2 through
JSON messages: {"op": "advertise" | "publish" | "subscribe" | ..., "topic": ..., ...}. It is
slower than rmw_zenoh but works with any ROS distro, and is what many robot stacks already
run, so it is our fallback transport.

`RosbridgeTransport` is the client, built on roslibpy. `RosbridgeServer` implements the
topic part of the protocol (advertise, unadvertise, publish, subscribe, unsubscribe) by
relaying every publish to the clients subscribed to its topic; it stands in for the ROS side
in tests and benchmarks:

    python -m embodied.sim2real.rosbridge --port 9090      # --port 0 picks a free port

JSON conventions (rosbridge's): messages are dicts in ROS field names, uint8[] data is a
base64 string, times are {"sec", "nanosec"} (ROS 2) or {"secs", "nsecs"} (ROS 1, with
type_style="ros1", which also sends `pkg/Type` instead of `pkg/msg/Type`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import threading
import time
from typing import Any

from embodied.sim2real import messages
from embodied.sim2real.transport import Callback, Meta, Transport, ros_topic

log = logging.getLogger(__name__)

_INSTALL = "pip install 'embodied[bridge]'"


def _to_ros1_json(value: Any) -> Any:
    """Rename ROS 2 time fields to ROS 1's, recursively (sec/nanosec -> secs/nsecs)."""
    if isinstance(value, dict):
        if set(value) == {"sec", "nanosec"}:
            return {"secs": value["sec"], "nsecs": value["nanosec"]}
        return {k: _to_ros1_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_ros1_json(v) for v in value]
    return value


class RosbridgeTransport(Transport):
    """Publish and subscribe through a rosbridge v2 server, using roslibpy.

    roslibpy runs its websocket on a Twisted reactor in a background thread, shared by all
    clients of a process; subscription callbacks run on that thread. rosbridge carries no
    sequence numbers, so Meta.seq counts received messages per subscription, and
    Meta.source_time_ns is the message's header stamp (None for header-less types).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9090,
        type_style: str = "ros2",
        timeout: float = 5.0,
    ) -> None:
        try:
            import roslibpy
        except ImportError as exc:
            raise ImportError(f"roslibpy not installed: {_INSTALL}") from exc
        if type_style not in ("ros1", "ros2"):
            raise ValueError(f"type_style must be 'ros1' or 'ros2', got {type_style!r}")
        self._roslibpy = roslibpy
        self.type_style = type_style
        self.errors: list[str] = []
        self.ros = roslibpy.Ros(host=host, port=port)
        try:
            self.ros.run(timeout)
        except Exception as exc:
            self.ros.factory.stopTrying()  # else Twisted keeps reconnecting in the background
            raise ConnectionError(
                f"no rosbridge server answered at ws://{host}:{port} within {timeout} s: start "
                "one (`ros2 launch rosbridge_server rosbridge_websocket_launch.xml`, or for "
                "tests `python -m embodied.sim2real.rosbridge --port N`)"
            ) from exc
        self._publishers: dict[str, tuple[str, Any]] = {}
        self._subscribers: list[Any] = []
        self._closed = False
        # roslibpy has no handler for the server's "status" op (it logs a bare "no handler"
        # exception), so errors such as a type clash would go unexplained; install ours.
        self.ros.factory.on_ready(self._install_status_handler)

    def _install_status_handler(self, proto: Any) -> None:
        handlers = getattr(proto, "_message_handlers", None)
        if isinstance(handlers, dict):
            handlers["status"] = self._on_status

    def _on_status(self, message: dict[str, Any]) -> None:
        text = f"rosbridge server {message.get('level', '')}: {message.get('msg', message)}"
        if message.get("level") in ("error", "warning"):
            self.errors.append(text)
            log.error(text)

    def _wire_type(self, type_name: str) -> str:
        pkg, kind, name = messages.normalize_type(type_name).split("/")
        return f"{pkg}/{name}" if self.type_style == "ros1" else f"{pkg}/{kind}/{name}"

    def publish(self, topic: str, type_name: str, data: dict[str, Any]) -> None:
        topic, type_name = ros_topic(topic), messages.normalize_type(type_name)
        if topic not in self._publishers:
            t = self._roslibpy.Topic(self.ros, topic, self._wire_type(type_name))
            t.advertise()
            self._publishers[topic] = (type_name, t)
        first_type, t = self._publishers[topic]
        if first_type != type_name:
            raise ValueError(
                f"topic {topic!r} was first published as {first_type}, now as {type_name}; "
                "use one type per topic"
            )
        msg = messages.to_json(type_name, data)
        if self.type_style == "ros1":
            msg = _to_ros1_json(msg)
        t.publish(self._roslibpy.Message(msg))

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        topic, type_name = ros_topic(topic), messages.normalize_type(type_name)
        counter = itertools.count(1)

        def on_message(msg: dict[str, Any]) -> None:
            recv_ns, recv_mono = time.time_ns(), time.monotonic_ns()
            try:
                data = messages.normalize(type_name, msg, strict=False)
                stamp = data.get("header", {}).get("stamp")
                source_ns = messages.stamp_ns(stamp) if stamp else None
                meta = Meta(topic, type_name, next(counter), source_ns, recv_ns, recv_mono)
                callback(data, meta)
            except Exception:  # the reactor thread would only print it: say where from
                log.exception("rosbridge subscriber on %s (%s) failed", topic, type_name)

        t = self._roslibpy.Topic(self.ros, topic, self._wire_type(type_name))
        t.subscribe(on_message)
        self._subscribers.append(t)

    def close(self) -> None:
        # Deliberately not ros.terminate(): that stops the process-wide Twisted reactor,
        # which cannot be restarted, and every later client in this process would hang.
        if self._closed:
            return
        self._closed = True
        if self.ros.is_connected:
            for t in self._subscribers:
                t.unsubscribe()
            for _, t in self._publishers.values():
                t.unadvertise()
            self.ros.close()


# --- stand-in server -------------------------------------------------------------------------


def _same_type(a: str, b: str) -> bool:
    """`pkg/Type` and `pkg/msg/Type` name the same type."""
    return a.replace("/msg/", "/") == b.replace("/msg/", "/")


class RosbridgeServer:
    """The topic subset of a rosbridge v2 server, relaying publishes between its clients.

    Runs an asyncio `websockets` server on its own thread: `start()` returns once it
    listens (port=0 picks a free port; read `.port`), `stop()` closes it. Each client's
    messages are handled in order; a publish goes once to every other or same client that
    subscribed to the topic (several subscriptions from one client still get one copy, as
    with rosbridge). Errors (bad JSON, a type that differs from the topic's) are answered
    with {"op": "status", "level": "error"} and logged.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.types: dict[str, str] = {}
        self._subs: dict[str, dict[Any, set[str]]] = {}
        self._rejected: set[tuple[Any, str]] = set()  # (client, topic) with a refused advertise
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout: float = 5.0) -> RosbridgeServer:
        self._thread = threading.Thread(target=self._run, name="rosbridge-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"rosbridge server did not start on {self.url}: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> RosbridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        try:
            from websockets.asyncio.server import serve
        except ImportError as exc:
            raise ImportError(f"websockets>=13 not installed: {_INSTALL}") from exc
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, self.host, self.port) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handle(self, conn: Any) -> None:
        try:
            async for raw in conn:
                error = await self._dispatch(conn, raw)
                if error:
                    log.error("rosbridge server: %s", error)
                    await conn.send(json.dumps({"op": "status", "level": "error", "msg": error}))
        except Exception as exc:  # a client dropping mid-send is routine
            log.debug("rosbridge client left: %s", exc)
        finally:
            for subs in self._subs.values():
                subs.pop(conn, None)
            self._rejected = {(c, t) for c, t in self._rejected if c is not conn}

    async def _dispatch(self, conn: Any, raw: str | bytes) -> str | None:
        """Handle one client message; return an error text for the client, or None."""
        try:
            msg = json.loads(raw)
            op, topic = msg["op"], msg.get("topic")
        except (ValueError, KeyError, TypeError):
            return f"not a rosbridge message (JSON object with 'op'): {str(raw)[:80]}"
        if op in ("advertise", "subscribe") and "type" in msg:
            known = self.types.setdefault(topic, msg["type"])
            if not _same_type(known, msg["type"]):
                if op == "advertise":  # its publishes would reach subscribers as garbage
                    self._rejected.add((conn, topic))
                return f"{op} {topic} as {msg['type']}, but the topic carries {known}"
            self._rejected.discard((conn, topic))
        if op == "publish" and (conn, topic) in self._rejected:
            return None  # the advertise was refused, and the client told why
        if op == "publish":
            out = json.dumps({"op": "publish", "topic": topic, "msg": msg.get("msg", {})})
            for client in list(self._subs.get(topic, {})):
                try:
                    await client.send(out)
                except Exception:  # closed while we sent; its handler cleans up
                    pass
        elif op == "subscribe":
            self._subs.setdefault(topic, {}).setdefault(conn, set()).add(msg.get("id", ""))
        elif op == "unsubscribe":
            ids = self._subs.get(topic, {}).get(conn, set())
            ids.discard(msg.get("id", ""))
            if not ids or "id" not in msg:
                self._subs.get(topic, {}).pop(conn, None)
        elif op not in ("advertise", "unadvertise"):
            return f"op {op!r} is not supported by this stand-in server (topics only)"
        return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="A stand-in rosbridge server (topics only).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090, help="0 picks a free port")
    p.add_argument("--exit-on-eof", action="store_true",
                   help="exit when stdin closes, so a parent's death ends this process too")
    args = p.parse_args(argv)
    with RosbridgeServer(args.host, args.port) as server:
        print(f"listening on {server.url}", flush=True)
        stop = threading.Event()
        if args.exit_on_eof:
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
