"""Run directories that survive crashes: reading checkpoints with clear errors, and
reconciling what a killed run left behind with the checkpoint a new run starts from.

A training run writes `checkpoints/train_state.pt` atomically (a temp file renamed over
it), so after a crash it holds the last good state or nothing; what can be stale is the
temp file of a write in progress and the metrics logged after the last checkpoint.
`prepare_run_dir` removes the first and says what happens next; the trainer truncates
`metrics.jsonl` to the length the checkpoint recorded (`truncate_metrics`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from embodied.core.errors import CheckpointError, ConfigError

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "checkpoints/train_state.pt"  # inside a run directory
# What a run writes into its directory: all that overwrite=true may remove.
RUN_ARTEFACTS = {"config.yaml", METRICS_FILE, "summary.json", "curve.png", "tensorboard",
                 "checkpoints", "policy", "videos", "interventions.jsonl", "replay"}


def load_training_state(path: Path) -> dict[str, Any]:
    """torch.load of a training state, or a one-line error naming the file and the way out."""
    import torch

    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:  # truncated, corrupt, or not a torch file at all
        raise CheckpointError(
            f"{path} is not a readable training state ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); it was probably cut off mid-write by an old "
            "version or damaged on disk: delete it to start the run over, or pass another "
            "run_dir=...") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state: "
                              "delete it or pass another run_dir=...")
    return state


def load_weights(path: Path) -> dict[str, Any]:
    """safetensors weights, or a one-line error naming the file and the way out."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError (truncated header / data), OSError ...
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}): the checkpoint is truncated or corrupt; "
            "re-save or re-download the policy, or point to another checkpoint") from None


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temp files and directories of writes a crash interrupted (atomic_write's
    `.<name>.*.tmp*`, atomic_directory's `.<name>.*`): they hold nothing loadable."""
    removed = []
    policy, previous = run_dir / "policy", run_dir / ".policy.old"
    if not policy.exists() and previous.is_dir():
        # Killed between the two renames of atomic_directory: the old copy is the last good
        # one (the training state on disk was saved with it).
        previous.rename(policy)
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for item in folder.iterdir():
            if (item.name.startswith(".") and ".tmp" in item.name
                    or item.is_dir() and item.name.startswith(".policy.")):
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
                removed.append(item)
    return removed


def prepare_run_dir(run_dir: Path, state_path: Path, *, resume: bool,
                    overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> str:
    """Make `run_dir` ready for a run and say what will happen, in one line.

    - overwrite: the previous run's files are removed first (the quickstart, so that
      running README command 1 again simply works); a directory holding anything else, or
      the run's own inputs (`inputs`: its dataset, its base policy), is refused;
    - a checkpoint without resume is an error (nothing is overwritten by accident);
    - resume with a checkpoint: the caller loads it and truncates the metrics to it;
    - otherwise the run starts fresh, and metrics of a run that died before its first
      checkpoint are dropped (they would be duplicated by the new run's).
    """
    if resume and overwrite:
        raise ConfigError("resume=true and overwrite=true contradict each other: pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir {run_dir} is a file, not a directory: pass another "
                          "run_dir=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite and any(run_dir.iterdir()):
        foreign = sorted(p.name for p in run_dir.iterdir()
                         if p.name not in RUN_ARTEFACTS and not p.name.startswith("."))
        inside = [str(p) for p in inputs if _within(Path(p), run_dir)]
        if foreign or inside:
            what = f"files that are not a run's ({', '.join(foreign[:5])})" if foreign \
                else f"this run's own input ({', '.join(inside)})"
            raise ConfigError(f"overwrite=true would delete {what} in {run_dir}: overwrite "
                              "only replaces a previous run; pass another run_dir=...")
        for item in run_dir.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        return f"replacing the previous run in {run_dir}"
    stale = remove_stale_temps(run_dir)
    note = f" (removed {len(stale)} stale temp file(s) of an interrupted write)" if stale else ""
    if state_path.exists():
        if not resume:
            raise ConfigError(f"{run_dir} already holds a run with a checkpoint: pass "
                              "resume=true to continue it, or another run_dir=... to start "
                              "afresh")
        return f"resuming from the checkpoint in {run_dir}{note}"
    metrics = run_dir / METRICS_FILE
    had_metrics = metrics.exists() and metrics.stat().st_size > 0
    truncate_metrics(run_dir, 0)
    if resume:
        return f"no checkpoint in {run_dir}: starting fresh{note}"
    if had_metrics:
        return (f"{run_dir} holds a run that stopped before its first checkpoint: starting "
                f"fresh, its metrics dropped{note}")
    return f"starting a new run in {run_dir}{note}"


def truncate_metrics(run_dir: Path, length: int) -> str | None:
    """Drop the metric rows logged after a checkpoint (it recorded the file's length then).
    A file shorter than recorded (lost in a crash) is never extended: its complete lines
    stay, and the returned note says rows were lost."""
    metrics = run_dir / METRICS_FILE
    note = None
    if metrics.exists():
        size = metrics.stat().st_size
        if size < length:
            note = (f"{metrics} is shorter than its checkpoint recorded ({size} < "
                    f"{length} bytes): rows logged before the checkpoint were lost")
            length = metrics.read_bytes().rfind(b"\n") + 1  # keep whole lines only
        with open(metrics, "r+b") as f:
            f.truncate(length)
    if length == 0:  # nothing survives: TensorBoard's events go too
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    return note


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
