"""Child processes for dry runs and tests: the fake robot and a stand-in rosbridge server.

Each child is `python -m <module> ... --exit-on-eof`: it exits when its stdin closes, so a
parent that dies (even by SIGKILL) takes its children with it; `Child.stop` closes stdin,
then terminates, then kills.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from embodied.core.errors import RobotError


def free_port() -> int:
    """A TCP port free on loopback right now (another process may still take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """`python -m module args` with a ready line to wait for; a context manager."""

    def __init__(self, module: str, args: list[str], ready: str, timeout: float = 60.0) -> None:
        self.module, self.args, self.ready, self.timeout = module, args, ready, timeout
        self.proc: subprocess.Popen | None = None
        self.ready_line = ""

    def start(self) -> Child:
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args,
                                      "--exit-on-eof"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                line = self.proc.stdout.readline()
                if line.startswith(self.ready):
                    self.ready_line = line.strip()
                    return self
                if not line:
                    break
        code = self.proc.poll()
        self.stop()
        what = f"exited with code {code}" if code is not None else f"timed out ({self.timeout} s)"
        raise RobotError(f"`python -m {self.module} {' '.join(self.args)}` {what} before "
                         f"printing {self.ready!r}; its error is above")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the child exits on EOF
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def reserved_ros_domain() -> Iterator[int]:
    """A ROS 2 domain id (1-100) that no other dry run or test on this machine holds for
    the block: an exclusive lock on a file per id in the temp directory."""
    ids = list(range(1, 101))
    random.SystemRandom().shuffle(ids)
    for domain in ids:
        handle = open(Path(tempfile.gettempdir()) / f"embodied-ros2-domain-{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield domain
        finally:
            handle.close()  # releases the lock
        return
    raise RobotError("every ROS 2 domain id 1-100 is held by another dry run on this machine")


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value unless already set, for the block (children inherit it)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def fake_robot_args(task: str, rate_hz: float | None = None, seed: int = 0,
                    latency_ms: float = 0.0, drop: float = 0.0,
                    disconnect_after_s: float | None = None, disconnect_for_s: float = 0.0,
                    task_options: dict[str, Any] | None = None) -> list[str]:
    """Command-line arguments of `python -m embodied.sim2real.fake_robot` (transport aside)."""
    args = ["--task", task, "--seed", str(seed), "--latency-ms", str(latency_ms),
            "--drop", str(drop), "--disconnect-for-s", str(disconnect_for_s)]
    if rate_hz:
        args += ["--rate", str(rate_hz)]
    if disconnect_after_s is not None:
        args += ["--disconnect-after-s", str(disconnect_after_s)]
    for key, value in (task_options or {}).items():
        args += ["--option", f"{key}={json.dumps(value)}"]
    return args


@contextmanager
def fake_robot(kind: str, timeout: float = 60.0, **settings: Any) -> Iterator[dict[str, Any]]:
    """Run the fake robot (and for rosbridge a stand-in server) for the block; yield the
    options for our side's `make_transport(kind, **options)`."""
    args = fake_robot_args(**settings)
    with ExitStack() as stack:
        if kind == "zenoh":
            endpoint = f"tcp/127.0.0.1:{free_port()}"
            stack.enter_context(Child("embodied.sim2real.fake_robot",
                                      ["--transport", "zenoh", "--listen", endpoint, *args],
                                      "ready", timeout))
            yield {"connect": [endpoint], "node_name": "embodied_deploy"}
        elif kind == "rosbridge":
            server = stack.enter_context(Child("embodied.sim2real.rosbridge", ["--port", "0"],
                                               "listening on", timeout))
            port = server.ready_line.rsplit(":", 1)[1]
            stack.enter_context(Child("embodied.sim2real.fake_robot",
                                      ["--transport", "rosbridge", "--port", port, *args],
                                      "ready", timeout))
            yield {"host": "127.0.0.1", "port": int(port)}
        elif kind == "ros2":
            from embodied.sim2real.ros2_transport import ensure_library_path

            ensure_library_path()  # the child inherits it before its rclpy loads
            # Discovery on this machine only, in a domain no other dry run here holds.
            stack.enter_context(_environ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"))
            domain = stack.enter_context(reserved_ros_domain())
            stack.enter_context(Child("embodied.sim2real.fake_robot",
                                      ["--transport", "ros2", "--domain-id", str(domain),
                                       *args], "ready", timeout))
            yield {"domain_id": domain, "node_name": "embodied_deploy"}
        else:
            raise ValueError(f"the fake robot runs over zenoh, rosbridge or ros2, not {kind!r}")
