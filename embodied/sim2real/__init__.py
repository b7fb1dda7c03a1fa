"""Sim-to-real: the bridge between our policies and a ROS robot (without a ROS install),
and the sim side of it (domain randomisation, observation noise, action latency).

`messages` turns plain dicts into ROS 2 CDR bytes and back (via rosbags); a `Transport`
(`make_transport("inproc" | "zenoh" | "rosbridge", ...)`) moves them: zenoh in rmw_zenoh's
wire format for ROS 2 on Zenoh, rosbridge JSON for everything else.

Nothing is imported eagerly: `import embodied.sim2real.<module>` must work for modules that
do not need the optional `bridge` extra (rosbags, zenoh, roslibpy).
"""

from typing import Any

__all__ = ["Meta", "Transport", "make_transport"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from embodied.sim2real import transport

        return getattr(transport, name)
    raise AttributeError(f"module 'embodied.sim2real' has no attribute {name!r}")
