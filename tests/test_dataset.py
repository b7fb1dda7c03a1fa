"""LeRobot v3.0 dataset writer/reader: round trip, stats, resume, corruption, durability."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embodied.core.errors import DatasetError
from embodied.data.dataset import DatasetWriter, EpisodeDataset, Feature

REPO = Path(__file__).resolve().parents[1]
CAM = "observation.images.cam"
FEATURES = {
    "observation.state": Feature("float32", (4,), ["a", "b", "c", "d"]),
    "action": Feature("float32", (2,)),
    "next.reward": Feature("float32", ()),
    "next.done": Feature("bool", ()),
    "next.success": Feature("bool", ()),
    CAM: Feature("image", (8, 8, 3), ["height", "width", "channels"]),
}
BOOKKEEPING = ["timestamp", "frame_index", "episode_index", "index", "task_index"]


def make_episode(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    done = np.zeros(n, bool)
    done[-1] = True
    return {
        "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "next.reward": rng.normal(size=n).astype(np.float32),
        "next.done": done,
        "next.success": rng.random(n) < 0.5,
        CAM: rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8),
    }


def write(root: Path, episodes: list[tuple[dict[str, np.ndarray], str]]) -> None:
    with DatasetWriter(root, FEATURES, fps=10) as w:
        for frames, task in episodes:
            w.add_episode(frames, task)


@pytest.fixture
def episodes() -> list[tuple[dict[str, np.ndarray], str]]:
    rng = np.random.default_rng(0)
    return [(make_episode(rng, 5), "pick"), (make_episode(rng, 7), "place"),
            (make_episode(rng, 3), "pick")]


def assert_stats_match(ds: EpisodeDataset, eps: list[dict[str, np.ndarray]]) -> None:
    for key in FEATURES:
        x = np.concatenate([e[key] for e in eps]).astype(np.float64)
        if key == CAM:  # per channel in [0, 1], shape [3, 1, 1]
            x, axes, shape = x / 255.0, (0, 1, 2), (3, 1, 1)
        else:
            x, axes, shape = x.reshape(len(x), -1), 0, (-1,)
        st = ds.stats[key]
        for name, fn in [("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)]:
            np.testing.assert_allclose(st[name], fn(x, axis=axes).reshape(shape), rtol=1e-9,
                                       atol=1e-12, err_msg=f"{key} {name}")
        assert st["count"].tolist() == [len(x)]
    np.testing.assert_allclose(ds.stats["index"]["mean"], [(ds.num_frames - 1) / 2])


def test_round_trip_every_column(tmp_path, episodes):
    write(tmp_path / "ds", episodes)
    ds = EpisodeDataset(tmp_path / "ds")
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (3, 15, 10)
    assert ds.tasks == ["pick", "place"]
    assert ds.episode_lengths().tolist() == [5, 7, 3]
    start = 0
    for i, (frames, task) in enumerate(episodes):
        ep = ds.episode(i)
        assert set(ep) == set(FEATURES) | set(BOOKKEEPING)
        for key, want in frames.items():
            assert ep[key].dtype == want.dtype and ep[key].shape == want.shape, key
            np.testing.assert_array_equal(ep[key], want, err_msg=key)
        n = len(frames["action"])
        np.testing.assert_array_equal(ep["frame_index"], np.arange(n))
        np.testing.assert_array_equal(ep["episode_index"], np.full(n, i))
        np.testing.assert_array_equal(ep["index"], start + np.arange(n))
        np.testing.assert_array_equal(ep["timestamp"], (np.arange(n) / 10).astype(np.float32))
        assert [ds.tasks[t] for t in ep["task_index"]] == [task] * n
        start += n
    flat = ds.to_numpy(["action", CAM, "index"])
    for key in ("action", CAM):
        np.testing.assert_array_equal(flat[key], np.concatenate([e[key] for e, _ in episodes]))
    np.testing.assert_array_equal(flat["index"], np.arange(15))
    assert_stats_match(ds, [e for e, _ in episodes])


def test_layout_and_info_json(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "sim"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 15, 2)
    assert (info["chunks_size"], info["fps"], info["splits"]) == (1000, 10, {"train": "0:3"})
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"].startswith("videos/{video_key}/")
    feats = info["features"]
    assert list(feats) == [*FEATURES, *BOOKKEEPING]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4],
                                          "names": ["a", "b", "c", "d"]}
    assert feats["next.reward"]["shape"] == [1] and feats["next.done"]["dtype"] == "bool"
    assert feats[CAM]["dtype"] == "image" and feats[CAM]["shape"] == [8, 8, 3]
    assert feats["timestamp"]["dtype"] == "float32" and feats["index"]["dtype"] == "int64"

    data = pq.read_table(root / "data/chunk-000/file-001.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)
    assert data.schema.field("next.reward").type == pa.float32()
    assert data.schema.field(CAM).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert data.column(CAM)[0]["bytes"].as_py().startswith(b"\x89PNG")
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1], "task": ["pick", "place"]}
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["tasks"] == [["pick"], ["place"], ["pick"]]
    assert eps["length"] == [5, 7, 3] and eps["data/file_index"] == [0, 1, 2]
    assert eps["dataset_from_index"] == [0, 5, 12] and eps["dataset_to_index"] == [5, 12, 15]
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count"}
    assert np.asarray(stats[CAM]["mean"]).shape == (3, 1, 1)


def test_add_frame_and_context_manager(tmp_path, episodes):
    root = tmp_path / "ds"
    frames, _ = episodes[1]
    with DatasetWriter(root, FEATURES, fps=10) as w:
        for t in range(len(frames["action"])):
            w.add_frame({k: v[t] for k, v in frames.items()}, task="pick" if t < 3 else "place")
        assert w.save_episode() == 0
        w.add_frame({k: v[0] for k, v in frames.items()}, task="x")
        w.clear_episode()
        with pytest.raises(DatasetError, match="add_frame"):
            w.save_episode()
    with pytest.raises(RuntimeError), DatasetWriter(root, FEATURES, fps=10) as w:
        w.add_frame({k: v[0] for k, v in frames.items()}, task="dropped")
        raise RuntimeError("robot fell over")
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 1 and ds.tasks == ["pick", "place"]
    ep = ds.episode(0)
    for key, want in frames.items():
        np.testing.assert_array_equal(ep[key], want, err_msg=key)
    assert ep["task_index"].tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_torch_tensors_and_scalar_as_column(tmp_path, episodes):
    torch = pytest.importorskip("torch")
    frames, _ = episodes[0]
    given = {k: torch.from_numpy(v) for k, v in frames.items()}
    given["next.reward"] = given["next.reward"][:, None].requires_grad_(True)  # [T, 1] accepted
    write(tmp_path / "ds", [(given, "pick")])
    ep = EpisodeDataset(tmp_path / "ds").episode(0)
    for key, want in frames.items():
        np.testing.assert_array_equal(ep[key], want, err_msg=key)


def test_reopen_appends_and_stats_stay_exact(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes[:2])
    with DatasetWriter(root, FEATURES, fps=10) as w:
        assert (w.num_episodes, w.num_frames) == (2, 12)
        assert w.add_episode(*episodes[2]) == 2
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 3 and ds.tasks == ["pick", "place"]
    np.testing.assert_array_equal(ds.episode(2)["index"], np.arange(12, 15))
    np.testing.assert_array_equal(ds.episode(2)["action"], episodes[2][0]["action"])
    assert_stats_match(ds, [e for e, _ in episodes])


def test_reopen_with_other_features_or_fps_fails(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes[:1])
    other = {**FEATURES, "action": Feature("float32", (3,))}
    with pytest.raises(DatasetError, match=r"'action'.*new root"):
        DatasetWriter(root, other, fps=10)
    with pytest.raises(DatasetError, match=r"'next.success' is missing"):
        DatasetWriter(root, {k: f for k, f in FEATURES.items() if k != "next.success"}, fps=10)
    with pytest.raises(DatasetError, match="fps"):
        DatasetWriter(root, FEATURES, fps=30)
    with DatasetWriter(root, FEATURES, fps=10) as w:  # failed opens released the lock
        with pytest.raises(DatasetError, match="another DatasetWriter"):
            DatasetWriter(root, FEATURES, fps=10)
        assert w.num_episodes == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda f: f.pop("action"), r"missing \['action'\]"),
        (lambda f: f.update(extra=np.zeros(5)), r"unexpected \['extra'\]"),
        (lambda f: f.update(index=np.arange(5)), "filled by the writer"),
        (lambda f: f.update(action=np.zeros((5, 3), np.float32)), r"'action'.*\[T, 2\]"),
        (lambda f: f.update(action=np.zeros((4, 2), np.float32)), "same number"),
        (lambda f: f["observation.state"].__setitem__((2, 1), np.nan), "'observation.state'.*NaN"),
        (lambda f: f.update({"next.done": np.full(5, 2)}), "'next.done'.*0/1"),
        (lambda f: f.update({CAM: np.zeros((5, 8, 8, 3), np.float32)}), "uint8"),
    ],
)
def test_invalid_input_is_rejected(tmp_path, change, match):
    frames = make_episode(np.random.default_rng(1), 5)
    change(frames)
    with DatasetWriter(tmp_path / "ds", FEATURES, fps=10) as w:
        with pytest.raises(DatasetError, match=match):
            w.add_episode(frames, "pick")
        assert w.num_episodes == 0
    assert EpisodeDataset(tmp_path / "ds").num_episodes == 0


def test_corrupt_info_json(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes[:1])
    info = root / "meta/info.json"
    text = info.read_text()
    info.write_text(text[: len(text) // 2])
    with pytest.raises(DatasetError, match="info.json.*not valid JSON"):
        EpisodeDataset(root)
    info.write_text(text.replace('"v3.0"', '"v2.1"'))
    with pytest.raises(DatasetError, match="v2.1.*conversion"):
        EpisodeDataset(root)
    info.unlink()
    with pytest.raises(DatasetError, match="info.json is missing"):
        EpisodeDataset(root)
    with pytest.raises(DatasetError, match="does not exist"):
        EpisodeDataset(tmp_path / "nowhere")


def test_missing_or_broken_data_file(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes)
    path = root / "data/chunk-000/file-001.parquet"
    path.write_bytes(b"not parquet")
    named = "file-001.parquet, named by meta/episodes, is missing or unreadable"
    with pytest.raises(DatasetError, match=f"{named}.*magic bytes"):
        EpisodeDataset(root)
    path.unlink()
    with pytest.raises(DatasetError, match=f"{named}.*No such file"):
        EpisodeDataset(root)
    table = pq.read_table(root / "data/chunk-000/file-000.parquet").drop_columns(["action"])
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match="'action'.*missing.*float32"):
        EpisodeDataset(root)


def test_stray_data_files_are_ignored(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes[:2])
    shutil.copy(root / "data/chunk-000/file-000.parquet", root / "data/chunk-000/file-002.parquet")
    (root / "data/chunk-000/file-007.parquet").write_bytes(b"half a file")
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 12
    assert len(ds.to_numpy(["index"])["index"]) == 12
    write(root, episodes[2:])  # resume overwrites the stray file-002
    np.testing.assert_array_equal(EpisodeDataset(root).episode(2)["action"],
                                  episodes[2][0]["action"])


def test_info_json_is_the_commit_point(tmp_path, episodes):
    """Killed after stats/episodes but before info.json: the extra episode is not there."""
    root = tmp_path / "ds"
    write(root, episodes[:2])
    committed = (root / "meta/info.json").read_text()
    write(root, episodes[2:])
    (root / "meta/info.json").write_text(committed)
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 12
    assert_stats_match(ds, [e for e, _ in episodes[:2]])  # stale stats.json rebuilt
    with pytest.raises(IndexError):
        ds.episode(2)
    write(root, episodes[2:])
    assert_stats_match(EpisodeDataset(root), [e for e, _ in episodes])


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from embodied.data.dataset import DatasetWriter, Feature

    feats = {"observation.state": Feature("float32", (3,)), "action": Feature("float32", (2,)),
             "next.done": Feature("bool", ())}
    with DatasetWriter(sys.argv[1], feats, fps=10) as w:
        i = 0
        while True:
            n = 20 + i % 5
            done = np.arange(n) == n - 1
            w.add_episode({"observation.state": np.full((n, 3), i, np.float32),
                           "action": np.full((n, 2), -i, np.float32), "next.done": done},
                          task=f"task {i % 2}")
            i += 1
            time.sleep(0.01)
    """
)


