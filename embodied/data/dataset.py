"""Robot episode datasets in the LeRobot v3.0 layout, read and written with pyarrow.

Layout, as LeRobot v3 writes it (paths and info.json keys from its ``datasets/utils.py``):
- ``data/chunk-XXX/file-YYY.parquet``: several episodes per file, one row group per episode;
  a new file once the current one would pass ``data_files_size_in_mb`` (LeRobot's rule: its
  size plus its mean bytes per frame times the new episode's frames), ``chunks_size`` files
  per chunk folder.
- ``meta/episodes/chunk-XXX/file-YYY.parquet``: one row per episode (its data file, its frame
  range ``[dataset_from_index, dataset_to_index)``, ``stats/<feature>/<stat>``), a new file
  every EPISODES_PER_META_FILE rows (LeRobot's reader concatenates them all, in path order).
- ``meta/tasks.parquet``: a pandas frame whose index (named ``task``) is the task string and
  whose ``task_index`` column is its number: LeRobot reads ``tasks.iloc[task_index].name``.
- ``meta/stats.json`` and ``meta/info.json``; feature ``names`` per vector dim, and
  ``["height", "width", "channels"]`` for images (LeRobot reads the image layout from them).

Durability: a parquet file cannot be appended in place, and rewriting a growing data file per
episode would cost up to its cap (100 MB) each time. So each finished episode is written
atomically on its own to ``.journal/episode-NNNNNN.parquet``, then the current episodes file
(at most EPISODES_PER_META_FILE rows, so bounded), stats.json (merged, not recomputed) and
info.json last. info.json is the commit point: readers trust only the episodes it counts and
read an episode from the journal while its data file is not assembled yet. A data file is
assembled from the journal, atomically, when it is full or the writer closes; then its
journal files go. A kill loses at most the episode in progress; reopening the writer (resume)
assembles the open file and deletes what was never committed, which leaves LeRobot's layout
(LeRobot's reader, which knows no journal, needs that after a kill, and after close() while
collecting). One writer per root (a lock file).

Scalars (shape ``()``; ``(1,)`` is normalized to it) are plain columns declared as shape [1] in
info.json, as LeRobot does, and read back as [T]. Other numeric features are fixed-size list
columns; images are ``struct{bytes: PNG, path: null}`` columns.

Stats: min/max/mean/std/count of every feature, bookkeeping included, exact over all frames
(per-episode moments merged in float64, Chan et al.; population std as ``np.std``). Images get
per-channel stats of pixel/255 with shape [3, 1, 1], as LeRobot does. LeRobot's quantiles
(q01 ... q99) are not written: they cannot be merged exactly per episode.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from embodied.core.errors import DatasetError
from embodied.core.io import atomic_write, atomic_write_json

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # LeRobot's DEFAULT_CHUNK_SIZE: files per chunk folder
DATA_FILES_SIZE_IN_MB = 100  # LeRobot's DEFAULT_DATA_FILE_SIZE_IN_MB
VIDEO_FILES_SIZE_IN_MB = 200  # LeRobot's default; no videos are written here
EPISODES_PER_META_FILE = 100  # bounds the rewrite of the current episodes file per episode
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
JOURNAL_PATH = ".journal/episode-{episode_index:06d}.parquet"
STATS = ("min", "max", "mean", "std", "count")
DTYPES: dict[str, type] = {"float32": np.float32, "int64": np.int64, "bool": np.bool_,
                           "image": np.uint8}
IMAGE_NAMES = ["height", "width", "channels"]
_CHUNK_FILE = re.compile(r"chunk-(\d+)/file-(\d+)\.parquet")


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


def _named(key: str, f: Feature) -> Feature:
    """Fills ``names`` as LeRobot expects them: the image layout, or one name per vector dim."""
    names = f.names
    if names is None and f.dtype == "image":
        names = list(IMAGE_NAMES)
    elif names is None and len(f.shape) == 1:
        names = [f"{key.rsplit('.', 1)[-1]}_{i}" for i in range(f.shape[0])]  # state_0, ...
    want = 3 if f.dtype == "image" else f.shape[0] if len(f.shape) == 1 else None
    if want is not None and (not isinstance(names, list) or len(names) != want):
        raise DatasetError(f"feature {key!r} has names {names!r}; give {want} names (one per "
                           f"{'image axis' if f.dtype == 'image' else 'dim'}), or None for "
                           "the defaults")
    return replace(f, names=names)


def _next_file(loc: tuple[int, int], chunks_size: int) -> tuple[int, int]:
    """LeRobot's update_chunk_file_indices: the next file, in the next chunk once one is full."""
    chunk, file = loc
    return (chunk + 1, 0) if file >= chunks_size - 1 else (chunk, file + 1)


