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
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embodied.core.errors import DatasetError
from embodied.data import dataset as dataset_module
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


def write(root: Path, episodes: list[tuple[dict[str, np.ndarray], str]], **kwargs) -> None:
    with DatasetWriter(root, FEATURES, fps=10, **kwargs) as w:
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
    assert info["data_files_size_in_mb"] == 100 and info["video_path"] is None  # no videos
    feats = info["features"]
    assert list(feats) == [*FEATURES, *BOOKKEEPING]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4],
                                          "names": ["a", "b", "c", "d"]}
    assert feats["next.reward"]["shape"] == [1] and feats["next.done"]["dtype"] == "bool"
    assert feats[CAM]["dtype"] == "image" and feats[CAM]["shape"] == [8, 8, 3]
    assert feats["timestamp"]["dtype"] == "float32" and feats["index"]["dtype"] == "int64"

    # All three episodes in one data file, one row group each (as LeRobot writes them).
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("data/**/*.parquet")) == [
        "data/chunk-000/file-000.parquet"]
    assert pq.ParquetFile(root / "data/chunk-000/file-000.parquet").num_row_groups == 3
    assert not (root / ".journal").exists()
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(15))
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)
    assert data.schema.field("next.reward").type == pa.float32()
    assert data.schema.field(CAM).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert data.column(CAM)[0]["bytes"].as_py().startswith(b"\x89PNG")
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1], "task": ["pick", "place"]}
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["tasks"] == [["pick"], ["place"], ["pick"]]
    assert eps["length"] == [5, 7, 3] and eps["data/file_index"] == [0, 0, 0]
    assert eps["dataset_from_index"] == [0, 5, 12] and eps["dataset_to_index"] == [5, 12, 15]
    assert eps["meta/episodes/chunk_index"] == eps["meta/episodes/file_index"] == [0, 0, 0]
    for i, (frames, _) in enumerate(episodes):  # LeRobot's per-episode stats columns
        np.testing.assert_allclose(eps["stats/action/mean"][i], frames["action"].mean(0))
        assert eps["stats/action/count"][i] == [len(frames["action"])]
    assert np.asarray(eps[f"stats/{CAM}/std"][0]).shape == (3, 1, 1)
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
    with pytest.raises(DatasetError, match="holds data or episode files but no meta/info.json"):
        DatasetWriter(root, FEATURES, fps=10)  # would overwrite them
    with pytest.raises(DatasetError, match="does not exist"):
        EpisodeDataset(tmp_path / "nowhere")


def test_missing_or_broken_data_file(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    path.write_bytes(b"not parquet")
    named = "file-000.parquet, named by meta/episodes, is missing or unreadable"
    with pytest.raises(DatasetError, match=f"{named}.*magic bytes"):
        EpisodeDataset(root)
    path.unlink()
    with pytest.raises(DatasetError, match=f"{named}.*No such file"):
        EpisodeDataset(root)
    pq.write_table(table.drop_columns(["action"]), path)
    with pytest.raises(DatasetError, match="'action'.*missing.*float32"):
        EpisodeDataset(root)
    pq.write_table(table.slice(0, 13), path)  # cut inside episode 2 (frames 12..14)
    with pytest.raises(DatasetError, match=r"13 rows.*episode 2 at rows \[12, 15\)"):
        EpisodeDataset(root)
    pq.write_table(table.take(list(range(5, 12)) + list(range(5)) + list(range(12, 15))), path)
    with pytest.raises(DatasetError, match=r"rows \[0, 5\) of .*file-000.parquet are not "
                                           "episode 0"):
        EpisodeDataset(root).episode(0)


def test_stray_data_files_are_ignored(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes[:2])
    shutil.copy(root / "data/chunk-000/file-000.parquet", root / "data/chunk-000/file-001.parquet")
    (root / "data/chunk-000/file-007.parquet").write_bytes(b"half a file")
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 12
    assert len(ds.to_numpy(["index"])["index"]) == 12
    write(root, episodes[2:])  # resume deletes the strays; episode 2 goes to file-001
    np.testing.assert_array_equal(EpisodeDataset(root).episode(2)["action"],
                                  episodes[2][0]["action"])
    assert sorted(p.name for p in root.glob("data/*/*.parquet")) == ["file-000.parquet",
                                                                    "file-001.parquet"]


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


def lerobot_frames(root: Path) -> pd.DataFrame:
    """The frames as LeRobot's reader sees them: every data file, in path order, concatenated."""
    return pd.concat([pd.read_parquet(p) for p in sorted(root.glob("data/*/*.parquet"))],
                     ignore_index=True)


def lerobot_episodes(root: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(root.glob("meta/episodes/*/*.parquet"))],
                     ignore_index=True)


