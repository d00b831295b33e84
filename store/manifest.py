"""The manifest of a published version: what made its vectors, how to search them, which parts it serves.

A format-2 manifest lists its parts (the base first, then deltas; store/layout.py); a format-1 manifest
(written before parts existed) lists none, and its version directory is its one part.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

MANIFEST_FORMAT = 2


class IndexNotFoundError(LookupError):
    """No published index version yet, or the version asked for does not exist (any more)."""


class IndexMismatchError(ValueError):
    """The index was made by a different checkpoint or pre-processing than the one in use."""


@dataclass(frozen=True)
class IndexManifest:
    """What made a published version and how to search it."""

    version: int
    created_at: str  # ISO 8601, UTC
    checkpoint_fingerprint: str  # model.checkpoint_fingerprint of the model that embedded every vector
    checkpoint: str  # path of that checkpoint when the version was made
    model_config: dict  # AlproConfig.to_dict(), pre-processing included
    dim: int  # vector width
    num_vectors: int  # vectors served (tombstoned and shadowed ones not counted)
    num_videos: int  # videos served
    index_type: str  # of the base: "flat" | "ivf" | "hnsw" | "ivfpq" (deltas are always flat)
    metric: str  # "ip": inner product of L2-normalised vectors (cosine)
    has_tokens: bool  # token features stored (IndexSnapshot.tokens works)
    recall_at_10: float | None  # of the base, against exact search at build time; 1.0 for flat (deltas are exact)
    segment_seconds: float = 10.0  # target window length of the segments
    search_params: dict = field(default_factory=dict)  # of the base: nprobe / efSearch (+ rerank: ivfpq)
    token_shape: tuple[int, int] | None = None  # (1 + N, D) per segment when has_tokens
    precision: str = "fp32"  # what the encoder ran in (fp32, bf16, fp16): recompute tokens the same way
    format: int = MANIFEST_FORMAT
    # format 2: directories under index/ of the parts served, the base first ("parts/p000005", or a format-1
    # version's own directory, "v000001"); empty in format 1 (the version directory is the one part)
    parts: tuple[str, ...] = ()
    base_vectors: int | None = None  # rows of the base part (None in format 1: num_vectors)
    delta_vectors: int = 0  # rows of the delta parts, shadowed ones included
    tombstones: int = 0  # segment ids of the parts this version no longer serves (tombstones.npy)

    def to_json(self) -> str:
        data = asdict(self)
        data["parts"] = list(self.parts)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IndexManifest":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # newer writers may add keys
        if values.get("token_shape") is not None:
            values["token_shape"] = tuple(values["token_shape"])
        values["parts"] = tuple(values.get("parts") or ())
        values.setdefault("format", 1)  # manifests before the format key were format 1
        try:
            return cls(**values)
        except TypeError as e:
            raise IndexNotFoundError(f"manifest lacks required fields: {e}") from e

    @property
    def base_rows(self) -> int:
        """Rows of the base part (all of a format-1 version's)."""
        return self.num_vectors if self.base_vectors is None else self.base_vectors

    @property
    def preprocess(self) -> dict:
        """The pre-processing the vectors were made with (frames, size, mean/std, sampling)."""
        vision = self.model_config.get("vision", {})
        return {"num_frames": vision.get("num_frames"), "img_size": vision.get("img_size"),
                **self.model_config.get("preprocess", {})}

    def query_matrix(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Queries for a search of this version as a contiguous float32 (Q, dim) matrix (one (dim,) query
        becomes (1, dim)); ValueError for a k below 1 or another shape."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}), got {tuple(np.shape(queries))}")
        return q

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


__all__ = ["MANIFEST_FORMAT", "IndexManifest", "IndexMismatchError", "IndexNotFoundError"]
