"""A native ROS 2 transport over rclpy: the bridge on the robot's own DDS middleware.

Most ROS 2 systems run the default DDS middleware (Fast DDS); this transport joins them as
an ordinary node, with no zenoh router or rosbridge server in between. It needs rclpy and
the message packages, which PyPI carries as wheels (`pip install 'embodied[ros2]'`).

Wire format: the one place that turns our dicts into CDR bytes is `messages.py`; rclpy
publishes those bytes as they are (`Publisher.publish(bytes)`) and hands us the bytes it
receives (`raw=True` subscriptions), so DDS peers see exactly what zenoh and rosbridge peers
see. The message classes only name the type to DDS.

QoS per role (`qos_profile`; a robot's topic map says which topic has which role):
  sensor    best effort, volatile, keep last 5: observation streams, where a late sample is
            worth less than the next (rclpy's sensor-data profile, deeper)
  command   reliable, volatile, keep last 10: actions and resets (never latched: a reset
            replayed to a late joiner would restart an episode)
  latched   reliable, transient local: status. Publishers keep the last message for nodes
            that join late; readers keep 10, so a quick succession is not overwritten
  estop     published as latched; read by two subscriptions, a latched one (an e-stop
            pressed before we started is delivered on joining) and a best-effort volatile
            one, which matches every publisher whatever its QoS (an e-stop node written the
            ordinary way, `create_publisher(Bool, topic, 10)`, is reliable and volatile, and
            would never reach a latched reader alone). Each message may arrive twice; an
            e-stop latches once.
A subscription only matches publishers whose QoS offers at least what it asks for (a
best-effort publisher never reaches a reliable subscription, a volatile one never reaches a
transient-local one). Such a mismatch is not silent here: it is logged as an error and kept
in `qos_incompatibilities`, naming the topic and the policy.

Discovery: DDS finds peers by multicast on every interface, within one domain id
(`domain_id`, like ROS_DOMAIN_ID). `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST` keeps it on
this machine; tests also run inside a network namespace that holds only loopback.

Library path: the rclpy wheels keep their native libraries in `<venv>/lib`, where rmw's
loader looks them up through LD_LIBRARY_PATH at `rclpy.init()`. `ensure_library_path()`
(called before rclpy loads) puts that directory on this process's LD_LIBRARY_PATH, which
the loader reads at that call, and so also on every child process's.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from embodied.sim2real import messages
from embodied.sim2real.transport import Callback, Meta, Transport, ros_topic

log = logging.getLogger(__name__)

ROLES = ("sensor", "command", "latched", "estop")
# Default role of a topic by its type, where the topic map gives none.
TYPE_ROLES = {
    "sensor_msgs/msg/JointState": "sensor",
    "sensor_msgs/msg/CompressedImage": "sensor",
    "std_msgs/msg/Bool": "estop",
    "std_msgs/msg/Empty": "estop",
}
INSTALL = "pip install 'embodied[ros2]'"


def ros_lib_dirs() -> list[Path]:
    """Directories of this environment that hold the ROS 2 wheels' native libraries."""
    candidates = [Path(sys.prefix) / "lib"]
    return [d for d in candidates if any(d.glob("librmw*.so*"))]


def ensure_library_path() -> None:
    """Put the wheels' library directory on LD_LIBRARY_PATH (this process and children)."""
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    missing = [str(d) for d in ros_lib_dirs() if str(d) not in current]
    if missing:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(missing + current)


def _import_rclpy() -> Any:
    ensure_library_path()
    try:
        import rclpy
        import rclpy.executors
        import rclpy.qos
        import rclpy.signals
    except ImportError as exc:
        if "No module named 'rclpy'" in str(exc):
            raise ImportError(f"rclpy is not installed: {INSTALL}") from exc
        lib = ros_lib_dirs()
        where = lib[0] if lib else Path(sys.prefix) / "lib"
        raise ImportError(
            f"rclpy failed to load its native libraries ({exc}); run "
            f"`export LD_LIBRARY_PATH={where}:$LD_LIBRARY_PATH` before starting Python"
        ) from exc
    return rclpy


def message_class(type_name: str) -> type:
    """The rclpy message class of `pkg/msg/Type` (from the `ros-<pkg>` wheel)."""
    pkg, _, name = messages.normalize_type(type_name).split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as exc:
        wheel = "ros-" + pkg.replace("_", "-")
        raise ImportError(f"no rclpy message class for {type_name}: pip install {wheel}") from exc


def qos_profile(role: str, reader: bool = False) -> Any:
    """The QoS of a publisher (or, reader=True, of the main subscription) for `role`."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if role not in ROLES:
        raise ValueError(f"unknown QoS role {role!r}; valid: {', '.join(ROLES)}")
    reliable, best_effort = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
    volatile, latched = DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL
    reliability, durability, depth = {
        "sensor": (best_effort, volatile, 5),
        "command": (reliable, volatile, 10),
        "latched": (reliable, latched, 10 if reader else 1),
        "estop": (reliable, latched, 10 if reader else 1),
    }[role]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=durability)


def _catch_all_qos() -> Any:
    """Best effort + volatile: a reader that matches every publisher."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_transports() -> None:
    """Close what is still open at exit: an rclpy node and executor thread alive at
    interpreter shutdown abort the process ("terminate called without an active exception")."""
    for transport in list(_OPEN):
        try:
            transport.close()
        except Exception:  # exiting anyway: the others still get closed
            log.exception("closing a ros2 transport at exit failed")


