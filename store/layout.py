"""The data directory: where published index versions, their parts, thumbnails, previews and metadata live.

Layout (the contract the service reads; the indexer is the only writer):

    DATA_DIR/
      metadata.sqlite3                   default database (or any SQLAlchemy URL)
      index/CURRENT                      "v000007": the current version (replaced atomically)
      index/v000007/                     one published, immutable version (manifest format 2)
        manifest.json                    IndexManifest as JSON: `parts`, the base first, then deltas (paths
                                         under index/), counts, the base's type, search parameters and recall
        tombstones.npy                   int64, sorted: segment ids its parts hold that it no longer serves
      index/parts/p000005/               one immutable part, written by the version of its number and listed
                                         by reference by later versions (a base until the next compaction)
        segments.faiss                   faiss IndexIDMap2, inner product, ids = Segment.id: over Flat, IVF or
                                         HNSW for a base, over Flat for a delta (deltas are searched exactly)
        ivfpq.faiss, vectors.f16.npy,    an "ivfpq" base has these instead of segments.faiss (store/compressed/):
        ids.npy, compressed.json         FAISS OPQ + IndexIVFPQ, inner product, labels = Segment.id (its lists
                                         memory-mapped); the vectors as float16 (n, dim) in id order, read with
                                         pread to re-score candidates exactly; the sorted ids (int64); the
                                         build and tuned parameters (nlist, m, nprobe, rerank, recall_at_10)
        rows/<column>.npy                one memory-mappable array a column: per vector ids (int64),
                                         video_pos (int32), seg_index (int32), start_s, end_s (float64),
                                         thumbnail, preview (bool); per video video_ids, video_paths (str),
                                         video_durations (float64, NaN unknown): the rows search results show
        tokens/<video_id>.npy            with --store-tokens: (S, 1+N, D) float16 per video (hard links to the
                                         indexer's cache, so a part costs no copy)
      index/v000001/                     a format-1 version (written before parts; still read, and listed as
                                         the base part by the format-2 versions built on it): manifest.json,
                                         segments.faiss, tokens/ and segments.npz (the same row columns in one
                                         npz, read whole: versions before the row copy lack start_s ...
                                         video_durations, those before previews lack preview)
      index/leases/vNNNNNN.lock          readers' shared locks (store/lease.py)
      thumbnails/<video_id>/<i>.jpg      middle frame of segment i
      previews/<id[:2]>/<video_id>.mp4   the whole video as H.264/AAC MP4 (360 px high or less, faststart)
                                         where a browser cannot play the original (or --previews all);
                                         present where videos.preview_bytes is set (written to a temp name,
                                         fsynced, renamed); second t of it is second t of the segments
      cache/<pipeline key>/..            per-video embeddings for incremental runs (indexer only)
      indexer.lock                       held by a running indexer (POSIX lock; dies with the process)

What a version serves: every segment id of its parts, each from the newest part that holds it (a delta
re-adding a video whose rows changed shadows the base's rows), except its tombstones. A version changing
k videos writes one delta part of their vectors and the tombstones of what they replace: O(k) vector work;
a compaction writes a new base of every vector (store/publish.py says when).

Parts and versions are written under temporary names, fsynced and renamed, and only then is the version
named in CURRENT (itself written to a temporary file and os.replace'd), so a reader never sees a partial
version. Older versions are deleted after a few newer ones exist, never one a reader holds a lease on, and a
part once no remaining version lists it (store/retention.py). An IndexSnapshot already open keeps working:
its FAISS indexes and rows are memory-mapped or in memory, and both survive the unlink.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from .lease import VersionLease
from .manifest import IndexManifest, IndexNotFoundError
from .tables import create_engine_for

if TYPE_CHECKING:
    from .snapshot import IndexSnapshot

DATABASE_NAME = "metadata.sqlite3"
INDEX_DIR = "index"
CURRENT_NAME = "CURRENT"
MANIFEST_NAME = "manifest.json"
TOMBSTONES_NAME = "tombstones.npy"
PARTS_DIR = "parts"
FAISS_NAME = "segments.faiss"
ROWS_DIR = "rows"
SEGMENTS_NAME = "segments.npz"  # format 1 rows
TOKENS_DIR = "tokens"
THUMBNAILS_DIR = "thumbnails"
PREVIEWS_DIR = "previews"
CACHE_DIR = "cache"
LOCK_NAME = "indexer.lock"
_VERSION_RE = re.compile(r"^v(\d{6,})$")


def version_name(version: int) -> str:
    return f"v{version:06d}"


def parse_version_name(name: str) -> int | None:
    match = _VERSION_RE.match(name.strip())
    return int(match.group(1)) if match else None


def part_name(version: int) -> str:
    """Where the part written by `version` lives, relative to index/."""
    return f"{PARTS_DIR}/p{version:06d}"


def manifest_parts(manifest: IndexManifest) -> tuple[str, ...]:
    """The parts a version serves, relative to index/ (a format-1 version is its own one part)."""
    return manifest.parts or (version_name(manifest.version),)


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
    def parts_dir(self) -> Path:
        return self.index_dir / PARTS_DIR

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

    def part_dir(self, name: str) -> Path:
        """A part's directory from its name in a manifest (relative to index/)."""
        return self.index_dir / name

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
                   use_gpu: bool = False) -> "IndexSnapshot":
        """Open a version (None = current); raise IndexNotFoundError, or IndexMismatchError on a fingerprint."""
        from .snapshot import IndexSnapshot  # imported here: the snapshot module imports this one

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


__all__ = ["CACHE_DIR", "CURRENT_NAME", "DATABASE_NAME", "FAISS_NAME", "INDEX_DIR", "LOCK_NAME", "MANIFEST_NAME",
           "PARTS_DIR", "PREVIEWS_DIR", "ROWS_DIR", "SEGMENTS_NAME", "THUMBNAILS_DIR", "TOKENS_DIR", "TOMBSTONES_NAME",
           "DataDir", "default_database_url", "manifest_parts", "parse_version_name", "part_name", "version_name"]
