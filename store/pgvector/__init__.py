"""The pgvector backend of the index (ALPRO_VECTOR_STORE=pgvector): segment vectors, and the rows search results
show, in the metadata database (PostgreSQL with the pgvector extension), versioned in place.

schema.py      the tables and the HNSW index
publication.py a publish: the change since the published version, in one transaction
tuning.py      exact or HNSW search, ef_search tuned to the recall target, recall@10 measured
snapshot.py    a published version: search (filters in SQL) and rows

The FAISS backend (store.datadir) stays the embedded default; the service and the indexer pick one by
the shared setting `vector_store`. Importing this package needs no pgvector client; publishing does.
"""

from .publication import (PublishedVersion, SegmentRecord, StoreState, VersionChange, plan_change, publish_version,
                          read_state)
from .schema import VectorStoreError, create_vector_engine, is_postgresql
from .snapshot import RowFilter, VectorSnapshot, read_current_version, read_manifest
from .tuning import EXACT_MAX, SearchPlan

__all__ = ["EXACT_MAX", "PublishedVersion", "RowFilter", "SearchPlan", "SegmentRecord", "StoreState",
           "VectorSnapshot", "VectorStoreError", "VersionChange", "create_vector_engine", "is_postgresql",
           "plan_change", "publish_version", "read_current_version", "read_manifest", "read_state"]
