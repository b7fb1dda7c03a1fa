"""The one entry point: `embodied <command> key=value ...`, configs composed by Hydra.

Each command has a config `configs/<command>.yaml`; overrides use Hydra's syntax
(`task=push_cube episodes=50 task.options.reward_type=dense`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

USAGE = """usage: embodied <command> [key=value ...]

commands:
  collect   run a task's expert in batched envs and write a LeRobot v3 dataset (+ videos)
  pretrain  behaviour-clone a flow / shortcut / diffusion / Gaussian policy from a dataset
  eval      success rate of a saved policy in batched envs (+ video)
  finetune  RL fine-tuning of a pretrained policy (ReinFlow, Flow-Noise, Flow-SDE, DPPO,
            ResiP, GRPO) or the Gaussian PPO baseline
  quickstart  fine-tune the shipped pick_place base with Flow-SDE (7-17 min on 2 cores)
  deploy    run a policy on a robot through the bridge (robot=fake: a dry run, MuJoCo behind it)
  record    record teleoperated robot episodes into a LeRobot v3 dataset
  tasks     list the registered tasks

examples:
  embodied collect task=push_cube episodes=50 video=true
  embodied collect task=hopper episodes=20 noise=0.1 out=data/hopper_noisy
  embodied pretrain task=push_cube dataset=data/push_cube policy=flow_mlp
  embodied eval task=push_cube checkpoint=runs/pretrain_push_cube_flow_mlp/policy
  embodied finetune task=pick_place algo=reinflow algo.iterations=300
  embodied deploy robot=fake policy=assets/base/push_cube_flow transport=zenoh
  embodied record robot=fake task=push_cube episodes=5 repo=data/robot_push_cube
  embodied collect --cfg        (print the composed config and exit)
"""


def _commands() -> dict[str, Callable]:
    from embodied import commands
    from embodied.envs.registry import list_tasks_command

    return {"collect": commands.collect_command, "pretrain": commands.pretrain_command,
            "eval": commands.eval_command, "finetune": commands.finetune_command,
            "quickstart": commands.finetune_command,
            "deploy": commands.deploy_command, "record": commands.record_command,
            "tasks": list_tasks_command}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = argv[0], argv[1:]
    # Offscreen rendering needs this before mujoco is first imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    commands = _commands()
    if command not in commands:
        print(f"embodied: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    show_config = "--cfg" in overrides
    overrides = [_path_alias(command, o) for o in overrides if o != "--cfg"]
    cfg = compose(command, overrides)
    if show_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    from embodied.core.errors import EmbodiedError

    try:
        commands[command](cfg)
    except EmbodiedError as e:  # bad input or a failed check: the message names the fix
        print(f"embodied {command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


# `policy` is a config group (configs/policy/, the nets pretrain builds), so Hydra would
# read `policy=<dir>` as a group choice; these commands take a saved policy's directory.
_POLICY_PATH_KEY = {"deploy": "checkpoint"}


def _path_alias(command: str, override: str) -> str:
    """`embodied deploy policy=<dir>` means `checkpoint=<dir>`."""
    key = _POLICY_PATH_KEY.get(command)
    if key and override.startswith("policy="):
        return f"{key}={override.split('=', 1)[1]}"
    return override


def compose(command: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from embodied.core.paths import CONFIGS_DIR

    if not (CONFIGS_DIR / f"{command}.yaml").exists():
        return None
    try:
        with initialize_config_dir(str(CONFIGS_DIR), version_base=None):
            cfg = hydra_compose(config_name=command, overrides=overrides,
                                return_hydra_config=True)
        # Lets configs use ${hydra:runtime.choices.<group>} (e.g. the policy's name).
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
        return cfg
    except (HydraException, OmegaConfBaseException) as e:
        raise SystemExit(f"embodied {command}: bad configuration: {e}") from None


if __name__ == "__main__":
    raise SystemExit(main())
