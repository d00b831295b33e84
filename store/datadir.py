"""The read side of the format under its first module's name: code written when one module held the layout,
the manifest and the snapshot imports them from here. New code imports the modules themselves (layout,
manifest, rows, snapshot)."""

from __future__ import annotations

from .faiss_build import apply_search_params, configure_faiss
from .layout import (CACHE_DIR, CURRENT_NAME, DATABASE_NAME, FAISS_NAME, INDEX_DIR, LOCK_NAME, MANIFEST_NAME,
                     PREVIEWS_DIR, SEGMENTS_NAME, THUMBNAILS_DIR, TOKENS_DIR, DataDir, default_database_url,
                     parse_version_name, version_name)
from .manifest import MANIFEST_FORMAT, IndexManifest, IndexMismatchError, IndexNotFoundError
from .rows import OPTIONAL_ROW_COLUMNS, ROW_COLUMNS, IndexRow
from .snapshot import IndexSnapshot

__all__ = ["CACHE_DIR", "CURRENT_NAME", "DATABASE_NAME", "FAISS_NAME", "INDEX_DIR", "LOCK_NAME", "MANIFEST_FORMAT",
           "MANIFEST_NAME", "OPTIONAL_ROW_COLUMNS", "PREVIEWS_DIR", "ROW_COLUMNS", "SEGMENTS_NAME", "THUMBNAILS_DIR",
           "TOKENS_DIR", "DataDir", "IndexManifest", "IndexMismatchError", "IndexNotFoundError", "IndexRow",
           "IndexSnapshot", "apply_search_params", "configure_faiss", "default_database_url", "parse_version_name",
           "version_name"]
