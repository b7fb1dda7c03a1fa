"""The interface every bridge transport implements, an in-process one, and a factory.

A transport moves ROS 2 messages, as the plain dicts of `embodied.sim2real.messages`, between
our policy process and a robot: `publish(topic, type, dict)` and `subscribe(topic, type,
callback(dict, Meta))`. Callbacks run on the transport's own thread; keep them short (hand
the data to a queue or an executor) since the next message waits for them.

    python -m embodied.sim2real.transport --kind zenoh --connect tcp/127.0.0.1:7447
    python -m embodied.sim2real.transport --kind ros2 --domain-id 0

runs a stand-in controller for dry runs, tests and benchmarks: it answers every JointState
on `--obs` with a Float64MultiArray of the same positions on `--cmd`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embodied.sim2real import messages


def ros_topic(topic: str) -> str:
    """"obs", "/obs" and "obs/" all name the ROS topic "/obs"."""
    return "/" + topic.strip("/")


@dataclass(frozen=True)
class Meta:
    """What a transport knows about one received message, besides its content."""

    topic: str
    """The ROS topic name, with its leading '/'."""
    type_name: str
    """`pkg/msg/Type`."""
    seq: int
    """The publisher's sequence number (zenoh, ros2, inproc); rosbridge carries none, so
    there it counts the messages this subscription received."""
    source_time_ns: int | None
    """Publisher's wall clock (time.time_ns) at send, or the header stamp for rosbridge;
    None when the message had neither."""
    recv_time_ns: int
    """time.time_ns() at receipt: compare with source_time_ns across machines."""
    recv_mono_ns: int
    """time.monotonic_ns() at receipt: for latencies and deadlines on this machine."""


Callback = Callable[[dict[str, Any], Meta], None]


class Transport(ABC):
    """publish / subscribe / close; usable as a context manager that closes on exit."""

    @abstractmethod
    def publish(self, topic: str, type_name: str, data: dict[str, Any]) -> None:
        """Send one message; the first call on a topic declares (advertises) the publisher."""

    @abstractmethod
    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        """Call callback(data, meta) for every message on topic, from the transport's thread."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets, sessions and threads; safe to call twice."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class InProcBus:
    """Subscriptions shared by the InProcTransports built on it (a stand-in for a network)."""

    subscribers: dict[str, list[tuple[str, Callback]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class InProcTransport(Transport):
    """Synchronous in-process pub/sub for unit tests and dry runs.

    Messages still go dict -> CDR -> dict, so what a callback sees is what it would get from
    a real transport (defaults filled in, numpy dtypes as decoded). Delivery happens inside
    `publish`, on the caller's thread. Transports sharing a bus see each other's messages.
    """

    def __init__(self, bus: InProcBus | None = None) -> None:
        self.bus = bus or InProcBus()
        self._seq: dict[str, int] = {}
        self._mine: list[tuple[str, tuple[str, Callback]]] = []

    def publish(self, topic: str, type_name: str, data: dict[str, Any]) -> None:
        topic, type_name = ros_topic(topic), messages.normalize_type(type_name)
        payload = messages.encode(type_name, data)
        self._seq[topic] = seq = self._seq.get(topic, 0) + 1
        source_ns = time.time_ns()
        with self.bus.lock:
            subs = list(self.bus.subscribers.get(topic, ()))
        for sub_type, callback in subs:
            if sub_type != type_name:
                raise TypeError(
                    f"topic {topic!r}: published as {type_name} but subscribed as {sub_type}; "
                    "use one type per topic"
                )
            meta = Meta(topic, type_name, seq, source_ns, time.time_ns(), time.monotonic_ns())
            callback(messages.decode(type_name, payload), meta)

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        topic, entry = ros_topic(topic), (messages.normalize_type(type_name), callback)
        with self.bus.lock:
            self.bus.subscribers.setdefault(topic, []).append(entry)
        self._mine.append((topic, entry))

    def close(self) -> None:
        with self.bus.lock:
            for topic, entry in self._mine:
                subs = self.bus.subscribers.get(topic, [])
                if entry in subs:
                    subs.remove(entry)
        self._mine.clear()


KINDS = ("inproc", "zenoh", "rosbridge", "ros2")


def make_transport(kind: str, **options: Any) -> Transport:
    """Build a transport by name; options go to its constructor.

    inproc: bus=InProcBus; zenoh: domain_id, mode, connect, listen, node_name;
    rosbridge: host, port, type_style ("ros2" or "ros1");
    ros2: domain_id, node_name, roles ({topic: "sensor" | "command" | "latched"}).
    """
    if kind == "inproc":
        return InProcTransport(**options)
    if kind == "zenoh":
        from embodied.sim2real.zenoh_transport import ZenohTransport

        return ZenohTransport(**options)
    if kind == "rosbridge":
        from embodied.sim2real.rosbridge import RosbridgeTransport

        return RosbridgeTransport(**options)
    if kind == "ros2":
        from embodied.sim2real.ros2_transport import Ros2Transport

        return Ros2Transport(**options)
    raise ValueError(f"unknown transport kind {kind!r}; valid kinds are {', '.join(KINDS)}")


# --- stand-in controller ---------------------------------------------------------------------

OBS_TYPE = "sensor_msgs/msg/JointState"
CMD_TYPE = "std_msgs/msg/Float64MultiArray"


def run_echo(transport: Transport, obs: str = "obs", cmd: str = "cmd") -> threading.Event:
    """Answer every JointState on `obs` with its positions as a Float64MultiArray on `cmd`.

    Returns an event that is set after the first answer (so callers know the link is up).
    """
    answered = threading.Event()

    def on_obs(data: dict[str, Any], meta: Meta) -> None:
        transport.publish(cmd, CMD_TYPE, messages.float_array(data["position"]))
        answered.set()

    transport.subscribe(obs, OBS_TYPE, on_obs)
    return answered


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=KINDS[1:], required=True)
    p.add_argument("--obs", default="obs")
    p.add_argument("--cmd", default="cmd")
    p.add_argument("--connect", action="append", help="zenoh endpoint to connect to")
    p.add_argument("--listen", action="append", help="zenoh endpoint to listen on")
    p.add_argument("--domain-id", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1", help="rosbridge server host")
    p.add_argument("--port", type=int, default=9090, help="rosbridge server port")
    p.add_argument("--seconds", type=float, default=0.0, help="exit after this long (0: never)")
    p.add_argument("--exit-on-eof", action="store_true",
                   help="exit when stdin closes, so a parent's death ends this process too")
    args = p.parse_args(argv)
    if args.kind == "zenoh":
        options = {"connect": args.connect, "listen": args.listen, "domain_id": args.domain_id,
                   "node_name": "echo"}
    elif args.kind == "ros2":
        options = {"domain_id": args.domain_id, "node_name": "echo",
                   "roles": {args.obs: "sensor", args.cmd: "command"}}
    else:
        options = {"host": args.host, "port": args.port}
    with make_transport(args.kind, **options) as transport:
        run_echo(transport, args.obs, args.cmd)
        print("ready", flush=True)
        stop = threading.Event()
        if args.exit_on_eof:
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        try:
            stop.wait(args.seconds or None)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
