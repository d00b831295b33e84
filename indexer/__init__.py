"""The indexer: `alpro-index VIDEOS_DIR` decodes, embeds and writes a FAISS index plus SQL metadata.

Reader (discover + decode) -> embedder (batched model calls) -> writer (cache, thumbnails, SQL), then a
publish step that builds an immutable FAISS index version. The read side the service uses is
`DataDir` / `IndexSnapshot` (datadir.py) and the ORM models (store.py).
"""

from .datadir import DataDir, IndexManifest, IndexMismatchError, IndexNotFoundError, IndexSnapshot
from .store import Failure, IndexVersion, Segment, Video, create_engine_for, init_db

__all__ = ["DataDir", "Failure", "IndexManifest", "IndexMismatchError", "IndexNotFoundError", "IndexSnapshot",
           "IndexVersion", "Segment", "Video", "create_engine_for", "init_db"]
