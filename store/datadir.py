"""The data directory: published index versions, thumbnails, previews and metadata, and their read API.

Layout (the contract the service reads; the indexer is the only writer):

    DATA_DIR/
      metadata.sqlite3                   default database (or any SQLAlchemy URL)
      index/CURRENT                      "v000003": the current version (replaced atomically)
      index/v000003/                     one published, immutable version
        manifest.json                    IndexManifest as JSON (plus extra keys readers may ignore)
        segments.faiss                   faiss IndexIDMap2 over Flat/IVF/HNSW, inner product; ids = Segment.id
        segments.npz                     ids (int64), video_pos (int32), seg_index (int32), video_ids (str):
                                         vector id -> (video, segment index), row order of insertion;
                                         and a copy of the rows a search result shows: start_s, end_s
                                         (float64), thumbnail (bool) per vector, video_paths (str),
                                         video_durations (float64, NaN unknown) per video (versions
                                         written before these columns lack them: readers use the DB);
                                         preview (bool) per vector: its video has a preview file (False
                                         where a version predates the column)
        tokens/<video_id>.npy            with --store-tokens: (S, 1+N, D) float16 per video (hard links
                                         to the indexer's cache, so a version costs no copy)
      thumbnails/<video_id>/<i>.jpg      middle frame of segment i
      previews/<id[:2]>/<video_id>.mp4   the whole video as H.264/AAC MP4 (360 px high or less, faststart)
                                         where a browser cannot play the original (or --previews all);
                                         present where videos.preview_bytes is set (written to a temp name,
                                         fsynced, renamed); second t of it is second t of the segments
      cache/<pipeline key>/..            per-video embeddings for incremental runs (indexer only)
      indexer.lock                       held by a running indexer (POSIX lock; dies with the process)

A version directory is written under a temporary name, fsynced and renamed, and only then named in
CURRENT (itself written to a temporary file and os.replace'd), so a reader never sees a partial version.
Older versions are deleted after a few newer ones exist; an IndexSnapshot already open keeps working
(its FAISS index is in memory and token files are memory-mapped, both survive the unlink).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import faiss
import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from .lease import VersionLease
from .tables import create_engine_for

logger = logging.getLogger(__name__)

DATABASE_NAME = "metadata.sqlite3"
INDEX_DIR = "index"
CURRENT_NAME = "CURRENT"
MANIFEST_NAME = "manifest.json"
FAISS_NAME = "segments.faiss"
SEGMENTS_NAME = "segments.npz"
TOKENS_DIR = "tokens"
THUMBNAILS_DIR = "thumbnails"
PREVIEWS_DIR = "previews"
CACHE_DIR = "cache"
LOCK_NAME = "indexer.lock"
MANIFEST_FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_OPEN_TOKEN_FILES = 1024  # memory maps kept open per snapshot (vm.max_map_count is finite)
# Batched flat search is about 5x faster with BLAS from 20 queries up (default threshold 128000).
FAISS_BLAS_THRESHOLD = 20


class IndexNotFoundError(LookupError):
    """No published index version yet, or the version asked for does not exist (any more)."""


class IndexMismatchError(ValueError):
    """The index was made by a different checkpoint or pre-processing than the one in use."""


def version_name(version: int) -> str:
    return f"v{version:06d}"


def parse_version_name(name: str) -> int | None:
    match = _VERSION_RE.match(name.strip())
    return int(match.group(1)) if match else None


def configure_faiss() -> None:
    """Process-wide FAISS settings this package relies on (idempotent)."""
    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD


@dataclass(frozen=True)
class IndexManifest:
    """What made a published version and how to search it."""

    version: int
    created_at: str  # ISO 8601, UTC
    checkpoint_fingerprint: str  # model.checkpoint_fingerprint of the model that embedded every vector
    checkpoint: str  # path of that checkpoint when the version was made
    model_config: dict  # AlproConfig.to_dict(), pre-processing included
    dim: int  # vector width
    num_vectors: int
    num_videos: int
    index_type: str  # "flat" | "ivf" | "hnsw"
    metric: str  # "ip": inner product of L2-normalised vectors (cosine)
    has_tokens: bool  # token features stored (IndexSnapshot.tokens works)
    recall_at_10: float | None  # measured against exact search at build time; 1.0 for flat
    segment_seconds: float = 10.0  # target window length of the segments
    search_params: dict = field(default_factory=dict)  # e.g. {"nprobe": 32} or {"efSearch": 128}
    token_shape: tuple[int, int] | None = None  # (1 + N, D) per segment when has_tokens
    precision: str = "fp32"  # what the encoder ran in (fp32, bf16, fp16): recompute tokens the same way
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IndexManifest":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # newer writers may add keys
        if values.get("token_shape") is not None:
            values["token_shape"] = tuple(values["token_shape"])
        try:
            return cls(**values)
        except TypeError as e:
            raise IndexNotFoundError(f"manifest lacks required fields: {e}") from e

    @property
    def preprocess(self) -> dict:
        """The pre-processing the vectors were made with (frames, size, mean/std, sampling)."""
        vision = self.model_config.get("vision", {})
        return {"num_frames": vision.get("num_frames"), "img_size": vision.get("img_size"),
                **self.model_config.get("preprocess", {})}

    def check_model(self, fingerprint: str, model_config: Mapping[str, Any] | None = None) -> None:
        """Raise IndexMismatchError unless this index was made by that checkpoint (and pre-processing)."""
        if fingerprint != self.checkpoint_fingerprint:
            raise IndexMismatchError(
                f"index version {self.version} was made with checkpoint {self.checkpoint_fingerprint} "
                f"({self.checkpoint}), not {fingerprint}; search needs the same checkpoint "
                f"(or rebuild the index with alpro-index --reindex)"
            )
        if model_config is not None:
            theirs = _preprocess_of(model_config)
            if theirs != self.preprocess:
                raise IndexMismatchError(
                    f"index version {self.version} was made with pre-processing {self.preprocess}, "
                    f"the model in use has {theirs}"
                )


def _preprocess_of(model_config: Mapping[str, Any]) -> dict:
    vision = model_config.get("vision", {})
    pre = dict(model_config.get("preprocess", {}))
    for key in ("mean", "std"):
        if key in pre:
            pre[key] = list(pre[key])
    return {"num_frames": vision.get("num_frames"), "img_size": vision.get("img_size"), **pre}


# segments.npz columns that copy the rows a search result shows (versions written before them lack them)
ROW_COLUMNS = ("start_s", "end_s", "thumbnail", "video_paths", "video_durations")
# segments.npz row columns added later: a version without one reads as all False
OPTIONAL_ROW_COLUMNS = ("preview",)


class IndexRow(NamedTuple):
    """A segment as a search result shows it, from the index version: its video's path and duration, its
    moment. (A tuple: a search makes one per result, right after a model call, where every allocation counts.)"""

    segment_id: int
    video_id: str
    index: int
    start_s: float
    end_s: float
    has_thumbnail: bool
    path: str
    duration_s: float | None
    preview: bool = False  # DataDir.preview_path(video_id) exists: play it instead of the original


@dataclass
class _RowTable:
    start_s: np.ndarray  # float64 (n,)
    end_s: np.ndarray  # float64 (n,)
    thumbnail: np.ndarray  # bool (n,)
    paths: list[str]  # per video
    durations: list[float | None]  # per video
    preview: np.ndarray  # bool (n,)

    @classmethod
    def load(cls, data: Any, num_vectors: int, num_videos: int) -> "_RowTable | None":
        if not all(name in data.files for name in ROW_COLUMNS):
            return None  # a version from before the row columns
        preview = data["preview"].astype(bool) if "preview" in data.files else np.zeros(num_vectors, bool)
        table = cls(data["start_s"].astype(np.float64), data["end_s"].astype(np.float64),
                    data["thumbnail"].astype(bool), [str(p) for p in data["video_paths"]],
                    [None if np.isnan(d) else float(d) for d in data["video_durations"].astype(np.float64)],
                    preview)
        if not len(table.start_s) == len(table.end_s) == len(table.thumbnail) == len(preview) == num_vectors or \
                not len(table.paths) == len(table.durations) == num_videos:
            raise ValueError("segment row columns do not match the vector count or the video count")
        return table


class IndexSnapshot:
    """An opened, immutable index version; `search` and `tokens` are safe from several threads."""

    def __init__(self, directory: Path, manifest: IndexManifest, *, use_gpu: bool = False,
                 lease: VersionLease | None = None) -> None:
        configure_faiss()
        self._lease = lease  # released by close(): until then retention keeps this version's files
        self.directory = directory
        self.manifest = manifest
        self.version = manifest.version
        try:
            index = faiss.read_index(str(directory / FAISS_NAME))
            with np.load(directory / SEGMENTS_NAME, allow_pickle=False) as data:
                self._ids = data["ids"].astype(np.int64)  # row -> segment id
                self._video_pos = data["video_pos"].astype(np.int64)
                self._seg_index = data["seg_index"].astype(np.int64)
                self._video_ids = [str(v) for v in data["video_ids"]]
                self._rows_table = _RowTable.load(data, len(self._ids), len(self._video_ids))
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            if lease is not None:
                lease.release()
            raise IndexNotFoundError(f"index version {manifest.version} at {directory} is unreadable: {e}") from e
        if index.ntotal != len(self._ids) or index.d != manifest.dim:
            raise IndexNotFoundError(
                f"index version {manifest.version} is inconsistent: {index.ntotal} vectors of width {index.d}, "
                f"{len(self._ids)} segment ids, manifest dim {manifest.dim}"
            )
        apply_search_params(index, manifest.search_params)
        self._search_lock: threading.Lock | None = None
        if use_gpu and faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            self._search_lock = threading.Lock()  # GPU indexes are not safe for concurrent search
        self._index = index
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted_ids = self._ids[self._order]
        # Segment ids are database keys, dense in practice: then a direct id -> row table (4 bytes an id up to
        # the largest) answers a look-up with one memory access where a binary search over a million ids takes
        # twenty, each a cache miss right after a model call (0.25 ms for a search's hits, measured)
        self._direct: np.ndarray | None = None
        if len(self._ids) and self._sorted_ids[0] >= 0 and self._sorted_ids[-1] < 4 * len(self._ids) + 1024:
            self._direct = np.full(int(self._sorted_ids[-1]) + 1, -1, dtype=np.int32)
            self._direct[self._ids] = np.arange(len(self._ids), dtype=np.int32)
        self._token_files: OrderedDict[str, np.ndarray] = OrderedDict()
        self._token_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------

    @property
    def num_vectors(self) -> int:
        return len(self._ids)

    def segment_ids(self) -> np.ndarray:
        """All segment ids in this version, int64, in insertion order."""
        return self._ids.copy()

    @property
    def cpu_index(self) -> faiss.Index | None:
        """The version's FAISS index (an IndexIDMap2 over row numbers) for searches with ID selectors; None
        when it lives on a GPU (not safe for concurrent search, nor for selectors)."""
        return None if self._search_lock is not None else self._index

    def video_columns(self) -> tuple[np.ndarray, list[str], list[float | None]] | None:
        """(video of each row, path of each video, duration of each video), or None for versions written
        before they carried their rows."""
        if self._rows_table is None:
            return None
        return self._video_pos, self._rows_table.paths, self._rows_table.durations

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) float32 L2-normalised -> scores (Q, k) float32, segment ids (Q, k) int64.

        Rows are best first; where fewer than k vectors exist the id is -1 and the score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(f"queries must be (Q, {self.manifest.dim}), got {tuple(np.shape(queries))}")
        if self._search_lock is None:
            scores, ids = self._index.search(q, k)
        else:
            with self._search_lock:
                scores, ids = self._index.search(q, k)
        scores = scores.astype(np.float32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _rows(self, segment_ids: Sequence[int]) -> np.ndarray:
        wanted = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
        if self._direct is not None:
            inside = (wanted >= 0) & (wanted < len(self._direct))
            rows = self._direct[np.where(inside, wanted, 0)]
            found = inside & (rows >= 0)
            if not np.all(found):
                raise KeyError(f"segment ids not in index version {self.version}: {wanted[~found][:10].tolist()}")
            return rows.astype(np.int64)
        pos = np.searchsorted(self._sorted_ids, wanted)
        pos = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        found = (len(self._sorted_ids) > 0) & (self._sorted_ids[pos] == wanted) if len(wanted) else np.ones(0, bool)
        if not np.all(found):
            missing = wanted[~found][:10].tolist()
            raise KeyError(f"segment ids not in index version {self.version}: {missing}")
        return self._order[pos]

    def locate(self, segment_ids: Sequence[int]) -> list[tuple[str, int]]:
        """(video_id, segment index) of each segment id, without the database."""
        rows = self._rows(segment_ids)
        video_ids = self._video_ids
        return [(video_ids[v], s) for v, s in zip(self._video_pos[rows].tolist(), self._seg_index[rows].tolist())]

    def first_hit_per_video(self, segment_ids: Sequence[int]) -> list[int]:
        """Positions in `segment_ids` (hits, best first) of each video's first hit, in hit order."""
        video_pos = self._video_pos[self._rows(segment_ids)]
        if not len(video_pos):
            return []
        _, first = np.unique(video_pos, return_index=True)
        return np.sort(first).tolist()

    @property
    def has_rows(self) -> bool:
        """Whether this version carries the rows search results show (`segment_rows` works)."""
        return self._rows_table is not None

    def segment_rows(self, segment_ids: Sequence[int]) -> list[IndexRow]:
        """What a search result shows of each segment, from the version itself (no database)."""
        table = self._rows_table
        if table is None:
            raise LookupError(f"index version {self.version} carries no segment rows; read them from the database")
        rows = self._rows(segment_ids)
        video_pos = self._video_pos[rows].tolist()
        return [IndexRow(segment_id, self._video_ids[v], index, start, end, thumbnail, table.paths[v],
                         table.durations[v], preview)
                for segment_id, v, index, start, end, thumbnail, preview in zip(
                    np.asarray(segment_ids, dtype=np.int64).tolist(), video_pos, self._seg_index[rows].tolist(),
                    table.start_s[rows].tolist(), table.end_s[rows].tolist(), table.thumbnail[rows].tolist(),
                    table.preview[rows].tolist())]

    def vectors(self, segment_ids: Sequence[int]) -> np.ndarray:
        """(n, dim) float32 stored vectors of these segments."""
        rows = self._rows(segment_ids)
        cpu = self._index if self._search_lock is None else faiss.index_gpu_to_cpu(self._index)
        inner = faiss.downcast_index(cpu.index)
        if isinstance(inner, faiss.IndexIVF):
            with self._token_lock:  # not while another thread builds it
                if inner.direct_map.type == faiss.DirectMap.NoMap:
                    inner.make_direct_map()  # IVF lists do not support reconstruct without it
        return np.stack([inner.reconstruct(int(r)) for r in rows]) if len(rows) else \
            np.zeros((0, self.manifest.dim), np.float32)

    def tokens(self, segment_ids: Sequence[int]) -> np.ndarray | None:
        """(n, 1+N, D) float16 token features of these segments when stored, else None."""
        if not self.manifest.has_tokens:
            return None
        rows = self._rows(segment_ids)
        out = []
        for r in rows.tolist():
            video_id = self._video_ids[self._video_pos[r]]
            out.append(np.asarray(self._token_file(video_id)[self._seg_index[r]]))
        if not out:
            shape = tuple(self.manifest.token_shape or (0, 0))
            return np.zeros((0, *shape), np.float16)
        return np.stack(out)

    def _token_file(self, video_id: str) -> np.ndarray:
        with self._token_lock:
            arr = self._token_files.get(video_id)
            if arr is not None:
                self._token_files.move_to_end(video_id)
                return arr
            path = self.directory / TOKENS_DIR / f"{video_id}.npy"
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except OSError as e:
                raise IndexNotFoundError(f"token file {path} of index version {self.version} is missing") from e
            self._token_files[video_id] = arr
            if len(self._token_files) > _OPEN_TOKEN_FILES:
                self._token_files.popitem(last=False)
            return arr

    def close(self) -> None:
        with self._token_lock:
            self._token_files.clear()
        self._index = None  # type: ignore[assignment]
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> "IndexSnapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IndexSnapshot(version={self.version}, vectors={self.num_vectors}, type={self.manifest.index_type})"


