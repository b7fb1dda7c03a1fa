"""Robot episode datasets in the LeRobot v3.0 layout, read and written with pyarrow.

Durability: each finished episode ``e`` is written atomically to its own data file (file number
``e``: chunk ``e // chunks_size``, file ``e % chunks_size``), then the metadata is rewritten
atomically, ``meta/info.json`` last. info.json is the commit point: readers trust only the
episodes/tasks it counts, so a kill loses at most the episode in progress; data files of
uncommitted episodes are ignored, and overwritten on resume. One writer per root (a lock file).

Scalars (shape ``()``; ``(1,)`` is normalized to it) are plain columns declared as shape [1] in
info.json, as LeRobot does, and read back as [T]. Other numeric features are fixed-size list
columns; images are ``struct{bytes: PNG, path: null}`` columns.

Stats: min/max/mean/std/count of every feature, bookkeeping included, exact over all frames
(per-episode moments merged in float64, Chan et al.; population std as ``np.std``). Images get
per-channel stats of pixel/255 with shape [3, 1, 1], as LeRobot does.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from embodied.core.errors import DatasetError
from embodied.core.io import atomic_write, atomic_write_json

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
DTYPES: dict[str, type] = {"float32": np.float32, "int64": np.int64, "bool": np.bool_,
                           "image": np.uint8}
_EPISODES_SCHEMA = pa.schema(
    [("episode_index", pa.int64()), ("tasks", pa.list_(pa.string())), ("length", pa.int64())]
    + [(name, pa.int64()) for name in ("data/chunk_index", "data/file_index",
                                       "dataset_from_index", "dataset_to_index",
                                       "meta/episodes/chunk_index", "meta/episodes/file_index")]
)


@dataclass(frozen=True)
class Feature:
    dtype: str  # "float32" | "int64" | "bool" | "image"
    shape: tuple[int, ...]
    names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise DatasetError(f"feature dtype {self.dtype!r} is not supported; use one of "
                               f"{sorted(DTYPES)}")
        shape = tuple(int(s) for s in self.shape)
        if self.dtype == "image" and (len(shape) != 3 or shape[2] != 3):
            raise DatasetError(f"image features need shape (H, W, 3), got {shape}")
        if self.dtype != "image" and shape == (1,):
            shape = ()  # LeRobot declares scalar columns as [1]: one representation, not two
        object.__setattr__(self, "shape", shape)
        if isinstance(self.names, tuple):
            object.__setattr__(self, "names", list(self.names))

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape) or [1], "names": self.names}


BOOKKEEPING = {
    "timestamp": Feature("float32", ()),
    **{k: Feature("int64", ()) for k in ("frame_index", "episode_index", "index", "task_index")},
}


def _arrow_type(f: Feature) -> pa.DataType:
    if f.dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    value = pa.from_numpy_dtype(DTYPES[f.dtype])
    return value if f.shape == () else pa.list_(value, math.prod(f.shape))


def _encode(f: Feature, x: np.ndarray) -> pa.Array:
    if f.dtype == "image":
        pngs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
            pngs.append(buf.getvalue())
        return pa.StructArray.from_arrays(
            [pa.array(pngs, pa.binary()), pa.nulls(len(x), pa.string())], names=["bytes", "path"])
    if f.shape == ():
        return pa.array(x, _arrow_type(f))
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), math.prod(f.shape))


def _decode(name: str, f: Feature, col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if f.dtype == "image":
        pngs = arr.field("bytes").to_pylist()  # images stored by path are not supported
        out = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs])
        if out.shape[1:] != f.shape:
            raise ValueError(f"{name!r} holds images of shape {out.shape[1:]}, not {f.shape}")
        return out
    if f.shape != ():
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).astype(DTYPES[f.dtype]).reshape(-1, *f.shape)


@dataclass(frozen=True)
class _Moments:
    """Exact running stats: merging per-episode moments avoids a pass over old data."""

    count: int
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations (per frame for images, see module docstring)
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, f: Feature, x: np.ndarray) -> _Moments:
        n = len(x)
        if f.dtype == "image":  # per channel over T, H, W, as LeRobot; shape [3, 1, 1]
            x, axes, shape = x.astype(np.float64) / 255.0, (0, 1, 2), (3, 1, 1)
        else:
            x = x.astype(np.float64).reshape(n, *(f.shape or (1,)))
            axes, shape = (0,), f.shape or (1,)
        stats = [x.mean(axes), x.var(axes) * n, x.min(axes), x.max(axes)]
        return cls(n, *(s.reshape(shape) for s in stats))

    def merge(self, o: _Moments) -> _Moments:
        n = self.count + o.count
        d = o.mean - self.mean
        return _Moments(n, self.mean + d * (o.count / n), self.m2 + o.m2 + d * d * (
            self.count * o.count / n), np.minimum(self.min, o.min), np.maximum(self.max, o.max))

    def arrays(self) -> dict[str, np.ndarray]:
        std = np.sqrt(self.m2 / self.count)
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": std,
                "count": np.array([self.count], dtype=np.int64)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Moments:
        n, (mean, std, lo, hi) = int(d["count"][0]), (
            np.asarray(d[k], np.float64) for k in ("mean", "std", "min", "max"))
        return cls(n, mean, std * std * n, lo, hi)


def _merge(old: dict[str, _Moments], new: dict[str, _Moments]) -> dict[str, _Moments]:
    return {k: old[k].merge(m) if k in old else m for k, m in new.items()}


def _read_table(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:  # missing files included
        raise DatasetError(f"{what} {path} is missing or unreadable ({e}); restore it from a "
                           "backup, or re-collect into a new root") from e


def _read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"{path} is missing: {root} is not a LeRobot v3.0 dataset (or its "
                           "writer never started); check the path")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is unreadable or not valid JSON ({e}); restore it from a "
                           "backup, or re-create the dataset") from e
    keys = ("fps", "features", "total_episodes", "total_frames", "total_tasks", "data_path")
    if not isinstance(info, dict) or any(k not in info for k in keys):
        raise DatasetError(f"{path} must be a JSON object with {keys}; restore it from a backup")
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetError(f"{path} has codebase_version {info.get('codebase_version')!r}; this "
                           f"reader supports {CODEBASE_VERSION!r} only: convert the dataset with "
                           "LeRobot's v3.0 conversion script")
    return info


def _feature_from_json(name: str, d: Any) -> Feature:
    try:
        return Feature(d["dtype"], tuple(d["shape"]), d.get("names"))
    except (KeyError, TypeError, ValueError, DatasetError) as e:
        raise DatasetError(f"info.json feature {name!r} is invalid or unsupported: {e}") from e


class EpisodeDataset:
    """Reads a dataset; ``meta/info.json`` + ``meta/episodes`` are the source of truth.

    ``features`` includes the bookkeeping columns (timestamp, frame_index, ...).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist; check the path")
        self.info = _read_info(self.root)
        self.fps = int(self.info["fps"])
        self.features = {k: _feature_from_json(k, v) for k, v in self.info["features"].items()}
        self.num_episodes = int(self.info["total_episodes"])
        self.num_frames = int(self.info["total_frames"])
        # Metadata files are written before info.json, so they may run ahead: cut to its counts.
        self.tasks = self._read_tasks(int(self.info["total_tasks"]))
        self._episodes = self._read_episodes()
        self._check_data_files()
        self._moments = self._load_stats()

    def _read_tasks(self, n: int) -> list[str]:
        d = _read_table(self.root / "meta" / "tasks.parquet", "tasks file").to_pydict()
        tasks = dict(zip(d.get("task_index", []), d.get("task", []), strict=True))
        if any(i not in tasks for i in range(n)):
            raise DatasetError(f"{self.root}/meta/tasks.parquet lacks some of the {n} tasks "
                               "info.json counts; restore it from a backup")
        return [tasks[i] for i in range(n)]

    def _read_episodes(self) -> list[dict[str, Any]]:
        path = self.root / EPISODES_PATH
        rows = _read_table(path, "episodes file").to_pylist()
        need = [f.name for f in _EPISODES_SCHEMA if not f.name.startswith("meta/")]
        rows = sorted((r for r in rows if r.get("episode_index", -1) < self.num_episodes),
                      key=lambda r: r.get("episode_index", -1))
        start = 0
        for i, r in enumerate(rows):
            if any(k not in r for k in need) or r["episode_index"] != i:
                raise DatasetError(f"{path} row {i} is malformed (needs {need}, episode_index {i})")
            if r["dataset_from_index"] != start or r["dataset_to_index"] - start != r["length"]:
                raise DatasetError(f"{path}: episode {i} frame range [{r['dataset_from_index']}, "
                                   f"{r['dataset_to_index']}) does not follow [{start}, ...) "
                                   f"with length {r['length']}")
            start += r["length"]
        if len(rows) != self.num_episodes or start != self.num_frames:
            raise DatasetError(f"{path} holds {len(rows)} episodes / {start} frames, but "
                               f"info.json counts {self.num_episodes} / {self.num_frames}")
        return rows

    def _data_path(self, ep: dict[str, Any]) -> Path:
        return self.root / self.info["data_path"].format(
            chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])

    def _check_data_files(self) -> None:
        """Footers only (cheap): every file the metadata names exists and matches info.json."""
        for ep in self._episodes:
            path = self._data_path(ep)
            try:
                meta = pq.read_metadata(path)
                schema = meta.schema.to_arrow_schema()
            except (OSError, pa.ArrowException) as e:
                raise DatasetError(f"data file {path}, named by meta/episodes, is missing or "
                                   f"unreadable ({e}); restore it, or re-collect into a new "
                                   "root") from e
            for name, f in self.features.items():
                got = schema.field(name).type if name in schema.names else None
                if got != _arrow_type(f):
                    raise DatasetError(f"column {name!r} in {path} is {got or 'missing'}, but "
                                       f"info.json declares {f.dtype} {list(f.shape)} "
                                       f"(arrow {_arrow_type(f)})")
            if meta.num_rows != ep["length"]:  # this writer puts one episode per file
                raise DatasetError(f"data file {path} has {meta.num_rows} rows, but "
                                   f"meta/episodes says episode {ep['episode_index']} has "
                                   f"{ep['length']}; re-collect into a new root")

    def _load_stats(self) -> dict[str, _Moments]:
        if self.num_frames == 0:
            return {}
        try:
            raw = json.loads((self.root / "meta" / "stats.json").read_text())
            moments = {k: _Moments.from_json(raw[k]) for k in self.features}
            if all(m.count == self.num_frames for m in moments.values()):
                return moments
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
        # stats.json is derived and written before info.json: after a kill it may count one
        # episode more than info.json, so rebuild it from the committed data.
        moments = {}
        for i in range(self.num_episodes):
            ep = self.episode(i)
            moments = _merge(moments, {k: _Moments.of(f, ep[k]) for k, f in self.features.items()})
        return moments

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        return {k: m.arrays() for k, m in self._moments.items()}

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Columns of episode ``i`` as arrays [T, *shape]; images decoded to uint8 [T,H,W,3]."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: the dataset has {self.num_episodes}")
        keys = list(self.features) if keys is None else list(keys)
        unknown = [k for k in keys if k not in self.features]
        if unknown:
            raise DatasetError(f"unknown keys {unknown}; the dataset has {list(self.features)}")
        path = self._data_path(self._episodes[i])
        table = _read_table(path, "data file", keys)
        try:
            return {k: _decode(k, self.features[k], table[k]) for k in keys}
        except (OSError, ValueError, TypeError) as e:  # e.g. a corrupt PNG
            raise DatasetError(f"data file {path} could not be decoded ({e}); restore it, or "
                               "re-collect into a new root") from e

    def episode_lengths(self) -> np.ndarray:
        return np.array([ep["length"] for ep in self._episodes], dtype=np.int64)

    def to_numpy(self, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All frames concatenated in global index order."""
        keys = list(self.features) if keys is None else list(keys)
        eps = [self.episode(i, keys) for i in range(self.num_episodes)]
        return {k: np.concatenate([e[k] for e in eps]) if eps else np.zeros(
            (0, *self.features[k].shape), DTYPES[self.features[k].dtype]) for k in keys}


def _to_numpy(key: str, f: Feature, v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensors, also ones on GPU or requiring grad
        v = v.detach().cpu().numpy()
    x = np.asarray(v)
    kind = x.dtype.kind
    if kind not in "biuf":
        raise DatasetError(f"{key!r} has dtype {x.dtype}; expected numbers for {f.dtype}")
    if f.dtype == "float32":
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            raise DatasetError(f"{key!r} has NaN or inf (first at index {bad[0].tolist()}); "
                               "clean the data before writing")
    elif f.dtype == "int64" and kind == "f":
        raise DatasetError(f"{key!r} has dtype {x.dtype}; expected integers (int64)")
    elif f.dtype == "bool" and not np.isin(x, (0, 1)).all():
        raise DatasetError(f"{key!r} has values other than 0/1; expected bool")
    elif f.dtype == "image" and (kind == "f" or (x.size and (x.min() < 0 or x.max() > 255))):
        raise DatasetError(f"{key!r} has dtype {x.dtype}; expected uint8 pixels [T, H, W, 3]")
    return x.astype(DTYPES[f.dtype])


def _validate(
    features: dict[str, Feature], frames: Any, single: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """Check keys, shapes and values; returns arrays [T, *shape] of the feature dtypes, and T."""
    if not isinstance(frames, Mapping):
        raise DatasetError(f"expected a dict of arrays by feature name, got {type(frames)}")
    missing = [k for k in features if k not in frames]
    extra = [k for k in frames if k not in features]
    if missing or extra:
        book = [k for k in extra if k in BOOKKEEPING]
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        parts += [f"{book} are filled by the writer"] if book else []
        raise DatasetError(f"frame keys do not match the features ({'; '.join(parts)}); "
                           f"pass exactly {list(features)}")
    out: dict[str, np.ndarray] = {}
    for key, f in features.items():
        x = _to_numpy(key, f, frames[key])
        lead = () if single else x.shape[:1]
        ok = x.shape == lead + f.shape or (f.shape == () and x.shape == lead + (1,))
        if not ok or (not single and x.ndim == 0):  # a scalar may also come as [T, 1]
            want = list(f.shape) if single else "[" + ", ".join(["T", *map(str, f.shape)]) + "]"
            raise DatasetError(f"{key!r} has shape {list(x.shape)}, expected {want}")
        out[key] = x.reshape(lead + f.shape)[None] if single else x.reshape(lead + f.shape)
    lengths = {k: len(x) for k, x in out.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise DatasetError(f"features need the same number (>= 1) of frames, got {lengths}")
    return out, len(next(iter(out.values())))


def _check_task(task: Any) -> str:
    if not isinstance(task, str) or not task.strip():
        raise DatasetError(f"task must be a non-empty string, got {task!r}")
    return task


class DatasetWriter:
    """Creates a dataset at ``root``, or appends to the one there (resume)."""

    def __init__(self, root: str | Path, features: dict[str, Feature], fps: int,
                 robot_type: str = "sim") -> None:
        if not features:
            raise DatasetError("features is empty; pass e.g. {'action': Feature('float32', (6,))}")
        for k, f in features.items():
            if not isinstance(f, Feature):
                raise DatasetError(f"feature {k!r} is a {type(f).__name__}, expected a Feature")
            if k in BOOKKEEPING:
                raise DatasetError(f"{k!r} is a bookkeeping column filled by the writer; "
                                   "rename your feature")
        if int(fps) <= 0:
            raise DatasetError(f"fps must be positive, got {fps}")
        self.root, self.features, self.fps = Path(root), dict(features), int(fps)
        self.robot_type = robot_type
        self._all = {**self.features, **BOOKKEEPING}
        self._buffer: list[tuple[dict[str, np.ndarray], str]] = []
        self._rows: list[dict[str, Any]] = []
        self._tasks: list[str] = []
        self._moments: dict[str, _Moments] = {}
        self._num_frames = 0
        self._data_path = DATA_PATH
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = self._acquire_lock()
        try:
            if (self.root / "meta" / "info.json").exists():
                self._resume()
            else:  # a valid empty dataset from the start: readers and resumes see the features
                self._write_meta(self._rows, self._tasks, self._moments, 0)
        except BaseException:
            self.close()
            raise

    def _acquire_lock(self) -> IO[str]:
        lock = open(self.root / ".writer.lock", "w")  # held until close()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS on kill
        except OSError as e:
            lock.close()
            raise DatasetError(f"{self.root} is open in another DatasetWriter; close it first, "
                               "or write to a new root") from e
        return lock

    def _resume(self) -> None:
        ds = EpisodeDataset(self.root)
        old = {k: f for k, f in ds.features.items() if k not in BOOKKEEPING}
        diff = [f"{k!r} is missing from the given features" for k in old if k not in self.features]
        diff += [f"{k!r} is not in the dataset" for k in self.features if k not in old]
        diff += [f"{k!r} is {old[k]} in the dataset but {f} given"
                 for k, f in self.features.items() if k in old and old[k] != f]
        if ds.fps != self.fps:
            diff.append(f"fps is {ds.fps} in the dataset but {self.fps} given")
        if diff:
            raise DatasetError(f"cannot append to {self.root}: {'; '.join(diff)}. Write to a new "
                               "root, or pass the same features and fps as the existing dataset")
        self.robot_type = ds.info.get("robot_type", self.robot_type)  # keep what is on disk
        self._data_path = ds.info["data_path"]
        self._rows, self._tasks, self._moments = ds._episodes, ds.tasks, ds._moments
        self._num_frames = ds.num_frames
        # Temp files of writes cut short by a kill (safe to delete: we hold the lock).
        for tmp in [*self.root.glob("data/*/.*.tmp*"), *self.root.glob("meta/**/.*.tmp*")]:
            tmp.unlink(missing_ok=True)

    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def _check_open(self) -> None:
        if self._lock is None:
            raise DatasetError(f"the writer for {self.root} is closed; open a new DatasetWriter")

    def add_episode(self, frames: dict[str, Any], task: str) -> int:
        """Writes a whole episode (arrays [T, *feature.shape]) durably; returns its index."""
        self._check_open()
        arrays, n = _validate(self.features, frames)
        return self._write_episode(arrays, [_check_task(task)] * n)

    def add_frame(self, frame: dict[str, Any], task: str) -> None:
        """Buffers one frame (arrays of feature.shape) until save_episode()."""
        self._check_open()
        arrays, _ = _validate(self.features, frame, single=True)
        self._buffer.append((arrays, _check_task(task)))

    def save_episode(self) -> int:
        self._check_open()
        if not self._buffer:
            raise DatasetError("no frames to save; call add_frame() first")
        arrays = {k: np.concatenate([b[0][k] for b in self._buffer]) for k in self.features}
        index = self._write_episode(arrays, [b[1] for b in self._buffer])
        self._buffer.clear()  # only once written, so a failed save can be retried
        return index

    def clear_episode(self) -> None:
        self._buffer.clear()

    def _write_episode(self, arrays: dict[str, np.ndarray], tasks: list[str]) -> int:
        ep, n, start = len(self._rows), len(tasks), self._num_frames
        all_tasks = self._tasks + [t for t in dict.fromkeys(tasks) if t not in self._tasks]
        task_ids = {t: i for i, t in enumerate(all_tasks)}
        frame_index = np.arange(n, dtype=np.int64)
        cols = {**arrays, "timestamp": (frame_index / self.fps).astype(np.float32),
                "frame_index": frame_index, "episode_index": np.full(n, ep, np.int64),
                "index": start + frame_index,
                "task_index": np.array([task_ids[t] for t in tasks], np.int64)}
        table = pa.table({k: _encode(f, cols[k]) for k, f in self._all.items()})
        chunk, file = divmod(ep, CHUNKS_SIZE)
        path = self.root / self._data_path.format(chunk_index=chunk, file_index=file)
        atomic_write(path, lambda p: pq.write_table(table, p))  # data first, metadata after
        row = {"episode_index": ep, "tasks": list(dict.fromkeys(tasks)), "length": n,
               "data/chunk_index": chunk, "data/file_index": file, "dataset_from_index": start,
               "dataset_to_index": start + n, "meta/episodes/chunk_index": 0,
               "meta/episodes/file_index": 0}
        moments = _merge(self._moments, {k: _Moments.of(f, cols[k]) for k, f in self._all.items()})
        self._write_meta([*self._rows, row], all_tasks, moments, start + n)
        # In-memory state changes only after the commit, so a failed write leaves it consistent.
        self._rows, self._tasks, self._moments = [*self._rows, row], all_tasks, moments
        self._num_frames = start + n
        return ep

    def _write_meta(self, rows: list[dict[str, Any]], tasks: list[str],
                    moments: dict[str, _Moments], num_frames: int) -> None:
        meta = self.root / "meta"
        tasks_table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                                "task": pa.array(tasks, pa.string())})
        atomic_write(meta / "tasks.parquet", lambda p: pq.write_table(tasks_table, p))
        episodes = pa.Table.from_pylist(rows, schema=_EPISODES_SCHEMA)
        atomic_write(self.root / EPISODES_PATH, lambda p: pq.write_table(episodes, p))
        atomic_write_json(meta / "stats.json", {
            k: {s: v.tolist() for s, v in m.arrays().items()} for k, m in moments.items()})
        atomic_write_json(meta / "info.json", {  # last: the commit point
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": len(rows), "total_frames": num_frames, "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "fps": self.fps, "splits": {"train": f"0:{len(rows)}"},
            "data_path": self._data_path, "video_path": VIDEO_PATH,
            "features": {k: f.to_json() for k, f in self._all.items()}})

    def close(self) -> None:
        """Releases the root. Frames buffered by add_frame() and not saved are dropped."""
        if self._buffer:
            warnings.warn(f"DatasetWriter closed with {len(self._buffer)} unsaved frames; they "
                          "are dropped (call save_episode() before close())", stacklevel=2)
            self._buffer.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.clear_episode()  # the episode in progress is suspect; finished ones are kept
        self.close()
