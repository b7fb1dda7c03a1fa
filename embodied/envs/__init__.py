"""Environments: the VecEnv seam, batched backends, built-in tasks."""

from embodied.envs.registry import get_task_class, make_task, register_task, task_names
from embodied.envs.task import Task
from embodied.envs.vec_env import MujocoVecEnv, make_env

__all__ = ["MujocoVecEnv", "Task", "get_task_class", "make_env", "make_task", "register_task",
           "task_names"]
