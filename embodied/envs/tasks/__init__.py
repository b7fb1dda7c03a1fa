"""Built-in tasks; importing this module registers them."""

from embodied.envs.tasks import locomotion, manipulation, template  # noqa: F401