def test_sigkill_loses_at_most_the_episode_in_progress(tmp_path):
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(root)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((root / "meta/info.json").read_text())["total_episodes"] >= 8:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ds = EpisodeDataset(root)
    assert ds.num_episodes >= 8
    for i in range(ds.num_episodes):
        ep = ds.episode(i)
        n = 20 + i % 5
        np.testing.assert_array_equal(ep["observation.state"], np.full((n, 3), i, np.float32))
        np.testing.assert_array_equal(ep["action"], np.full((n, 2), -i, np.float32))
        np.testing.assert_array_equal(ep["next.done"], np.arange(n) == n - 1)
        assert ds.tasks[ep["task_index"][0]] == f"task {i % 2}"
    assert ds.stats["observation.state"]["count"].tolist() == [ds.num_frames]
    # The dataset resumes after the kill; a half-written next episode is overwritten.
    feats = {k: f for k, f in ds.features.items()
             if k in ("observation.state", "action", "next.done")}
    with DatasetWriter(root, feats, fps=10) as w:
        n = ds.num_episodes
        frames = {"observation.state": np.ones((2, 3)), "action": np.ones((2, 2)),
                  "next.done": np.array([False, True])}
        assert w.add_episode(frames, task="resumed") == n
    assert EpisodeDataset(root).num_episodes == n + 1
    assert not list(root.glob("**/.*.tmp"))
    assert not list(root.glob("**/.*.tmp*"))  # the writer's temp names: .<name>.XXXX.tmp.<ext>
