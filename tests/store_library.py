"""A library of videos with random unit vectors, published through the real store (a data dir with SQLite), and
the exact answers to check searches against (no tests here: tests/unit/test_store_*.py use it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store.layout import DataDir
from store.publish import DeltaPolicy, LoadedVectors, PublishResult, VersionSpec, publish
from store.rows import SegmentRows, VideoRows
from store.snapshot import IndexSnapshot
from store.tables import init_db

DIM = 32
TOKEN_SHAPE = (3, 4)


class Library:
    """What the database and the embedding cache would hold: videos' rows, vectors and token files."""

    def __init__(self, root: Path, *, seed: int = 0, tokens: bool = True, index_type: str = "flat") -> None:
        self.datadir = DataDir(root / "data")
        self.datadir.enable_writes()
        init_db(self.datadir.engine)
        self.token_dir = root / "tokens"
        self.token_dir.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self.spec = VersionSpec(fingerprint="fp", checkpoint="/ckpt", model_config={}, dim=DIM, has_tokens=tokens,
                                index_type=index_type, recall_target=0.9)
        self.videos: dict[str, VideoRows] = {}
        self.vectors: dict[int, np.ndarray] = {}  # segment id -> unit vector
        self.next_id = 1
        self.loaded_rows = 0  # vectors the store asked for, all publishes

    # --- changes ----------------------------------------------------------------------------------

    def add(self, video_id: str, segments: int, *, path: str | None = None, duration: float | None = 60.0) -> None:
        ids = list(range(self.next_id, self.next_id + segments))
        self.next_id += segments
        vectors = self.rng.standard_normal((segments, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors.update(zip(ids, vectors))
        if self.spec.has_tokens:
            np.save(self.token_dir / f"{video_id}.npy", self.rng.standard_normal((segments, *TOKEN_SHAPE))
                    .astype(np.float16))
        self.videos[video_id] = VideoRows(video_id, path or f"/media/{video_id}.mp4", duration, ids,
                                          [2.0 * i for i in range(segments)], [2.0 * i + 2 for i in range(segments)],
                                          [i % 2 == 0 for i in range(segments)], False)

    def add_many(self, count: int, segments: int, prefix: str = "v", folder: str = "/media") -> list[str]:
        start = sum(v.startswith(prefix) for v in self.videos)
        names = [f"{prefix}{i:05d}" for i in range(start, start + count)]
        for name in names:
            self.add(name, segments, path=f"{folder}/{name}.mp4")
        return names

    def remove(self, video_id: str) -> None:
        del self.videos[video_id]

    def reembed(self, video_id: str) -> None:
        """The same video embedded again (new segment ids, new vectors), as after a content change."""
        old = self.videos.pop(video_id)
        self.add(video_id, len(old.segment_ids), path=old.path, duration=old.duration_s)

    # --- the store --------------------------------------------------------------------------------

    def wanted(self) -> SegmentRows:
        return SegmentRows.of_videos([self.videos[v] for v in sorted(self.videos)])

    def load(self, rows: SegmentRows) -> LoadedVectors:
        self.loaded_rows += rows.num_rows
        vectors = np.stack([self.vectors[i] for i in rows.ids.tolist()]) if rows.num_rows else \
            np.zeros((0, DIM), np.float32)
        tokens = {str(v): self.token_dir / f"{v}.npy" for v in rows.video_ids} if self.spec.has_tokens else None
        return LoadedVectors(vectors, [], tokens, TOKEN_SHAPE if self.spec.has_tokens else None)

    def publish(self, *, keep_versions: int = 3, compact: bool = False,
                policy: DeltaPolicy = DeltaPolicy()) -> PublishResult:
        return publish(self.datadir, self.wanted(), self.load, self.spec, keep_versions=keep_versions,
                       compact=compact, policy=policy)

    # --- the truth --------------------------------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        return np.array(sorted(i for v in self.videos.values() for i in v.segment_ids), dtype=np.int64)

    def exact(self, queries: np.ndarray, k: int, passing=None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the live vectors (of the passing videos): numpy."""
        ids = np.array([i for v in sorted(self.videos) if passing is None or passing(self.videos[v])
                        for i in self.videos[v].segment_ids], dtype=np.int64)
        scores = queries @ np.stack([self.vectors[i] for i in ids]).T if len(ids) else np.zeros((len(queries), 0))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), ids[order]

    def queries(self, n: int = 16) -> np.ndarray:
        q = self.rng.standard_normal((n, DIM)).astype(np.float32)
        return q / np.linalg.norm(q, axis=1, keepdims=True)


def assert_serves(snapshot: IndexSnapshot, lib: Library, *, k: int = 10) -> None:
    """The snapshot serves exactly the library: its ids, rows, vectors, tokens, and exact search results."""
    live = lib.live_ids()
    assert sorted(snapshot.segment_ids().tolist()) == live.tolist()
    assert snapshot.num_vectors == snapshot.manifest.num_vectors == len(live)
    assert snapshot.manifest.num_videos == len(lib.videos)
    queries = lib.queries()
    scores, ids = snapshot.search(queries, k)
    want_scores, want_ids = lib.exact(queries, k)
    assert ids[:, :want_ids.shape[1]].tolist() == want_ids.tolist()
    np.testing.assert_allclose(scores[:, :want_scores.shape[1]], want_scores, atol=1e-5)
    by_id = {i: (v, n) for v in lib.videos.values() for n, i in enumerate(v.segment_ids)}
    assert snapshot.locate(live) == [(by_id[i][0].video_id, by_id[i][1]) for i in live.tolist()]
    for row in snapshot.segment_rows(live):
        video, n = by_id[row.segment_id]
        assert (row.path, row.duration_s, row.start_s, row.end_s, row.has_thumbnail, row.preview) == (
            video.path, video.duration_s, video.starts[n], video.ends[n], video.thumbnails[n], video.preview)
    np.testing.assert_allclose(snapshot.vectors(live), np.stack([lib.vectors[i] for i in live.tolist()]), atol=1e-6)
    if lib.spec.has_tokens:
        stored = snapshot.tokens(live)
        for row, i in zip(stored, live.tolist()):
            video, n = by_id[i]
            np.testing.assert_array_equal(row, np.load(lib.token_dir / f"{video.video_id}.npy")[n])
    # a video's first hit stands for it, whichever part serves it
    hits = ids[0][ids[0] >= 0]
    firsts = snapshot.first_hit_per_video(hits)
    seen = []
    for pos, i in enumerate(hits.tolist()):
        if by_id[i][0].video_id not in seen:
            seen.append(by_id[i][0].video_id)
            assert pos in firsts
    assert len(firsts) == len(seen)


__all__ = ["DIM", "Library", "assert_serves"]
