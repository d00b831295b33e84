"""Per-video embedding cache inside the data dir: what makes runs incremental and crash-safe.

One entry per (pipeline key, video id): `<id>.npz` (embeddings, windows, video info) and, with tokens,
`<id>.tokens.npy` (float16, memory-mappable, hard-linked into published versions). Files are written
to a temporary name, fsynced and renamed; the .npz is written last and is the entry's commit marker, so
an entry either exists completely or not at all. Entries are immutable: a video id is a content hash
and the pipeline key covers the checkpoint, pre-processing and segmentation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from store.atomic import fsync_dir

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class CacheEntry:
    """Everything needed to (re)build a video's index rows without decoding it."""

    video_id: str
    embeddings: np.ndarray  # float32 (S, D), L2-normalised
    starts: np.ndarray  # float64 (S,) window start seconds
    ends: np.ndarray  # float64 (S,)
    info: dict  # num_frames, fps, duration_s, width, height, codec
    has_tokens: bool
    thumbnails: tuple[bool, ...]  # segment i has a thumbnail file

    @property
    def num_segments(self) -> int:
        return int(self.embeddings.shape[0])


def atomic_write(path: Path, write, *, fsync: bool = True) -> None:
    """Write through `write(file)` to a temporary sibling, optionally fsync, then rename over `path`."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class EmbeddingCache:
    """The cache of one pipeline key: DATA_DIR/cache/<key>/<id[:2]>/<id>.npz (+ .tokens.npy)."""

    def __init__(self, cache_root: Path, key: str) -> None:
        self.root = cache_root
        self.key = key
        self.dir = cache_root / key

    def _base(self, video_id: str) -> Path:
        return self.dir / video_id[:2] / video_id

    def entry_path(self, video_id: str) -> Path:
        return self._base(video_id).with_suffix(".npz")

    def tokens_path(self, video_id: str) -> Path:
        return self._base(video_id).with_suffix(".tokens.npy")

    def has(self, video_id: str, *, need_tokens: bool = False) -> bool:
        """Cheap existence check (two stats); `get` validates the contents."""
        if not self.entry_path(video_id).is_file():
            return False
        return not need_tokens or self.tokens_path(video_id).is_file()

    def get(self, video_id: str, *, need_tokens: bool = False) -> CacheEntry | None:
        path = self.entry_path(video_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                entry = CacheEntry(
                    video_id=video_id,
                    embeddings=np.asarray(data["embeddings"], dtype=np.float32),
                    starts=np.asarray(data["starts"], dtype=np.float64),
                    ends=np.asarray(data["ends"], dtype=np.float64),
                    info=meta["info"],
                    has_tokens=bool(meta["has_tokens"]),
                    thumbnails=tuple(bool(t) for t in meta["thumbnails"]),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            # a damaged entry is only a cache miss: the video is embedded again
            logger.warning("ignoring unreadable cache entry %s: %s", path, e)
            return None
        if need_tokens and not (entry.has_tokens and self.tokens_path(video_id).is_file()):
            return None
        return entry

    def put(self, entry: CacheEntry, tokens: np.ndarray | None) -> None:
        """Store an entry durably (tokens first, the .npz commit marker last)."""
        path = self.entry_path(entry.video_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if tokens is not None:
            atomic_write(self.tokens_path(entry.video_id),
                         lambda f: np.save(f, np.ascontiguousarray(tokens, dtype=np.float16)))
        meta = json.dumps({"info": entry.info, "has_tokens": tokens is not None,
                           "thumbnails": list(entry.thumbnails)})
        atomic_write(path, lambda f: np.savez(f, embeddings=entry.embeddings.astype(np.float32),
                                              starts=entry.starts, ends=entry.ends, meta=np.array(meta)))
        fsync_dir(path.parent)

    def delete(self, video_id: str) -> None:
        for path in (self.entry_path(video_id), self.tokens_path(video_id)):
            path.unlink(missing_ok=True)

    def video_ids(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {p.name[: -len(".npz")] for p in self.dir.glob("*/*.npz")}

    def retain(self, keep: Iterable[str]) -> int:
        """Delete entries of videos not in `keep`; returns how many were deleted."""
        keep = set(keep)
        gone = 0
        for video_id in self.video_ids() - keep:
            self.delete(video_id)
            gone += 1
        return gone

    def drop_other_keys(self) -> list[str]:
        """Delete the caches of other pipeline keys (another checkpoint or segmentation)."""
        dropped = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.is_dir() and path.name != self.key:
                    shutil.rmtree(path, ignore_errors=True)
                    dropped.append(path.name)
        return dropped

    def remove_temporaries(self) -> int:
        """Delete leftovers of writes interrupted by a crash (call with the data dir lock held)."""
        count = 0
        if self.root.is_dir():
            for path in self.root.rglob(f"*{TMP_MARK}*"):
                path.unlink(missing_ok=True)
                count += 1
        return count


__all__ = ["CacheEntry", "EmbeddingCache", "atomic_write", "fsync_dir"]
