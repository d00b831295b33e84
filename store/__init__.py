"""The index format shared by the indexer (writes it) and the service (reads it).

A data dir holds immutable, versioned FAISS indexes with their row tables and manifests (datadir.py), the
SQL metadata tables of videos, segments and failures (tables.py), and the leases that keep a version in
use from being deleted (lease.py). Neither side imports the other; both import this.
"""

from .datadir import DataDir, IndexManifest, IndexMismatchError, IndexNotFoundError, IndexSnapshot
from .tables import Failure, IndexVersion, Segment, Video, create_engine_for, init_db

__all__ = ["DataDir", "Failure", "IndexManifest", "IndexMismatchError", "IndexNotFoundError", "IndexSnapshot",
           "IndexVersion", "Segment", "Video", "create_engine_for", "init_db"]
