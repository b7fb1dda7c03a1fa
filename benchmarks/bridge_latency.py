"""Observation-to-command round trip over each bridge transport, between processes.

    python benchmarks/bridge_latency.py [--n 1000] [--warmup 100]

Over loopback, this process publishes a JointState observation and waits for the answer:
an echo process (`python -m embodied.bridge.transport`, a stand-in controller) subscribes to
the observation and publishes a Float64MultiArray command on receipt. One round trip is
publish -> echo's callback -> echo's publish -> our callback, timed with perf_counter_ns,
so it includes CDR or JSON encoding and decoding on both sides. Requests go one at a time.
  zenoh      our session listens on a free loopback port, the echo connects (rmw_zenoh format)
  rosbridge  our stand-in rosbridge server in a third process, roslibpy clients on both sides
The last line is JSON with `zenoh_p50_ms`, `zenoh_p99_ms`, `rosbridge_p50_ms`,
`rosbridge_p99_ms`, and `deadline_misses_50hz` (null until the control-loop part exists).
Target: zenoh p99 round trip under 5 ms.
"""

from __future__ import annotations

import argparse
import json
import queue
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from embodied.bridge import messages
from embodied.bridge.transport import CMD_TYPE, OBS_TYPE, Transport, make_transport

JOINTS = [f"joint{i}" for i in range(7)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def child(args: list[str], ready: str, timeout: float = 15.0) -> Iterator[str]:
    """Run `python -m args...` until the block exits; yield its `ready` line."""
    proc = subprocess.Popen([sys.executable, "-m", *args, "--exit-on-eof"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline()
                if line.startswith(ready):
                    yield line.strip()
                    return
                if not line:
                    break
        raise RuntimeError(f"{' '.join(args)} did not start within {timeout} s")
    finally:
        try:
            proc.stdin.close()  # the child exits on EOF
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def round_trips(transport: Transport, n: int, warmup: int) -> np.ndarray:
    """n timed observation -> command round trips (ms), after waiting for the link and warmup.

    position[0] carries the request number, so a late answer is never taken for the next one.
    """
    answers: queue.SimpleQueue = queue.SimpleQueue()
    transport.subscribe("cmd", CMD_TYPE, lambda data, meta: answers.put(data["data"][0]))
    position = np.zeros(len(JOINTS))

    def ask(i: int, timeout: float) -> bool:
        position[0] = i
        transport.publish("obs", OBS_TYPE, messages.joint_state(JOINTS, position,
                                                                stamp_ns=time.time_ns()))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if answers.get(timeout=left) == i:
                    return True
            except queue.Empty:
                break
        return False

    i = -1
    deadline = time.monotonic() + 10.0
    while not ask(i, 0.05):  # subscriptions take a moment to reach the other side
        if time.monotonic() > deadline:
            raise TimeoutError("the echo process never answered")
        i -= 1
    for i in range(warmup):
        ask(i, 1.0)
    times = np.empty(n)
    for i in range(n):
        start = time.perf_counter_ns()
        if not ask(warmup + i, 1.0):
            raise TimeoutError(f"no answer to request {i} within 1 s")
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return times


def bench_zenoh(n: int, warmup: int) -> np.ndarray:
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    with make_transport("zenoh", listen=[endpoint], connect=[], node_name="bench") as ours:
        with child(["embodied.bridge.transport", "--kind", "zenoh", "--connect", endpoint],
                   "ready"):
            return round_trips(ours, n, warmup)


def bench_rosbridge(n: int, warmup: int) -> np.ndarray:
    with child(["embodied.bridge.rosbridge", "--port", "0"], "listening on") as line:
        port = line.rsplit(":", 1)[1]
        with child(["embodied.bridge.transport", "--kind", "rosbridge", "--port", port],
                   "ready"):
            with make_transport("rosbridge", port=int(port)) as ours:
                return round_trips(ours, n, warmup)


def measure_control_loop_jitter(*args: Any, **kwargs: Any) -> None:
    """PLACEHOLDER for the 50 Hz control-loop part (deadline misses of the chunk executor).

    To be written once `embodied.bridge.executor` exists; until then the JSON line reports
    `deadline_misses_50hz: null`.
    """
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="timed round trips per transport")
    p.add_argument("--warmup", type=int, default=100)
    args = p.parse_args()

    results = {"zenoh": bench_zenoh(args.n, args.warmup),
               "rosbridge": bench_rosbridge(args.n, args.warmup)}

    print(f"observation (JointState, {len(JOINTS)} joints) -> command (Float64MultiArray) "
          f"round trip, {args.n} after {args.warmup} warm-up, loopback, separate processes")
    print(f"{'transport':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    summary: dict[str, Any] = {}
    for name, t in results.items():
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        print(f"{name:<10} {p50:8.3f} {p90:8.3f} {p99:8.3f} {t.max():8.3f}")
        summary[f"{name}_p50_ms"] = round(float(p50), 4)
        summary[f"{name}_p99_ms"] = round(float(p99), 4)
    summary["deadline_misses_50hz"] = measure_control_loop_jitter()
    target = "met" if summary["zenoh_p99_ms"] < 5.0 else "MISSED"
    print(f"target zenoh p99 < 5 ms: {target}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