def _files(root: Path, folder: str) -> dict[tuple[int, int], Path]:
    """The ``chunk-XXX/file-YYY.parquet`` files under ``folder``, in (chunk, file) order."""
    found = {}
    for path in (root / folder).glob("chunk-*/file-*.parquet"):
        m = _CHUNK_FILE.fullmatch(f"{path.parent.name}/{path.name}")
        if m:
            found[(int(m[1]), int(m[2]))] = path
    return dict(sorted(found.items()))


def _loc(row: dict[str, Any], prefix: str) -> tuple[int, int]:
    return row[f"{prefix}/chunk_index"], row[f"{prefix}/file_index"]


def _unreadable(what: str, path: Path, e: Exception) -> DatasetError:
    return DatasetError(f"{what} {path} is missing or unreadable ({e}); restore it from a "
                        "backup, or re-collect into a new root")


def _read_table(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:  # missing files included
        raise _unreadable(what, path, e) from e


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

    ``features`` includes the bookkeeping columns (timestamp, frame_index, ...). The data file
    read last is cached, so reading episodes in order reads each file once.
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
        self._file_start = self._file_starts()
        self._cache: tuple[Path, pa.Table] | None = None
        self._check_data_files()
        self._moments = self._load_stats()

    def _read_tasks(self, n: int) -> list[str]:
        if n == 0:  # as LeRobot, which writes tasks.parquet with the first task
            return []
        # LeRobot's task string is the pandas index; pandas stores it as a column named "task"
        # (or "__index_level_0__" where the index has no name; LeRobot's load_tasks names it).
        d = _read_table(self.root / TASKS_PATH, "tasks file").to_pydict()
        names = d.get("task", d.get("__index_level_0__", []))
        tasks = dict(zip(d.get("task_index", []), names, strict=False))  # checked below
        if any(i not in tasks for i in range(n)):
            raise DatasetError(f"{self.root / TASKS_PATH} lacks some of the {n} tasks info.json "
                               "counts (it needs a task index and a task_index column); "
                               "restore it from a backup")
        return [tasks[i] for i in range(n)]

    def _read_episodes(self) -> list[dict[str, Any]]:
        rows = []
        self._meta_files = list(_files(self.root, "meta/episodes").values())
        for path in self._meta_files:
            try:  # per-episode stats are read only to rebuild stats.json (_load_stats)
                names = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
                table = pq.read_table(path, columns=names)
            except (OSError, pa.ArrowException) as e:
                raise _unreadable("episodes file", path, e) from e
            # Rows past info.json's count belong to an episode a kill left uncommitted.
            rows += [r for r in table.to_pylist() if r.get("episode_index", -1) < self.num_episodes]
        rows.sort(key=lambda r: r.get("episode_index", -1))
        need = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index",
                "meta/episodes/file_index"]
        where = self.root / "meta/episodes"
        start = 0
        for i, r in enumerate(rows):
            if any(k not in r for k in need) or r["episode_index"] != i:
                raise DatasetError(f"{where}: row of episode {i} is malformed or duplicated "
                                   f"(needs {need}, one row per episode)")
            if r["dataset_from_index"] != start or r["dataset_to_index"] - start != r["length"]:
                raise DatasetError(f"{where}: episode {i} frame range [{r['dataset_from_index']}, "
                                   f"{r['dataset_to_index']}) does not follow [{start}, ...) "
                                   f"with length {r['length']}")
            start += r["length"]
        if len(rows) != self.num_episodes or start != self.num_frames:
            raise DatasetError(f"{where} holds {len(rows)} episodes / {start} frames, but "
                               f"info.json counts {self.num_episodes} / {self.num_frames}")
        return rows

    def _file_starts(self) -> dict[tuple[int, int], int]:
        """First frame index of each data file: a file holds consecutive episodes, as LeRobot's."""
        starts: dict[tuple[int, int], int] = {}
        last = None
        for r in self._episodes:
            loc = _loc(r, "data")
            if loc != last and loc in starts:
                raise DatasetError(f"meta/episodes puts episode {r['episode_index']} in data file "
                                   f"{loc} after other files; a data file holds consecutive "
                                   "episodes: re-collect into a new root")
            starts.setdefault(loc, r["dataset_from_index"])
            last = loc
        return starts

    def _data_path(self, loc: tuple[int, int]) -> Path:
        return self.root / self.info["data_path"].format(chunk_index=loc[0], file_index=loc[1])

    def _source(self, i: int) -> tuple[Path, int]:
        """The file holding episode ``i`` and its first row there: its data file or, while the
        writer has not assembled that file yet, its journal file (module docstring)."""
        ep = self._episodes[i]
        path = self._data_path(_loc(ep, "data"))
        journal = self.root / JOURNAL_PATH.format(episode_index=i)
        if not path.exists() and journal.exists():
            return journal, 0
        return path, ep["dataset_from_index"] - self._file_start[_loc(ep, "data")]

    def _check_data_files(self) -> None:
        """Footers only (cheap): every file the metadata names exists, matches info.json and
        holds the rows meta/episodes puts there (rows past them were never committed)."""
        rows: dict[Path, int] = {}
        for i, ep in enumerate(self._episodes):
            path, first = self._source(i)
            if path not in rows:
                rows[path] = self._check_footer(path)
            if rows[path] < first + ep["length"]:
                raise DatasetError(f"data file {path} has {rows[path]} rows, but meta/episodes "
                                   f"puts episode {i} at rows [{first}, {first + ep['length']}); "
                                   "re-collect into a new root")

    def _check_footer(self, path: Path) -> int:
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
        return meta.num_rows

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
        # episode more than info.json, so rebuild it from the committed episodes' stats.
        moments = self._stats_of_episodes()
        if moments is not None:
            return moments
        moments = {}  # no usable per-episode stats (an older writer): from the data
        for i in range(self.num_episodes):
            ep = self.episode(i)
            moments = _merge(moments, {k: _Moments.of(f, ep[k]) for k, f in self.features.items()})
        return moments

    def _stats_of_episodes(self) -> dict[str, _Moments] | None:
        """Merges the ``stats/<feature>/<stat>`` columns of meta/episodes; None if any lacks."""
        columns = ["episode_index", *(f"stats/{k}/{s}" for k in self.features for s in STATS)]
        moments: dict[str, _Moments] = {}
        try:
            for path in self._meta_files:
                for r in pq.read_table(path, columns=columns).to_pylist():
                    if r["episode_index"] < self.num_episodes:
                        moments = _merge(moments, {k: _Moments.from_json(
                            {s: r[f"stats/{k}/{s}"] for s in STATS}) for k in self.features})
        except (OSError, pa.ArrowException, TypeError, ValueError, IndexError):
            return None
        exact = all(m.count == self.num_frames for m in moments.values())
        return moments if moments and exact else None

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        return {k: m.arrays() for k, m in self._moments.items()}

    def _table(self, path: Path, columns: list[str]) -> pa.Table:
        cached = self._cache
        if cached is None or cached[0] != path or not set(columns) <= set(cached[1].column_names):
            self._cache = cached = (path, _read_table(path, "data file", columns))
        return cached[1]

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Columns of episode ``i`` as arrays [T, *shape]; images decoded to uint8 [T,H,W,3]."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: the dataset has {self.num_episodes}")
        keys = list(self.features) if keys is None else list(keys)
        unknown = [k for k in keys if k not in self.features]
        if unknown:
            raise DatasetError(f"unknown keys {unknown}; the dataset has {list(self.features)}")
        path, first = self._source(i)
        n = self._episodes[i]["length"]
        rows = self._table(path, list(dict.fromkeys([*keys, "episode_index"]))).slice(first, n)
        owner = rows["episode_index"].to_numpy()
        if len(owner) != n or (owner != i).any():
            raise DatasetError(f"rows [{first}, {first + n}) of {path} are not episode {i}, as "
                               "meta/episodes says; re-collect into a new root")
        try:
            return {k: _decode(k, self.features[k], rows[k]) for k in keys}
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
    """Creates a dataset at ``root``, or appends to the one there (resume).

    ``data_files_size_in_mb`` and ``chunks_size`` (LeRobot's info.json settings) default to
    the dataset's own on resume, else to LeRobot's defaults. ``close()`` (or leaving the
    ``with`` block) assembles the last data file: until then it is in the journal.
    """

    def __init__(self, root: str | Path, features: dict[str, Feature], fps: int,
                 robot_type: str = "sim", *, data_files_size_in_mb: float | None = None,
                 chunks_size: int | None = None) -> None:
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
        if data_files_size_in_mb is not None and not data_files_size_in_mb > 0:
            raise DatasetError(f"data_files_size_in_mb must be positive, got "
                               f"{data_files_size_in_mb}")
        if chunks_size is not None and int(chunks_size) < 1:
            raise DatasetError(f"chunks_size must be at least 1, got {chunks_size}")
        self.root, self.fps, self.robot_type = Path(root), int(fps), robot_type
        self.features = {k: _named(k, f) for k, f in features.items()}
        self._all = {**self.features, **BOOKKEEPING}
        self._size_mb = data_files_size_in_mb or DATA_FILES_SIZE_IN_MB
        self._chunks_size = int(chunks_size or CHUNKS_SIZE)
        self._buffer: list[tuple[dict[str, np.ndarray], str]] = []
        self._tasks: list[str] = []
        self._moments: dict[str, _Moments] = {}
        self._num_episodes = self._num_frames = 0
        self._data_path = DATA_PATH
        # The data file being filled: its committed episodes are in the journal until
        # _assemble() writes it. The episodes file being filled: its rows, rewritten whole.
        self._data_loc, self._file_episodes, self._file_frames, self._file_bytes = (0, 0), [], 0, 0
        self._meta_loc, self._meta_rows = (0, 0), pa.table({})
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = self._acquire_lock()
        try:
            if (self.root / "meta" / "info.json").exists():
                self._resume(data_files_size_in_mb, chunks_size)
            elif _files(self.root, "data") or _files(self.root, "meta/episodes"):
                raise DatasetError(f"{self.root} holds data or episode files but no "
                                   "meta/info.json; restore info.json to append to that "
                                   "dataset, or write to an empty root")
            # A valid dataset from the start (readers and resumes see the features); on resume
            # this also replaces a stats.json that a kill left ahead of info.json.
            self._write_stats_and_info(self._tasks, self._moments, self._num_episodes,
                                       self._num_frames)
        except BaseException:
            self._release()  # nothing to assemble: _repair assembles before it returns
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

    def _resume(self, size_mb: float | None, chunks_size: int | None) -> None:
        ds = EpisodeDataset(self.root)
        old = {k: f for k, f in ds.features.items() if k not in BOOKKEEPING}
        diff = [f"{k!r} is missing from the given features" for k in old if k not in self.features]
        diff += [f"{k!r} is not in the dataset" for k in self.features if k not in old]
        diff += [f"{k!r} is {old[k]} in the dataset but {f} given"
                 for k, f in self.features.items()
                 if k in old and (old[k].dtype, old[k].shape) != (f.dtype, f.shape)]
        if ds.fps != self.fps:
            diff.append(f"fps is {ds.fps} in the dataset but {self.fps} given")
        if diff:
            raise DatasetError(f"cannot append to {self.root}: {'; '.join(diff)}. Write to a new "
                               "root, or pass the same features and fps as the existing dataset")
        # Keep what is on disk; names only fill in where the dataset has none (older writers).
        self.features = {k: f if old[k].names is None else replace(f, names=old[k].names)
                         for k, f in self.features.items()}
        self._all = {**self.features, **BOOKKEEPING}
        self.robot_type = ds.info.get("robot_type", self.robot_type)
        self._data_path = ds.info["data_path"]
        self._size_mb = size_mb or ds.info.get("data_files_size_in_mb", DATA_FILES_SIZE_IN_MB)
        self._chunks_size = int(chunks_size or ds.info.get("chunks_size", CHUNKS_SIZE))
        self._tasks, self._moments = ds.tasks, ds._moments
        self._num_episodes, self._num_frames = ds.num_episodes, ds.num_frames
        self._repair(ds)

    def _repair(self, ds: EpisodeDataset) -> None:
        """Finishes what a kill cut short (safe: we hold the lock), leaving LeRobot's layout:
        the open data file is assembled, and temp files, journal files, and data and episodes
        files past the last committed ones (never committed) are deleted."""
        for tmp in [*self.root.glob("data/*/.*.tmp*"), *self.root.glob("meta/**/.*.tmp*"),
                    *self.root.glob(".journal/.*.tmp*")]:
            tmp.unlink(missing_ok=True)
        last = ds._episodes[-1] if ds._episodes else None
        for folder, prefix in (("data", "data"), ("meta/episodes", "meta/episodes")):
            for loc, path in _files(self.root, folder).items():
                if last is None or loc > _loc(last, prefix):
                    path.unlink()
        if last is not None:
            self._data_loc = _loc(last, "data")
            if not ds._data_path(self._data_loc).exists():  # killed before assembling it
                self._file_episodes = [e["episode_index"] for e in ds._episodes
                                       if _loc(e, "data") == self._data_loc]
                self._assemble()
            self._data_loc = _next_file(self._data_loc, self._chunks_size)  # as LeRobot resumes
            self._meta_loc = _loc(last, "meta/episodes")
            path = self.root / EPISODES_PATH.format(chunk_index=self._meta_loc[0],
                                                    file_index=self._meta_loc[1])
            rows = _read_table(path, "episodes file")
            self._meta_rows = rows.filter(pc.less(rows["episode_index"], self._num_episodes))
            if self._meta_rows.num_rows < rows.num_rows:  # drop an uncommitted episode's row
                self._write_rows(self._meta_loc, self._meta_rows)
        for journal in self.root.glob(".journal/episode-*.parquet"):
            journal.unlink()  # all committed ones are in assembled data files now
        self._remove_empty_journal()
        # Tasks of an older writer (plain columns, no pandas index) or of an uncommitted
        # episode (rows past info.json's count) are written again.
        path = self.root / TASKS_PATH
        if not self._tasks:
            path.unlink(missing_ok=True)
        elif ((pq.read_schema(path).pandas_metadata or {}).get("index_columns") != ["task"]
              or pq.read_metadata(path).num_rows != len(self._tasks)):
            self._write_tasks(self._tasks)

    @property
    def num_episodes(self) -> int:
        return self._num_episodes

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
        ep, n, start = self._num_episodes, len(tasks), self._num_frames
        new_tasks = [t for t in dict.fromkeys(tasks) if t not in self._tasks]
        all_tasks = self._tasks + new_tasks
        task_ids = {t: i for i, t in enumerate(all_tasks)}
        frame_index = np.arange(n, dtype=np.int64)
        cols = {**arrays, "timestamp": (frame_index / self.fps).astype(np.float32),
                "frame_index": frame_index, "episode_index": np.full(n, ep, np.int64),
                "index": start + frame_index,
                "task_index": np.array([task_ids[t] for t in tasks], np.int64)}
        table = pa.table({k: _encode(f, cols[k]) for k, f in self._all.items()})
        # LeRobot's rule: a new data file once size + mean bytes per frame * n reaches the cap.
        # The full one is assembled first: it holds committed episodes only.
        if self._file_episodes and (self._file_bytes * (1 + n / self._file_frames)
                                    >= self._size_mb * 2**20):
            self._assemble()
            self._data_loc = _next_file(self._data_loc, self._chunks_size)
        journal = self.root / JOURNAL_PATH.format(episode_index=ep)
        atomic_write(journal, lambda p: pq.write_table(table, p))  # data first, metadata after
        if new_tasks:
            self._write_tasks(all_tasks)
        meta_loc, rows = self._meta_loc, self._meta_rows
        if rows.num_rows >= EPISODES_PER_META_FILE:
            meta_loc, rows = _next_file(meta_loc, self._chunks_size), pa.table({})
        ep_moments = {k: _Moments.of(f, cols[k]) for k, f in self._all.items()}
        row = {"episode_index": ep, "tasks": list(dict.fromkeys(tasks)), "length": n,
               "data/chunk_index": self._data_loc[0], "data/file_index": self._data_loc[1],
               "dataset_from_index": start, "dataset_to_index": start + n,
               **{f"stats/{k}/{s}": v.tolist() for k, m in ep_moments.items()
                  for s, v in m.arrays().items()},
               "meta/episodes/chunk_index": meta_loc[0], "meta/episodes/file_index": meta_loc[1]}
        # Rows of other writers may lack columns (filled with nulls) or use narrower types.
        rows = pa.concat_tables([rows, pa.Table.from_pylist([row])],
                                promote_options="permissive").combine_chunks()  # writes faster
        self._write_rows(meta_loc, rows)
        moments = _merge(self._moments, ep_moments)
        self._write_stats_and_info(all_tasks, moments, ep + 1, start + n)
        # In-memory state changes only after the commit, so a failed write leaves it consistent.
        self._meta_loc, self._meta_rows = meta_loc, rows
        self._tasks, self._moments = all_tasks, moments
        self._num_episodes, self._num_frames = ep + 1, start + n
        self._file_episodes.append(ep)
        self._file_frames += n
        self._file_bytes += journal.stat().st_size
        return ep

    def _assemble(self) -> None:
        """Writes the current data file from its journal files, one row group per episode (as
        LeRobot writes), then deletes them. Reads them once: O(1) per byte."""
        if not self._file_episodes:
            return
        journals = [self.root / JOURNAL_PATH.format(episode_index=e) for e in self._file_episodes]
        path = self.root / self._data_path.format(chunk_index=self._data_loc[0],
                                                  file_index=self._data_loc[1])

        def write(tmp: Path) -> None:
            tables = (_read_table(j, "journal file") for j in journals)
            first = next(tables)
            with pq.ParquetWriter(tmp, first.schema) as writer:
                for table in (first, *tables):
                    writer.write_table(table)

        atomic_write(path, write)
        for journal in journals:
            journal.unlink(missing_ok=True)
        self._file_episodes, self._file_frames, self._file_bytes = [], 0, 0

    def _remove_empty_journal(self) -> None:
        try:
            (self.root / ".journal").rmdir()
        except OSError:  # absent, or holds the journal of an episode whose write failed
            pass

    def _write_tasks(self, tasks: list[str]) -> None:
        import pandas as pd  # here only: LeRobot's tasks file is a pandas frame

        # Object dtype: stored as pandas 2 (LeRobot's) stores strings, whatever pandas is here.
        frame = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)},
                             index=pd.Index(tasks, dtype=object, name="task"))
        atomic_write(self.root / TASKS_PATH, lambda p: frame.to_parquet(p))

    def _write_rows(self, loc: tuple[int, int], rows: pa.Table) -> None:
        path = self.root / EPISODES_PATH.format(chunk_index=loc[0], file_index=loc[1])
        atomic_write(path, lambda p: pq.write_table(rows, p))

    def _write_stats_and_info(self, tasks: list[str], moments: dict[str, _Moments],
                              num_episodes: int, num_frames: int) -> None:
        meta = self.root / "meta"
        atomic_write_json(meta / "stats.json", {
            k: {s: v.tolist() for s, v in m.arrays().items()} for k, m in moments.items()})
        atomic_write_json(meta / "info.json", {  # last: the commit point
            "codebase_version": CODEBASE_VERSION, "fps": self.fps,
            "features": {k: f.to_json() for k, f in self._all.items()},
            "total_episodes": num_episodes, "total_frames": num_frames,
            "total_tasks": len(tasks), "chunks_size": self._chunks_size,
            "data_files_size_in_mb": self._size_mb,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "data_path": self._data_path,
            "video_path": None,  # LeRobot writes null for a dataset without video features
            "robot_type": self.robot_type, "splits": {"train": f"0:{num_episodes}"}})

    def close(self) -> None:
        """Assembles the last data file and releases the root. Frames buffered by add_frame()
        and not saved are dropped."""
        if self._buffer:
            warnings.warn(f"DatasetWriter closed with {len(self._buffer)} unsaved frames; they "
                          "are dropped (call save_episode() before close())", stacklevel=2)
            self._buffer.clear()
        if self._lock is not None:
            try:
                self._assemble()  # if this fails, the journal keeps the episodes readable
                self._remove_empty_journal()
            finally:
                self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.clear_episode()  # the episode in progress is suspect; finished ones are kept
        self.close()
