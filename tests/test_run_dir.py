"""Run directories survive crashes and user mistakes: a kill during the first checkpoint
write, corrupt weights and training states, repeated runs, bad values; and one seed gives
one set of weights."""

import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from embodied.cli import main
from embodied.core.progress import Progress
from embodied.policies.config import PolicyConfig
from embodied.policies.policy import ChunkPolicy

TINY = ["task=reach", "algo=reinflow", "algo.iterations=2", "algo.num_envs=4",
        "algo.decisions_per_iteration=2", "algo.eval_every=1", "algo.eval_episodes=4",
        "algo.video=false", "algo.minibatch_size=8", "algo.epochs=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "policy"
    ChunkPolicy(PolicyConfig(obs_dim=8, action_dim=2, horizon=4, n_action_steps=2,
                             num_steps=2, net_kwargs={"hidden": 32, "depth": 1})
                ).save_pretrained(path)
    return path


def finetune(base, run_dir, *extra, capsys=None):
    code = main(["finetune", *TINY, f"base={base}", f"run_dir={run_dir}", *extra])
    out = capsys.readouterr() if capsys is not None else None
    return code, out


def test_kill_during_first_checkpoint_write_then_resume(base, tmp_path):
    run = tmp_path / "run"
    # A run that SIGKILLs itself while torch.save writes its first training state.
    dying = textwrap.dedent(f"""
        import os, signal, sys, torch
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            if "train_state" in str(f):
                with open(f, "wb") as out:
                    out.write(b"PK")  # a few bytes of a zip archive, then death
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
        from embodied.cli import main
        sys.exit(main({["finetune", *TINY, "algo.checkpoint_every=1", f"base={base}",
                        f"run_dir={run}"]!r}))
    """)
    killed = subprocess.run([sys.executable, "-c", dying], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    temps = list((run / "checkpoints").glob(".train_state.pt.*"))
    assert temps and not (run / "checkpoints" / "train_state.pt").exists()
    rows_before = (run / "metrics.jsonl").read_text().splitlines()
    assert rows_before  # the killed run logged its first evaluation and iteration

    resumed = subprocess.run(
        [sys.executable, "-m", "embodied.cli", "finetune", *TINY, "algo.checkpoint_every=1",
         f"base={base}", f"run_dir={run}", "resume=true"],
        capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"no checkpoint in {run}: starting fresh" in resumed.stdout
    assert not list((run / "checkpoints").glob(".train_state.pt.*"))  # stale temp removed
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["iteration"] for r in rows if "success_rate" in r]
    trains = [r["iteration"] for r in rows if "approx_kl" in r]
    assert evals == [0, 1, 2]  # each evaluation once (the last one after training)
    assert trains == [1, 2]  # no row of the killed run survives


def test_resume_drops_rows_logged_after_the_checkpoint(base, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune(base, run, "algo.checkpoint_every=1", capsys=capsys)[0] == 0
    state = torch.load(run / "checkpoints" / "train_state.pt", weights_only=False)
    assert state["iteration"] == 2
    with open(run / "metrics.jsonl", "a") as f:  # rows a killed run wrote after it
        f.write(json.dumps({"step": 999, "iteration": 3, "approx_kl": 0.0}) + "\n")
    code, out = finetune(base, run, "algo.iterations=3", "resume=true", capsys=capsys)
    assert code == 0 and f"resuming from iteration 2 of {run}" in out.out
    trains = [json.loads(line).get("iteration") for line in
              (run / "metrics.jsonl").read_text().splitlines() if "approx_kl" in line]
    assert trains == [1, 2, 3]


def test_resume_on_an_empty_run_dir_says_it_starts_fresh(base, tmp_path, capsys):
    code, out = finetune(base, tmp_path / "new", "resume=true", capsys=capsys)
    assert code == 0 and "no checkpoint in" in out.out and "starting fresh" in out.out


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_corrupt_weights_and_training_state_give_one_line_errors(base, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((base / name).read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated mid-header
    assert main(["eval", "task=reach", f"checkpoint={broken}", "episodes=2",
                 f"run_dir={tmp_path / 'eval'}", "video=false"]) == 1
    _one_line_error(capsys.readouterr().err, str(weights), "CheckpointError")
    assert finetune(broken, tmp_path / "ft")[0] == 1
    _one_line_error(capsys.readouterr().err, str(weights))

    run = tmp_path / "run"
    assert finetune(base, run, capsys=capsys)[0] == 0
    state = run / "checkpoints" / "train_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert finetune(base, run, "resume=true")[0] == 1
    _one_line_error(capsys.readouterr().err, str(state), "delete it")


def test_two_identical_runs_give_identical_weights(base, tmp_path, capsys):
    for name in ("a", "b"):
        torch.randn(7)  # the global generator moves between runs, as in any process
        assert finetune(base, tmp_path / name, capsys=capsys)[0] == 0
    a = load_file(str(tmp_path / "a" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "policy" / "model.safetensors"))
    assert any(k.startswith("noise_head.") for k in a)  # the fresh head is compared too
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_overwrite_replaces_a_previous_run_and_says_so(base, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune(base, run, "overwrite=true", capsys=capsys)[0] == 0
    code, out = finetune(base, run, "overwrite=true", capsys=capsys)
    assert code == 0 and f"replacing the previous run in {run}" in out.out
    assert len([1 for line in (run / "metrics.jsonl").read_text().splitlines()
                if "approx_kl" in line]) == 2
    assert finetune(base, run, "overwrite=true", "resume=true")[0] == 1


@pytest.mark.parametrize("override", ["algo.num_envs=0", "algo.num_envs=-4",
                                      "algo.gamma=1.5", "algo.epochs=0"])
def test_out_of_range_settings_are_one_line_errors(base, tmp_path, capsys, override):
    assert finetune(base, tmp_path / "run", override)[0] == 1
    _one_line_error(capsys.readouterr().err, override.split(".")[1].split("=")[0])


def test_a_policy_for_another_task_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", "task=hopper", "checkpoint=assets/base/pick_place_flow",
                 "episodes=2", f"run_dir={tmp_path}", "video=false"]) == 1
    _one_line_error(capsys.readouterr().err, "obs 26 / action 4", "'hopper'")


def test_progress_without_a_terminal_prints_plain_lines():
    stream = io.StringIO()  # not a tty: no bar redrawn per update
    bar = Progress(4, desc="finetune", unit="iterations", every_s=3600, stream=stream)
    for _ in range(4):
        bar.set_postfix(success="0.50")
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1  # only the final line: the interval never elapsed
    assert lines[0].startswith("finetune 4/4 iterations (100%)") and "success=0.50" in lines[0]


def test_overwrite_refuses_a_directory_that_is_not_a_run(base, tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "thesis.tex").write_text("notes")
    assert finetune(base, project, "overwrite=true")[0] == 1
    _one_line_error(capsys.readouterr().err, "not a run's", "thesis.tex")
    assert (project / "thesis.tex").exists() and (project / "src").is_dir()
    # Its own base inside the run directory is refused too (it would be deleted first).
    run = tmp_path / "run"
    assert finetune(base, run, capsys=capsys)[0] == 0
    assert finetune(run / "policy", run, "overwrite=true")[0] == 1
    _one_line_error(capsys.readouterr().err, "own input")
    assert (run / "policy" / "model.safetensors").exists()


def test_a_run_dir_that_is_a_file_is_a_one_line_error(base, tmp_path, capsys):
    file = tmp_path / "afile"
    file.write_text("")
    assert finetune(base, file)[0] == 1
    _one_line_error(capsys.readouterr().err, "is a file")
    assert main(["eval", "task=reach", f"checkpoint={base}", "episodes=1", "video=false",
                 f"run_dir={file}"]) == 1
    _one_line_error(capsys.readouterr().err, "is a file")


def test_resume_never_pads_a_metrics_file_shorter_than_recorded(base, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune(base, run, "algo.checkpoint_every=1", capsys=capsys)[0] == 0
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])  # a lost tail
    code, out = finetune(base, run, "algo.iterations=3", "resume=true", capsys=capsys)
    assert code == 0 and "rows logged before the checkpoint were lost" in out.out
    assert b"\0" not in metrics.read_bytes()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert rows[-1]["iteration"] == 3


def test_resuming_a_finished_run_continues_its_curve(base, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert finetune(base, whole, "algo.iterations=4", "algo.checkpoint_every=2",
                    capsys=capsys)[0] == 0
    assert finetune(base, cut, "algo.checkpoint_every=2", capsys=capsys)[0] == 0  # 2 its
    assert finetune(base, cut, "algo.iterations=4", "algo.checkpoint_every=2",
                    "resume=true", capsys=capsys)[0] == 0

    def curve(run):
        return [(r["iteration"], r["success_rate"]) for r in map(
            json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "success_rate" in r]

    assert [i for i, _ in curve(cut)] == [i for i, _ in curve(whole)] == [0, 1, 2, 3, 4]


def test_resume_with_another_num_envs_is_refused(base, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune(base, run, capsys=capsys)[0] == 0
    assert finetune(base, run, "algo.num_envs=8", "algo.iterations=3", "resume=true")[0] == 1
    _one_line_error(capsys.readouterr().err, "num_envs=4")


def test_a_kill_between_the_policy_renames_keeps_the_last_policy(base, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune(base, run, capsys=capsys)[0] == 0
    (run / "policy").rename(run / ".policy.old")  # killed after the first rename
    (run / ".policy.abc123").mkdir()  # the new copy, maybe incomplete
    from embodied.core.checkpoint import remove_stale_temps

    remove_stale_temps(run)
    assert (run / "policy" / "model.safetensors").exists()
    assert not (run / ".policy.old").exists() and not (run / ".policy.abc123").exists()


@pytest.mark.parametrize("size", ["0", "-5"])
def test_a_bad_image_size_is_a_one_line_error(tmp_path, capsys, size):
    assert main(["finetune", "task=reach", "algo=gaussian_ppo", "base=null",
                 "algo.cameras=[top]", f"algo.image_size={size}", "algo.iterations=1",
                 f"run_dir={tmp_path / 'ft'}"]) == 1
    _one_line_error(capsys.readouterr().err, "image_size")
    assert main(["collect", "task=reach", "episodes=1", "num_envs=1", "cameras=[top]",
                 f"image_size={size}", f"out={tmp_path / 'data'}",
                 f"run_dir={tmp_path / 'c'}"]) == 1
    _one_line_error(capsys.readouterr().err, "image_size")