class Ros2Transport(Transport):
    """One rclpy node (in its own context) and an executor thread that runs the callbacks.

    roles: {topic: "sensor" | "command" | "latched"}; topics not named take their type's
    role (`TYPE_ROLES`, else "command").
    """

    def __init__(self, domain_id: int = 0, node_name: str = "embodied",
                 roles: dict[str, str] | None = None) -> None:
        rclpy = _import_rclpy()
        self._rclpy = rclpy
        self.domain_id, self.node_name = int(domain_id), node_name
        self.roles = {ros_topic(t): r for t, r in (roles or {}).items()}
        for topic, role in self.roles.items():
            if role not in ROLES:
                raise ValueError(f"topic {topic}: unknown QoS role {role!r}; valid: {ROLES}")
        self.qos_incompatibilities: list[str] = []
        self._lock = threading.Lock()
        self._publishers: dict[str, tuple[str, Any]] = {}
        self._subscriptions: list[Any] = []
        self._closed = False
        self._context = rclpy.Context()
        self._teardown_in_spin = False
        # No signal handlers of ours: Ctrl-C stays a KeyboardInterrupt in the main thread,
        # whose cleanup (a last hold command) still has a live node to publish with.
        rclpy.init(context=self._context, domain_id=self.domain_id,
                   signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        try:
            self.node = rclpy.create_node(node_name, context=self._context)
        except Exception:
            rclpy.shutdown(context=self._context)
            raise
        self._executor = rclpy.executors.SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"ros2-{node_name}",
                                        daemon=True)
        self._thread.start()
        _OPEN.add(self)

    def role(self, topic: str, type_name: str) -> str:
        return self.roles.get(ros_topic(topic)) or TYPE_ROLES.get(
            messages.normalize_type(type_name), "command")

    # --- Transport ----------------------------------------------------------------------------

    def publish(self, topic: str, type_name: str, data: dict[str, Any]) -> None:
        topic, type_name = ros_topic(topic), messages.normalize_type(type_name)
        with self._lock:
            if self._closed:
                raise RuntimeError("publish on a closed ros2 transport")
            entry = self._publishers.get(topic)
            if entry is None:
                qos = qos_profile(self.role(topic, type_name))
                entry = (type_name, self.node.create_publisher(
                    message_class(type_name), topic, qos,
                    event_callbacks=self._events("publisher", topic)))
                self._publishers[topic] = entry
        if entry[0] != type_name:
            raise ValueError(f"topic {topic!r} was first published as {entry[0]}, now as "
                             f"{type_name}; use one type per topic")
        entry[1].publish(messages.encode(type_name, data))

    def subscribe(self, topic: str, type_name: str, callback: Callback) -> None:
        from rclpy.event_handler import SubscriptionEventCallbacks

        topic, type_name = ros_topic(topic), messages.normalize_type(type_name)
        def on_message(payload: bytes, info: dict) -> None:  # two arguments: rclpy adds info
            recv_ns, recv_mono = time.time_ns(), time.monotonic_ns()
            seq = info.get("publication_sequence_number") or 0
            source_ns = info.get("source_timestamp") or None
            try:
                data = messages.decode(type_name, payload)
                callback(data, Meta(topic, type_name, int(seq), source_ns, recv_ns, recv_mono))
            except Exception:  # the executor would end its thread: say where it came from
                log.exception("ros2 subscription on %s (%s) failed", topic, type_name)

        role = self.role(topic, type_name)
        profiles = [qos_profile(role, reader=True)]
        if role == "estop":  # and one that matches every publisher (module docstring)
            profiles.append(_catch_all_qos())
        with self._lock:
            if self._closed:
                raise RuntimeError("subscribe on a closed ros2 transport")
            for i, qos in enumerate(profiles):
                # An e-stop's latched reader cannot match a volatile publisher, which its
                # catch-all reader then serves: that is no incompatibility to report.
                expected = role == "estop" and i == 0
                events = SubscriptionEventCallbacks(incompatible_qos=(
                    (lambda event: None) if expected else
                    (lambda event: self._incompatible("subscription", topic, event))))
                self._subscriptions.append(self.node.create_subscription(
                    message_class(type_name), topic, on_message, qos, raw=True,
                    event_callbacks=events))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _OPEN.discard(self)
        if threading.current_thread() is self._thread:
            # Called from a callback: the spin loop tears down once the callback returns.
            self._teardown_in_spin = True
            return
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)
        self._teardown()

    # --- details ------------------------------------------------------------------------------

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._context.ok() and not self._closed:
                self._executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, self._rclpy.executors.ShutdownException):
            pass
        except Exception:  # a dead executor thread means no more e-stops: say so loudly
            log.exception("ros2 transport %s: the executor thread failed", self.node_name)
        if not self._closed:
            log.error("ros2 transport %s: its rclpy context was shut down (another rclpy user "
                      "in this process, e.g. its Ctrl-C handler): no more messages arrive",
                      self.node_name)
        if self._teardown_in_spin:
            self._executor.shutdown(timeout_sec=0)
            self._teardown()

    def _teardown(self) -> None:
        self.node.destroy_node()
        if self._context.ok():
            self._rclpy.shutdown(context=self._context)

    def _events(self, kind: str, topic: str) -> Any:
        from rclpy.event_handler import PublisherEventCallbacks

        return PublisherEventCallbacks(
            incompatible_qos=lambda event: self._incompatible(kind, topic, event))

    def _incompatible(self, kind: str, topic: str, event: Any) -> None:
        policy = getattr(event, "last_policy_kind", "?")
        policy = getattr(policy, "name", str(policy))
        message = (f"ros2 {kind} on {topic}: a peer's QoS is incompatible ({policy}), so they "
                   "never exchange messages; give both sides compatible reliability and "
                   "durability (see embodied.sim2real.ros2_transport)")
        with self._lock:
            if message not in self.qos_incompatibilities:
                self.qos_incompatibilities.append(message)
                log.error(message)
