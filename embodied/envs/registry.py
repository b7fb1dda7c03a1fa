"""One registry of tasks, filled by the `@register_task` decorator."""

from __future__ import annotations

from typing import Any, TypeVar

from embodied.core.errors import ConfigError

T = TypeVar("T", bound=type)
_TASKS: dict[str, type] = {}


def register_task(name: str):
    """Class decorator: make a Task subclass available as `make_env(name)`."""

    def wrap(cls: T) -> T:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ConfigError(f"task {name!r} is registered twice ({_TASKS[name]} and {cls})")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_TASKS)


def get_task_class(name: str) -> type:
    _load_builtin_tasks()
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {task_names()}") from None


def make_task(name: str, **options: Any):
    return get_task_class(name)(**options)


def _load_builtin_tasks() -> None:
    # Imported lazily so that `embodied.envs` stays cheap to import and tasks may import it.
    from embodied.envs import tasks  # noqa: F401


def list_tasks_command(cfg: object = None) -> None:
    """`embodied tasks`: print each registered task with its one-line description."""
    for name in task_names():
        print(f"{name:14s} {getattr(_TASKS[name], 'description', '')}")