def apply_search_params(index: faiss.Index, params: Mapping[str, Any]) -> None:
    """Set nprobe (IVF) or efSearch (HNSW) on an index, through an IndexIDMap wrapper."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if "nprobe" in params and isinstance(inner, faiss.IndexIVF):
        inner.nprobe = int(params["nprobe"])
    if "efSearch" in params and isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(params["efSearch"])


class DataDir:
    """A data directory; read-only use creates nothing on disk."""

    def __init__(self, root: str | Path, database_url: str | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.database_url = database_url or default_database_url(self.root)
        self._engine: Engine | None = None
        self._create = False
        self._engine_lock = threading.Lock()

    # --- paths -----------------------------------------------------------------------------------

    @property
    def index_dir(self) -> Path:
        return self.root / INDEX_DIR

    @property
    def current_file(self) -> Path:
        return self.index_dir / CURRENT_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def cache_dir(self) -> Path:
        return self.root / CACHE_DIR

    def version_dir(self, version: int) -> Path:
        return self.index_dir / version_name(version)

    def thumbnail_relpath(self, video_id: str, segment_index: int) -> str:
        return f"{THUMBNAILS_DIR}/{video_id}/{segment_index}.jpg"

    def thumbnail_path(self, video_id: str, segment_index: int) -> Path:
        return self.root / self.thumbnail_relpath(video_id, segment_index)

    @property
    def previews_dir(self) -> Path:
        return self.root / PREVIEWS_DIR

    def preview_relpath(self, video_id: str) -> str:
        return f"{PREVIEWS_DIR}/{video_id[:2]}/{video_id}.mp4"

    def preview_path(self, video_id: str) -> Path:
        """Where a video's browser preview is (exists where `Video.preview_bytes` or `IndexRow.preview` says)."""
        return self.root / self.preview_relpath(video_id)

    # --- database --------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = create_engine_for(self.database_url, create=self._create)
            return self._engine

    def session(self) -> Session:
        """A new ORM session (use as a context manager)."""
        return Session(self.engine, expire_on_commit=False)

    def enable_writes(self) -> None:
        """Allow creating the directory and database (the indexer's side); call before first use."""
        if self._engine is not None and not self._create:
            self._engine.dispose()
            self._engine = None
        self._create = True
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(exist_ok=True)

    def dispose(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    # --- versions --------------------------------------------------------------------------------

    def current_version(self) -> int | None:
        """The published version named in index/CURRENT, or None before the first publish."""
        try:
            text = self.current_file.read_text()
        except FileNotFoundError:
            return None
        version = parse_version_name(text)
        if version is None:
            raise IndexNotFoundError(f"{self.current_file} does not name a version: {text[:40]!r}")
        return version

    def published_versions(self) -> list[int]:
        """Versions with a directory, ascending (temporary build directories excluded)."""
        if not self.index_dir.is_dir():
            return []
        found = (parse_version_name(p.name) for p in self.index_dir.iterdir() if p.is_dir())
        return sorted(v for v in found if v is not None)

    def read_manifest(self, version: int | None = None) -> IndexManifest:
        if version is None:
            version = self.current_version()
            if version is None:
                raise IndexNotFoundError(f"no index published in {self.root} yet (run alpro-index)")
        path = self.version_dir(version) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise IndexNotFoundError(f"index version {version} not found in {self.index_dir}") from e
        except (OSError, json.JSONDecodeError) as e:
            raise IndexNotFoundError(f"manifest {path} is unreadable: {e}") from e
        return IndexManifest.from_dict(data)

    def open_index(self, version: int | None = None, *, expected_fingerprint: str | None = None,
                   use_gpu: bool = False) -> IndexSnapshot:
        """Open a version (None = current); raise IndexNotFoundError, or IndexMismatchError on a fingerprint."""
        manifest = self.read_manifest(version)
        if expected_fingerprint is not None:
            manifest.check_model(expected_fingerprint)
        lease = VersionLease.acquire(self.index_dir, manifest.version)  # before reading: retention waits for it
        if not self.version_dir(manifest.version).is_dir():
            lease.release()
            raise IndexNotFoundError(f"index version {manifest.version} was deleted")
        return IndexSnapshot(self.version_dir(manifest.version), manifest, use_gpu=use_gpu, lease=lease)

    def __repr__(self) -> str:
        return f"DataDir({str(self.root)!r})"


def default_database_url(root: Path) -> str:
    return f"sqlite:///{root / DATABASE_NAME}"


__all__ = ["OPTIONAL_ROW_COLUMNS", "ROW_COLUMNS", "DataDir", "IndexManifest", "IndexMismatchError",
           "IndexNotFoundError", "IndexRow", "IndexSnapshot", "apply_search_params", "configure_faiss",
           "parse_version_name", "version_name"]
