"""What publishing a change costs as the library grows: a delta of +k videos, -k videos, and the compaction
every change cost before deltas existed, on libraries of random unit vectors published through the real store.

    python -m bench.publish_speed [--vectors 10000 100000] [--per-video 10] [--videos 10] [--dim 256]
        [--index-type auto] [--cache] [--workdir .cache/bench-publish] [--json out.json]

Per library size: a base is published (`store.publish.publish`, SQLite metadata), then +`--videos` videos (a
delta), then -`--videos` videos (tombstones only), then a compaction (a new base of every vector: what each of
those changes cost before deltas). Reported per step: wall seconds, vectors the store asked the loader for,
vectors written, and for the deltas the time spent comparing the served rows with the wanted ones (O(library)
rows in numpy, no vectors). Vectors come from memory, or with --cache from a real embedding cache on disk
through the indexer's loader (one .npz per video, fsynced when written: what alpro-index reads). Random
vectors: only speed is meaningful.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.cache import CacheEntry, EmbeddingCache
from indexer.publisher import CacheLoader
from store.change import diff, served_rows
from store.layout import DataDir
from store.publish import LoadedVectors, VersionSpec, publish
from store.rows import SegmentRows, VideoRows
from store.tables import init_db


class RandomLibrary:
    """Videos of `per_video` segments with random unit vectors, in memory (what the DB and cache would hold)."""

    def __init__(self, dim: int, per_video: int, cache: EmbeddingCache | None = None, seed: int = 0) -> None:
        self.dim, self.per_video = dim, per_video
        self.cache = cache
        self._from_cache = CacheLoader(cache, dim, store_tokens=False) if cache is not None else None
        self.rng = np.random.default_rng(seed)
        self.videos: dict[str, VideoRows] = {}
        self.vectors = np.zeros((0, dim), np.float32)  # row i: segment id i + 1
        self.asked = 0

    def add(self, count: int) -> list[str]:
        first_id = len(self.vectors) + 1
        fresh = self.rng.standard_normal((count * self.per_video, self.dim), dtype=np.float32)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        self.vectors = np.concatenate([self.vectors, fresh])
        names = []
        for v in range(count):
            ids = list(range(first_id + v * self.per_video, first_id + (v + 1) * self.per_video))
            name = f"{ids[0]:032x}"
            self.videos[name] = VideoRows(name, f"/media/bench/{name}.mp4", 10.0 * self.per_video, ids,
                                          [10.0 * i for i in range(self.per_video)],
                                          [10.0 * i + 10 for i in range(self.per_video)], [True] * self.per_video)
            names.append(name)
            if self.cache is not None:
                starts = np.arange(self.per_video, dtype=np.float64) * 10
                self.cache.put(CacheEntry(name, self.vectors[ids[0] - 1:ids[-1]], starts, starts + 10,
                                          {"duration_s": 10.0 * self.per_video}, False, (True,) * self.per_video),
                               None)
        return names

    def wanted(self) -> SegmentRows:
        return SegmentRows.of_videos([self.videos[v] for v in sorted(self.videos)])

    def load(self, rows: SegmentRows) -> LoadedVectors:
        self.asked += rows.num_rows
        if self._from_cache is not None:
            return self._from_cache(rows)
        return LoadedVectors(self.vectors[np.asarray(rows.ids, np.int64) - 1])


def measure(workdir: Path, vectors: int, per_video: int, videos: int, dim: int, index_type: str,
            cache: bool) -> dict[str, Any]:
    root = workdir / f"n{vectors}"
    shutil.rmtree(root, ignore_errors=True)
    datadir = DataDir(root)
    datadir.enable_writes()
    init_db(datadir.engine)
    lib = RandomLibrary(dim, per_video, EmbeddingCache(datadir.cache_dir, "bench") if cache else None)
    t = time.perf_counter()
    lib.add(vectors // per_video)
    logging.info("%d vectors made%s in %.1f s", vectors, " and cached" if cache else "", time.perf_counter() - t)
    spec = VersionSpec(fingerprint="bench", checkpoint="-", model_config={}, dim=dim, index_type=index_type)
    figures: dict[str, Any] = {"vectors": vectors, "per_video": per_video, "videos_changed": videos,
                               "index_type": index_type, "from_cache": cache}

    def step(name: str, **kwargs) -> None:
        lib.asked = 0
        compare_s = None
        if not kwargs.get("compact"):
            with datadir.open_index() as snapshot:
                t = time.perf_counter()
                diff(served_rows(snapshot), lib.wanted())
                compare_s = time.perf_counter() - t
        t = time.perf_counter()
        result = publish(datadir, lib.wanted(), lib.load, spec, keep_versions=2, **kwargs)
        figures[name] = {"wall_s": round(time.perf_counter() - t, 4), "kind": result.kind,
                         "loaded_vectors": lib.asked, "written_vectors": result.written_vectors,
                         "compare_s": None if compare_s is None else round(compare_s, 4),
                         "index_type": result.manifest.index_type, "parts": len(result.manifest.parts)}
        logging.info("%d vectors, %s: %s", vectors, name, figures[name])

    step("base", compact=True)
    added = lib.add(videos)
    step("add")
    for name in added:
        del lib.videos[name]
    step("remove")
    step("compaction", compact=True)
    datadir.dispose()
    shutil.rmtree(root, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--per-video", type=int, default=10, help="segments per video")
    parser.add_argument("--videos", type=int, default=10, help="videos added, then removed")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index-type", default="auto", choices=("auto", "flat", "ivf", "hnsw"))
    parser.add_argument("--cache", action="store_true", help="read vectors from an embedding cache on disk")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-publish"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = [measure(args.workdir, n, args.per_video, args.videos, args.dim, args.index_type, args.cache)
               for n in args.vectors]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