def test_lerobot_reads_the_task_from_the_tasks_index(tmp_path, episodes):
    """LeRobot takes a frame's task as `meta.tasks.iloc[task_index].name` (the pandas index)."""
    root = tmp_path / "ds"
    write(root, episodes)
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert tasks.loc["place"].task_index == 1  # LeRobot's get_task_index
    frames = lerobot_frames(root)
    got = [tasks.iloc[t].name for t in frames["task_index"]]
    assert got == [task for f, task in episodes for _ in f["action"]]
    meta = json.loads(pq.read_schema(root / "meta/tasks.parquet").metadata[b"pandas"])
    assert meta["index_columns"] == ["task"]


def test_feature_names_are_filled(tmp_path, episodes):
    root = tmp_path / "ds"
    write(root, episodes[:1])
    feats = json.loads((root / "meta/info.json").read_text())["features"]
    assert feats["observation.state"]["names"] == ["a", "b", "c", "d"]  # given names kept
    assert feats["action"]["names"] == ["action_0", "action_1"]
    assert feats[CAM]["names"] == ["height", "width", "channels"]  # LeRobot's (h, w, c) marker
    assert feats["next.reward"]["names"] is None  # scalars: null, as LeRobot's own columns
    assert EpisodeDataset(root).features[CAM].names == ["height", "width", "channels"]
    with pytest.raises(DatasetError, match="'action' has names.*give 2 names"):
        DatasetWriter(tmp_path / "bad", {**FEATURES, "action": Feature("float32", (2,), ["x"])},
                      fps=10)
    # A dataset of an older writer (no names, tasks as plain columns) is fixed on resume.
    info = json.loads((root / "meta/info.json").read_text())
    for f in info["features"].values():
        f["names"] = None
    (root / "meta/info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task_index": [0], "task": ["pick"]}), root / "meta/tasks.parquet")
    assert pd.read_parquet(root / "meta/tasks.parquet").iloc[0].name == 0  # the review's bug
    write(root, episodes[2:3])  # task "pick" again: no new task to rewrite the file for
    assert EpisodeDataset(root).features[CAM].names == ["height", "width", "channels"]
    assert pd.read_parquet(root / "meta/tasks.parquet").iloc[0].name == "pick"


