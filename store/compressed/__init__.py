"""Compressed vector indexes for large libraries: IVF-PQ (optionally OPQ-rotated) candidates, exactly re-scored.

Segment embeddings are L2-normalised 256-d float32, searched by inner product (cosine). Past a few million of
them an exact or graph index costs d * 4 bytes a vector and more (1 KiB at d = 256: 10 GiB at 10M). Here:

- a FAISS IVF-PQ index (coarse k-means lists; each vector's residual product-quantised to `m` bytes; an OPQ
  rotation learnt first when `opq`) holds the ids and finds `rerank` candidates per query, scanning `nprobe`
  lists;
- an fp16 copy of every vector (rows in id order, `vectors.f16.npy`) and the sorted ids (`ids.npy`) re-score
  those candidates exactly: the scores returned are the inner products of the query with the stored vectors
  (fp16-rounded, so within ~1e-3 of float32 ones; identical where the vectors were fp16-exact), and the top k by
  that exact score are returned. Approximation only decides which vectors are scored, never their score.

`CompressedIndex.open(dir, mmap=True)` maps what it can instead of reading it: the index's inverted lists (the
bulk of the FAISS file: codes and ids) through faiss.IO_FLAG_MMAP, the fp16 vectors and the ids through
np.load(mmap_mode="r"). Mapped pages are the kernel's page cache, shared by every process on the host that maps
the same files (replicas), resident only once touched and reclaimable under memory pressure; what each process
owns (anonymous memory) is the coarse centroids, the PQ codebooks and the OPQ matrix: nlist * d * 4 + 256 * d * 4
+ d * d * 4 bytes, a few MiB. The rows to re-score are read with pread by default (`RowReader`): still from the
shared page cache, but never mapped, because a mapping's faults make whole 64 KiB+ runs of the fp16 file resident
(fault-around, large folios) and it would soon count in full in every replica's RSS (512 bytes a vector).

`tune` picks (nprobe, rerank) reaching a recall@10 target against exact search at the lowest modelled cost and
reports the recall it measured, as a manifest's `recall_at_10`. `search(..., allowed_ids=...)` restricts the
search to some ids with a FAISS IDSelector (IDSelectorBatch, or IDSelectorBitmap over dense ids) and stays
complete: a selective filter is scored exactly over the allowed vectors, a broader one widens nprobe by the
filter's selectivity and falls back to every list for a query that comes back short.

Modules: index.py (the index, its search and its files), build.py (training, tuning, recall), cost.py (the
query cost model), row_reader.py (pread of fp16 rows). The store builds one as the "ivfpq" base type
(store/faiss_build.py, store/part.py). Self-contained (faiss, numpy, stdlib).
"""

from .build import (TuneResult, build_compressed, build_tuned, default_m, default_nlist, exact_top_k, recall_at,
                    tune)
from .cost import query_cost_ns  # its constants: patch them on store.compressed.cost
from .index import FORMAT, IDS_NAME, INDEX_NAME, META_NAME, RECALL_K, VECTORS_NAME, CompressedIndex, Selection
from .row_reader import RowReader

__all__ = ["FORMAT", "IDS_NAME", "INDEX_NAME", "META_NAME", "RECALL_K", "VECTORS_NAME", "CompressedIndex",
           "RowReader", "Selection", "TuneResult", "build_compressed", "build_tuned", "default_m", "default_nlist",
           "exact_top_k", "query_cost_ns", "recall_at", "tune"]
