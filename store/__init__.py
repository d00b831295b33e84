"""The index format shared by the indexer (writes it) and the service (reads it).

A data dir holds immutable, versioned indexes: a version lists parts (a base FAISS index and small exact
deltas) and tombstones, each part with its rows (layout.py says where everything is). Read side: DataDir
(layout.py), IndexManifest (manifest.py), IndexSnapshot (snapshot.py) over parts (part.py, rows.py, search.py).
Write side: publish.py (a delta of what changed, or a compaction into a new base; change.py compares),
faiss_build.py (building and tuning FAISS indexes; an "ivfpq" base is a compressed index, compressed/: IVF-PQ
candidates re-scored exactly from fp16 vectors), atomic.py (temp dir, fsync, rename, CURRENT),
retention.py, history.py (the index_versions table). The SQL metadata tables are tables.py; the leases that
keep a version in use from being deleted are lease.py. Neither side imports the other; both import this.
"""

from .layout import DataDir
from .manifest import IndexManifest, IndexMismatchError, IndexNotFoundError
from .rows import IndexRow, SegmentRows, VideoRows
from .snapshot import IndexSnapshot
from .tables import Failure, IndexVersion, Segment, Video, create_engine_for, init_db

__all__ = ["DataDir", "Failure", "IndexManifest", "IndexMismatchError", "IndexNotFoundError", "IndexRow",
           "IndexSnapshot", "IndexVersion", "Segment", "SegmentRows", "Video", "VideoRows", "create_engine_for",
           "init_db"]
