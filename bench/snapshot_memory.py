"""Memory of service replicas on one host reading one index version: memory-mapped parts (how IndexSnapshot
opens them) against reading them into each process (as format-1 versions were read).

    python -m bench.snapshot_memory [--vectors 200000] [--dim 256] [--index-type flat hnsw] [--readers 2]
        [--workdir .cache/bench-memory] [--json out.json]

Publishes a base of random unit vectors through the real store, then starts `--readers` processes that each
open the version, run 64 searches and report their memory from /proc/self/smaps_rollup while all of them hold
it: RSS (pages mapped, shared ones counted in full) and PSS (shared pages divided among the processes that map
them: what a replica really costs the host). "copied" readers load the FAISS index without mapping it and read
every row column into memory. Also reported: the seconds a reader takes to open the version.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def _smaps() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:"):
            out[parts[0][:-1].lower() + "_mb"] = int(parts[1]) // 1024
    return out


def _reader(data: str, copied: bool, ready, go, results, done) -> None:
    import faiss

    from store.layout import FAISS_NAME, ROWS_DIR, DataDir

    t = time.perf_counter()
    datadir = DataDir(data)
    held: list = []  # what the reader keeps open until every reader has measured
    if copied:
        part = datadir.part_dir(datadir.read_manifest().parts[0])
        index = faiss.read_index(str(part / FAISS_NAME))  # no flag: read into this process
        held.append({p.stem: np.array(np.load(p)) for p in (part / ROWS_DIR).glob("*.npy")})
        search, dim = index.search, index.d
    else:
        snapshot = datadir.open_index()
        search, dim = snapshot.search, snapshot.manifest.dim
    held.append(search)
    open_s = time.perf_counter() - t
    queries = np.random.default_rng(1).standard_normal((64, dim), dtype=np.float32)
    for q in queries:
        search(q[None], 10)
    ready.put(None)
    go.wait()  # every reader holds the version now: shared pages are counted among all of them
    results.put({"open_s": round(open_s, 4), **_smaps()})
    done.wait()  # and holds it until every reader has measured
    held.clear()


def measure(workdir: Path, vectors: int, dim: int, index_type: str, readers: int) -> dict[str, Any]:
    from store.layout import DataDir
    from store.publish import VersionSpec, array_loader, publish
    from store.rows import SegmentRows, VideoRows
    from store.tables import init_db

    root = workdir / f"{index_type}-{vectors}"
    shutil.rmtree(root, ignore_errors=True)
    datadir = DataDir(root)
    datadir.enable_writes()
    init_db(datadir.engine)
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((vectors, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    per_video = 10
    videos = [VideoRows(f"{v:032x}", f"/media/{v}.mp4", 100.0,
                        list(range(v * per_video + 1, (v + 1) * per_video + 1)), [10.0 * i for i in range(per_video)],
                        [10.0 * i + 10 for i in range(per_video)], [True] * per_video)
              for v in range(vectors // per_video)]
    t = time.perf_counter()
    publish(datadir, SegmentRows.of_videos(videos), array_loader(matrix, np.arange(1, vectors + 1)),
            VersionSpec("bench", "-", {}, dim, index_type=index_type), compact=True)
    files = sum(p.stat().st_size for p in root.joinpath("index").rglob("*") if p.is_file())
    figures: dict[str, Any] = {"vectors": vectors, "index_type": index_type,
                               "publish_s": round(time.perf_counter() - t, 1), "files_mb": round(files / 2**20, 1)}
    del matrix
    context = multiprocessing.get_context("spawn")
    for copied in (False, True):
        ready, results, go, done = context.Queue(), context.Queue(), context.Event(), context.Event()
        procs = [context.Process(target=_reader, args=(str(root), copied, ready, go, results, done))
                 for _ in range(readers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)
        go.set()
        measured = [results.get(timeout=600) for _ in procs]
        done.set()
        for p in procs:
            p.join(60)
        figures["copied" if copied else "mapped"] = measured
        logging.info("%s %d, %s: %s", index_type, vectors, "copied" if copied else "mapped", measured)
    shutil.rmtree(root, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index-type", nargs="+", default=["flat", "hnsw"], choices=("flat", "ivf", "hnsw"))
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-memory"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = [measure(args.workdir, args.vectors, args.dim, kind, args.readers) for kind in args.index_type]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