def test_episodes_share_data_files_up_to_the_size_cap(tmp_path):
    rng = np.random.default_rng(2)
    eps = [(make_episode(rng, 6), "pick") for _ in range(12)]
    probe = tmp_path / "probe"
    write(probe, eps[:1])
    one = (probe / "data/chunk-000/file-000.parquet").stat().st_size
    root, cap = tmp_path / "ds", 3.5 * one / 2**20  # room for three episodes, not four
    write(root, eps[:10], data_files_size_in_mb=cap, chunks_size=2)
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("data/*/*.parquet"))
    assert files == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                     "data/chunk-001/file-000.parquet", "data/chunk-001/file-001.parquet"]
    assert all((root / f).stat().st_size < cap * 2**20 for f in files)
    meta = lerobot_episodes(root)
    assert meta["data/chunk_index"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert meta["data/file_index"].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
    info = json.loads((root / "meta/info.json").read_text())
    assert (info["data_files_size_in_mb"], info["chunks_size"]) == (cap, 2)
    # As LeRobot reads it: data files in path order are the frames in index order, and each
    # episode's [dataset_from_index, dataset_to_index) are its rows, in its data file.
    frames = lerobot_frames(root)
    assert frames["index"].tolist() == list(range(60))
    for row in meta.itertuples():
        path = root / info["data_path"].format(chunk_index=row[meta.columns.get_loc(
            "data/chunk_index") + 1], file_index=row[meta.columns.get_loc("data/file_index") + 1])
        data = pd.read_parquet(path)
        mine = data[(data["index"] >= row.dataset_from_index)
                    & (data["index"] < row.dataset_to_index)]
        assert len(mine) == row.length and (mine["episode_index"] == row.episode_index).all()
    ds = EpisodeDataset(root)
    for i, (frames_i, _) in enumerate(eps[:10]):
        np.testing.assert_array_equal(ds.episode(i)[CAM], frames_i[CAM])
    assert_stats_match(ds, [e for e, _ in eps[:10]])
    write(root, eps[10:])  # a resume starts a new file, as LeRobot's writer does
    assert lerobot_episodes(root)["data/file_index"].tolist()[-2:] == [0, 0]
    assert EpisodeDataset(root).to_numpy(["index"])["index"].tolist() == list(range(72))


def test_open_data_file_is_read_from_the_journal(tmp_path, episodes):
    root = tmp_path / "ds"
    with DatasetWriter(root, FEATURES, fps=10) as w:
        for frames, task in episodes[:2]:
            w.add_episode(frames, task)
        assert not list(root.glob("data/*/*.parquet"))  # assembled when full or at close
        assert len(list(root.glob(".journal/episode-*.parquet"))) == 2
        ds = EpisodeDataset(root)  # a reader while the writer is open
        for i, (frames, _) in enumerate(episodes[:2]):
            np.testing.assert_array_equal(ds.episode(i)["action"], frames["action"])
    assert not (root / ".journal").exists()
    ds = EpisodeDataset(root)
    np.testing.assert_array_equal(ds.episode(1)["action"], episodes[1][0]["action"])


def test_metadata_cost_per_episode_does_not_grow(tmp_path, monkeypatch):
    """Bytes and files written per episode stay flat as the dataset grows (they grew with
    every episode when all metadata was rewritten each time)."""
    monkeypatch.setattr(dataset_module, "EPISODES_PER_META_FILE", 4)
    writes: list[tuple[str, int]] = []

    def counted(write_fn):
        def wrapper(path, *args):
            write_fn(path, *args)
            writes.append((Path(path).relative_to(root).as_posix(), Path(path).stat().st_size))
        return wrapper

    monkeypatch.setattr(dataset_module, "atomic_write", counted(dataset_module.atomic_write))
    monkeypatch.setattr(dataset_module, "atomic_write_json",
                        counted(dataset_module.atomic_write_json))
    rng = np.random.default_rng(3)
    root = tmp_path / "ds"
    meta_bytes, data_bytes, touched = [], [], []
    with DatasetWriter(root, FEATURES, fps=10) as w:
        for _ in range(24):
            del writes[:]
            w.add_episode(make_episode(rng, 5), "pick")
            meta_bytes.append(sum(n for p, n in writes if p.startswith("meta/")))
            data_bytes.append(sum(n for p, n in writes if not p.startswith("meta/")))
            touched.append(sorted(p for p, _ in writes))
    assert touched[0] == [".journal/episode-000000.parquet", "meta/episodes/chunk-000/"
                          "file-000.parquet", "meta/info.json", "meta/stats.json",
                          "meta/tasks.parquet"]  # tasks.parquet only for a new task
    assert touched[23] == [".journal/episode-000023.parquet", "meta/episodes/chunk-000/"
                           "file-005.parquet", "meta/info.json", "meta/stats.json"]
    assert all(len(t) == 4 for t in touched[1:])
    assert max(meta_bytes[20:]) < 1.1 * max(meta_bytes[1:4])
    assert max(data_bytes) < 1.2 * min(data_bytes)  # this episode's journal file only
    ds = EpisodeDataset(root)
    assert ds.num_episodes == 24 and len(ds._meta_files) == 6


class Crash(BaseException):
    """Stands for a kill: raised right after one of the writer's atomic writes."""


def test_a_kill_after_any_write_loses_at_most_the_episode_in_progress(tmp_path, monkeypatch):
    """Stops the writer after each of its atomic writes in turn (data, journal, tasks,
    episodes, stats, info, assembled file), as a kill would, then checks what a reader sees
    and that a resume completes the dataset in LeRobot's layout."""
    monkeypatch.setattr(dataset_module, "EPISODES_PER_META_FILE", 2)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # a simulated kill needs no disk flush
    rng = np.random.default_rng(4)
    eps = [(make_episode(rng, 4 + i % 2), f"task {i % 2}") for i in range(4)]
    state = {"writes": 0, "crash_at": -1}

    def crashing(write_fn):
        def wrapper(path, *args):
            write_fn(path, *args)
            state["writes"] += 1
            if state["writes"] == state["crash_at"]:
                raise Crash
        return wrapper

    for name in ("atomic_write", "atomic_write_json"):
        monkeypatch.setattr(dataset_module, name, crashing(getattr(dataset_module, name)))
    cap = 0.012  # MB: two episodes per data file, so files are assembled mid-run
    crash_at = 1
    while True:
        root = tmp_path / f"ds{crash_at}"
        state.update(writes=0, crash_at=crash_at)
        w = None
        try:
            w = DatasetWriter(root, FEATURES, fps=10, data_files_size_in_mb=cap)
            for frames, task in eps:
                w.add_episode(frames, task)
            w.close()
            break  # no write left to stop after
        except Crash:
            if w is not None:
                w._release()  # the kill: the OS drops the lock, nothing else runs
        state["crash_at"] = -1
        if (root / "meta/info.json").exists():
            committed = json.loads((root / "meta/info.json").read_text())["total_episodes"]
            ds = EpisodeDataset(root)
            assert ds.num_episodes == committed, crash_at
            for i in range(committed):
                np.testing.assert_array_equal(ds.episode(i)[CAM], eps[i][0][CAM])
            if committed:
                assert_stats_match(ds, [e for e, _ in eps[:committed]])
        else:  # killed before the empty dataset was committed
            committed = 0
            with pytest.raises(DatasetError, match="info.json is missing"):
                EpisodeDataset(root)
        write(root, eps[committed:], data_files_size_in_mb=cap)  # resume, finish, close
        ds = EpisodeDataset(root)
        assert ds.tasks == ["task 0", "task 1"]
        for i, (frames, task) in enumerate(eps):
            ep = ds.episode(i)
            np.testing.assert_array_equal(ep["action"], frames["action"])
            assert ds.tasks[ep["task_index"][0]] == task
        assert_stats_match(ds, [e for e, _ in eps])
        assert not (root / ".journal").exists() and not list(root.glob("**/.*.tmp*"))
        assert lerobot_frames(root)["index"].tolist() == list(range(ds.num_frames)), crash_at
        assert lerobot_episodes(root)["episode_index"].tolist() == list(range(4)), crash_at
        crash_at += 1
    # Every write was tried: 2 for the empty dataset, 4-5 per episode, the assembled files.
    assert crash_at > 2 + 4 * 4 + 2 and len(list(root.glob("data/*/*.parquet"))) >= 2


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from embodied.data.dataset import DatasetWriter, Feature

    feats = {"observation.state": Feature("float32", (3,)), "action": Feature("float32", (2,)),
             "next.done": Feature("bool", ())}
    # A small cap: the kill finds assembled data files and the open one's journal.
    with DatasetWriter(sys.argv[1], feats, fps=10, data_files_size_in_mb=0.01) as w:
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
    assert len(list(root.glob("data/*/*.parquet"))) >= 2
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
    # Resumed and closed: LeRobot's layout again, the kill's leftovers gone.
    assert not (root / ".journal").exists()
    assert lerobot_frames(root)["index"].tolist() == list(range(ds.num_frames + 2))
    assert lerobot_episodes(root)["episode_index"].tolist() == list(range(n + 1))
