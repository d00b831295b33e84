"""Search result pieces, pure functions: FAISS scores to cosines, grouping hits by video, filters, cursors."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import schemas
from .catalog import SegmentRow
from .errors import InvalidRequestError


@dataclass
class Candidate:
    """A video's best moment for a query."""

    row: SegmentRow
    vtc: float  # cosine similarity
    vtm: Optional[float] = None  # VTM match probability, once re-ranked
    reranked: Optional[float] = None  # once re-ranked: model.alpro.rerank_probability (VTC and VTM evidence)
    moments: list = field(default_factory=list)  # schemas.Moment of this video among the hits, best first

    @property
    def score(self) -> float:
        """Relevance in [0, 1]: the re-ranking score where re-ranked, else (1 + cosine) / 2."""
        return self.reranked if self.reranked is not None else (1.0 + self.vtc) / 2.0

    @property
    def rerank_key(self) -> tuple[float, float]:
        # VTC logit + VTM log-odds (docs/learn_objectives.md: the VTM probability alone, the reference's rule,
        # scrambles the top-k wherever VTM has not learnt a distinction); the cosine breaks ties
        return (self.reranked if self.reranked is not None else -1.0, self.vtc)


def to_cosine(scores: np.ndarray, metric: str) -> np.ndarray:
    """FAISS scores -> cosine similarity (the vectors are L2-normalised)."""
    if metric.lower() in ("l2", "euclidean"):
        return 1.0 - scores / 2.0  # squared distance of unit vectors
    return scores


def prefix_folder(prefix: str) -> str:
    """The file or folder a `path_prefix` names: trailing slashes dropped ("" for the root)."""
    return prefix.rstrip("/")


def under_path(path: str, prefix: str) -> bool:
    """Whether `path` is the file or folder `prefix` names or lies below it, by whole path components:
    `/media/lib` takes `/media/lib/a.mp4` and `/media/lib/x/b.mp4`, not `/media/library2/c.mp4`."""
    folder = prefix_folder(prefix)
    return path.startswith(folder) and (len(path) == len(folder) or path[len(folder)] == "/")


def passes(row: SegmentRow, filters: Optional[schemas.SearchFilters]) -> bool:
    if filters is None:
        return True
    if filters.path_prefix is not None and not under_path(row.path, filters.path_prefix):
        return False
    if filters.min_duration is not None and (row.duration_s is None or row.duration_s < filters.min_duration):
        return False
    if filters.max_duration is not None and (row.duration_s is None or row.duration_s > filters.max_duration):
        return False
    return True


def query_key(request: schemas.SearchRequest) -> str:
    """What a cursor must belong to: the query (text, image or example), filters, re-ranking and the score cutoff
    (not the page size)."""
    payload = {"q": request.query, "f": request.filters.model_dump() if request.filters else None,
               "r": request.rerank, "m": request.min_score,
               "i": hashlib.sha256(request.image.encode()).hexdigest() if request.image is not None else None,
               "e": request.example.model_dump() if request.example is not None else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def encode_cursor(offset: int, key: str) -> str:
    raw = json.dumps({"o": offset, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, key: str) -> int:
    """The offset a cursor points at; 422 when it is malformed or from another query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        offset, cursor_key = data["o"], data["k"]
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidRequestError("cursor: not a cursor returned by this server") from e
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= schemas.MAX_OFFSET:
        raise InvalidRequestError("cursor: not a cursor returned by this server")
    if cursor_key != key:
        raise InvalidRequestError("cursor: it belongs to a different query, filters or rerank setting")
    return offset
