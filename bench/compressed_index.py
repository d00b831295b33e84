"""Compressed IVF-PQ + exact fp16 re-scoring (store.compressed) against flat and HNSW, at several sizes.

    python -m bench.compressed_index [--sizes 100000,1000000] [--json out.json] [--workdir .cache/bench-compressed]
        [--tune-queries 500] [--eval-queries 1000] [--flat-queries 200] [--threads 1] [--kinds flat,hnsw,ivfpq]
        [--recall-target 0.95] [--keep]

Data: clustered random 256-d unit vectors (a mixture of gaussians, about 1000 vectors a cluster, each cluster's
noise with a power-law spectrum along its own axes, as embeddings cluster on low-dimensional structure), ids
spread over [0, 4n). Queries are fresh draws from the same mixture (not stored vectors): `--tune-queries` to tune
on, `--eval-queries` others to measure recall@10 and latency on.

Per size and index kind (flat: IndexIDMap2(IndexFlatIP); HNSW: M=32, efConstruction=80, efSearch doubled until
recall@10 >= target on the tuning queries, as indexer.faiss_index builds them; IVF-PQ: `build_compressed` with
its defaults, `tune` on the tuning queries):

- build s, file sizes on disk;
- a fresh process (`--threads` OpenMP threads) opens the index as a replica would (flat / HNSW: read_index;
  IVF-PQ: `CompressedIndex.open(mmap=True)`, rows re-scored by pread, the default) and answers single queries:
  p50 / p99 latency (after 50 warm-up queries from the tuning set), recall@10 of its answers vs exact
  (IndexFlatIP over float32), and its memory from /proc/self/status (VmRSS = RssAnon + RssFile + RssShmem)
  and /proc/self/smaps (resident bytes per mapped file);
- recall@10 is measured on the evaluation queries, not those the parameters were tuned on (tuned to the target
  plus `--tune-margin`);
- IVF-PQ also opened with re-scoring through the mapping (rescore_io="mmap") and fully read (mmap=False), and two
  replicas at once, whose /proc/PID/smaps_rollup Pss shows the mapped pages counted once between them.

The 10M RSS estimate scales the measured IVF-PQ figures: process-owned memory (interpreter and libraries, as
measured, plus coarse centroids, PQ codebooks and OPQ matrix at 10M's nlist) and the mapped inverted lists
(code + id bytes a vector) and ids, all assumed resident (shared page cache); the fp16 file is read by pread,
outside RSS (through the mapping it would add 512 bytes a vector).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

logger = logging.getLogger("bench.compressed_index")

D = 256
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
WARMUP = 50
K = 10


# --------------------------------------------------------------------------------------------------
# Data


class Mixture:
    """A mixture of gaussians on the unit sphere: cluster centres, each with its own noise axes (a permutation
    of a power-law spectrum), so neighbours differ in few directions, as real embeddings do."""

    def __init__(self, clusters: int, d: int = D, noise: float = 0.9, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.d = d
        self.centres = rng.normal(size=(clusters, d)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        scales = (1 + np.arange(d)) ** -0.5
        self.scales = (scales * noise / np.sqrt((scales ** 2).sum())).astype(np.float32)
        self.axes = np.stack([rng.permutation(d) for _ in range(clusters)])  # (clusters, d) noise axes

    def draw(self, n: int, seed: int, chunk: int = 65_536) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.d), dtype=np.float32)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            c = rng.integers(0, len(self.centres), m)
            x = rng.standard_normal((m, self.d), dtype=np.float32) * self.scales[self.axes[c]]
            x += self.centres[c]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[lo:lo + m] = x
        return out


# --------------------------------------------------------------------------------------------------
# Memory of a process


def proc_status(pid: str = "self") -> dict[str, int]:
    """MiB of VmRSS, RssAnon, RssFile, RssShmem, VmHWM from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def smaps_rollup(pid: int) -> dict[str, float]:
    """MiB of Rss / Pss (and their anonymous and file parts) from /proc/PID/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def mapped_files(under: str) -> dict[str, float]:
    """MiB resident per mapped file below `under`, from /proc/self/smaps."""
    out: dict[str, float] = {}
    path = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else None
        elif path and path.startswith(under) and line.startswith("Rss:"):
            name = os.path.basename(path)
            out[name] = round(out.get(name, 0.0) + int(head[1]) / 1024, 1)
    return out


# --------------------------------------------------------------------------------------------------
# The serving process


def serve(config: dict) -> None:
    """Child process: open an index, answer single queries, report latency / memory (JSON on stdout)."""
    import faiss

    from store.compressed import CompressedIndex  # imported by every kind: the same baseline (store pulls SQLAlchemy)

    faiss.omp_set_num_threads(config["threads"])
    report: dict[str, Any] = {"before_open": proc_status()}
    queries = np.load(config["queries"])
    warm = np.load(config["warmup"])
    kind, path = config["kind"], config["path"]
    start = time.perf_counter()
    if kind == "ivfpq":
        index = CompressedIndex.open(path, mmap=config["mmap"], rescore_io=config["rescore_io"])
        report["mmapped_lists"] = index.mmapped

        def search(q: np.ndarray) -> np.ndarray:
            return index.search(q, K)[1]
    else:
        index = faiss.read_index(path)
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = config["efSearch"]

        def search(q: np.ndarray) -> np.ndarray:
            return index.search(q, K)[1]
    report["open_s"] = round(time.perf_counter() - start, 3)
    report["after_open"] = proc_status()
    t = time.perf_counter()
    search(warm[:1])
    report["first_query_ms"] = round((time.perf_counter() - t) * 1000, 3)
    for i in range(1, min(WARMUP, len(warm))):
        search(warm[i:i + 1])
    n = config["latency_queries"]
    found = np.full((n, K), -1, dtype=np.int64)
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        found[i] = search(queries[i:i + 1])[0]
        times[i] = time.perf_counter() - t
    np.save(config["out"], found)
    report["queries"] = n
    report["p50_ms"] = round(float(np.percentile(times, 50)) * 1000, 3)
    report["p99_ms"] = round(float(np.percentile(times, 99)) * 1000, 3)
    report["mean_ms"] = round(float(times.mean()) * 1000, 3)
    report["after_queries"] = proc_status()
    report["mapped_files_mib"] = mapped_files(str(Path(path).resolve().parent if kind != "ivfpq"
                                                  else Path(path).resolve()))
    if config.get("hold"):
        print("READY", flush=True)
        sys.stdin.readline()  # the parent reads /proc/PID/smaps_rollup meanwhile
    print(json.dumps(report), flush=True)


def run_serve(config: dict, *, replicas: int = 1) -> list[dict]:
    """Run `replicas` serving processes at once; with several, their smaps_rollup while all are up."""
    procs = []
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    for r in range(replicas):
        cfg = dict(config, out=f"{config['out']}.{r}.npy", hold=replicas > 1)
        procs.append((cfg, subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "bench.compressed_index", "--serve", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)))
    rollups = []
    if replicas > 1:
        for _, p in procs:
            line = p.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"replica said {line!r}")
        rollups = [smaps_rollup(p.pid) for _, p in procs]
    results = []
    for r, (cfg, p) in enumerate(procs):
        out, _ = p.communicate("go\n")
        if p.returncode:
            raise RuntimeError(f"serve {cfg['kind']} failed ({p.returncode})")
        report = json.loads(out.strip().splitlines()[-1])
        report["found"] = np.load(cfg["out"])
        if rollups:
            report["smaps_rollup"] = rollups[r]
        results.append(report)
    return results


# --------------------------------------------------------------------------------------------------
# One size


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    from store.compressed import recall_at

    return round(recall_at(found, truth), 4)


def file_mib(*paths: Path) -> float:
    return round(sum(p.stat().st_size for p in paths) / 2 ** 20, 1)


def bench_size(n: int, args: argparse.Namespace, work: Path) -> dict:
    import faiss

    from store.compressed import build_compressed, default_nlist

    faiss.omp_set_num_threads(args.threads)
    work.mkdir(parents=True, exist_ok=True)
    clusters = max(64, n // 1000)
    mix = Mixture(clusters, seed=args.seed)
    t = time.perf_counter()
    x = mix.draw(n, seed=args.seed + 1)
    ids = np.sort(np.random.default_rng(args.seed + 2).choice(4 * n, n, replace=False)).astype(np.int64)
    ids = np.random.default_rng(args.seed + 3).permutation(ids)  # stored in no particular order
    tune_q = mix.draw(args.tune_queries, seed=args.seed + 4)
    eval_q = mix.draw(args.eval_queries, seed=args.seed + 5)
    np.save(work / "eval_q.npy", eval_q)
    np.save(work / "tune_q.npy", tune_q)
    flat = faiss.IndexFlatIP(D)
    flat.add(x)
    scores, rows = flat.search(np.concatenate([tune_q, eval_q]), 100)
    del flat
    truth = ids[rows[:, :K]]
    truth_tune, truth_eval = truth[:len(tune_q)], truth[len(tune_q):]
    result: dict[str, Any] = {"n": n, "clusters": clusters, "data": {
        "generate_and_truth_s": round(time.perf_counter() - t, 1),
        "top1_cos": round(float(scores[:, 0].mean()), 4), "top10_cos": round(float(scores[:, 9].mean()), 4),
        "top100_cos": round(float(scores[:, 99].mean()), 4),
        "random_pair_cos": round(float(np.mean(np.sum(x[:1000] * x[1000:2000], axis=1))), 4)}}
    logger.info("n=%d: data %s", n, result["data"])
    serve_base = {"threads": args.threads, "queries": str(work / "eval_q.npy"), "warmup": str(work / "tune_q.npy")}

    if "flat" in args.kinds:
        t = time.perf_counter()
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
        index.add_with_ids(x, ids)
        build_s = time.perf_counter() - t
        path = work / "flat.faiss"
        faiss.write_index(index, str(path))
        del index
        nq = min(args.flat_queries, args.eval_queries)
        [rep] = run_serve(dict(serve_base, kind="flat", path=str(path), latency_queries=nq, out=str(work / "f")))
        result["flat"] = summary(rep, truth_eval, build_s=build_s, disk_mib=file_mib(path), params={})
        logger.info("n=%d flat: %s", n, short(result["flat"]))
        if not args.keep:
            path.unlink()

    if "hnsw" in args.kinds:
        t = time.perf_counter()
        inner = faiss.IndexHNSWFlat(D, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(x, ids)
        build_s = time.perf_counter() - t
        ef = 16
        while True:
            inner.hnsw.efSearch = ef
            tuned = recall(index.search(tune_q, K)[1], truth_tune)
            if tuned >= args.recall_target + args.tune_margin or ef >= 4096:
                break
            ef *= 2
        path = work / "hnsw.faiss"
        faiss.write_index(index, str(path))
        del index, inner
        [rep] = run_serve(dict(serve_base, kind="hnsw", path=str(path), efSearch=ef,
                               latency_queries=args.eval_queries, out=str(work / "h")))
        result["hnsw"] = summary(rep, truth_eval, build_s=build_s, disk_mib=file_mib(path),
                                 params={"efSearch": ef, "tune_recall_at_10": tuned})
        logger.info("n=%d hnsw: %s", n, short(result["hnsw"]))
        if not args.keep:
            path.unlink()

    if "ivfpq" in args.kinds:
        t = time.perf_counter()
        built = build_compressed(x, ids)
        build_s = time.perf_counter() - t
        tuning = built.tune(tune_q, truth_tune, args.recall_target + args.tune_margin)
        directory = work / "ivfpq"
        built.write(directory)
        params = dict(built.params(), info=built.info, tune_s=round(tuning.tune_s, 1),
                      tune_modelled_cost_us=round(tuning.cost_ns / 1000, 1), tune_settings_tried=len(tuning.tried))
        memory = built.memory()
        del built
        cfg = dict(serve_base, kind="ivfpq", path=str(directory), latency_queries=args.eval_queries,
                   out=str(work / "c"), mmap=True, rescore_io="pread")
        [rep] = run_serve(cfg)
        files = [directory / name for name in ("ivfpq.faiss", "vectors.f16.npy", "ids.npy")]
        result["ivfpq"] = summary(rep, truth_eval, build_s=build_s, disk_mib=file_mib(*files), params=params)
        result["ivfpq"]["disk_mib_by_file"] = {f.name: file_mib(f) for f in files}
        result["ivfpq"]["memory_model_bytes"] = memory
        logger.info("n=%d ivfpq: %s", n, short(result["ivfpq"]))
        variants = {}
        for name, extra in (("rescore_mmap", {"rescore_io": "mmap"}), ("no_mmap", {"mmap": False})):
            [rep] = run_serve(dict(cfg, **extra))
            variants[name] = summary(rep, truth_eval)
            logger.info("n=%d ivfpq %s: %s", n, name, short(variants[name]))
        for io in ("pread", "mmap"):  # mapped pages (lists; fp16 rows too with "mmap") count once between them
            reps = run_serve(dict(cfg, latency_queries=min(200, args.eval_queries), rescore_io=io), replicas=2)
            variants[f"two_replicas_{io}"] = [dict(summary(r, truth_eval[:len(r["found"])]),
                                                   smaps_rollup=r["smaps_rollup"]) for r in reps]
            logger.info("n=%d ivfpq two replicas (%s): %s", n, io, [r["smaps_rollup"] for r in reps])
        result["ivfpq_variants"] = variants
        result["ivfpq"]["nlist_at_10m"] = default_nlist(10_000_000)
        if not args.keep:
            shutil.rmtree(directory)
    return result


def summary(rep: dict, truth: np.ndarray, **extra: Any) -> dict:
    found = rep.pop("found")
    out = dict(extra)
    out.update(recall_at_10=recall(found, truth[:len(found)]), **{k: v for k, v in rep.items()})
    out["rss_mib"] = rep["after_queries"]["VmRSS"]
    return out


def short(r: dict) -> str:
    return (f"build {r.get('build_s', 0):.1f}s p50 {r['p50_ms']:.2f}ms p99 {r['p99_ms']:.2f}ms "
            f"recall@10 {r['recall_at_10']:.3f} RSS {r['rss_mib']:.0f}MiB (anon {r['after_queries']['RssAnon']:.0f}, "
            f"file {r['after_queries']['RssFile']:.0f}) disk {r.get('disk_mib', 0):.0f}MiB")


def estimate_10m(res: dict) -> dict:
    """Scale the measured IVF-PQ figures to 10M vectors (see the module docstring)."""
    n = res["n"]
    c = res["ivfpq"]
    model = c["memory_model_bytes"]
    d = c["params"]["d"]
    mib = 2 ** 20
    big = 10_000_000
    nlist = c["nlist_at_10m"]
    owned_here = model["owned"] / mib
    owned_10m = (nlist * d * 4 + 256 * d * 4 + (d * d * 4 if c["params"]["opq"] else 0)) / mib
    anon = c["after_queries"]["RssAnon"] - owned_here + owned_10m  # interpreter, libraries, buffers as measured
    lists = big * model["per_vector_index"] / mib
    ids = big * 8 / mib
    fp16 = big * d * 2 / mib
    return {"from_n": n, "nlist": nlist, "anon_mib": round(anon, 1), "inverted_lists_mib": round(lists, 1),
            "ids_mib": round(ids, 1), "fp16_file_mib": round(fp16, 1),
            "rss_mib_pread": round(anon + lists + ids, 1),
            "rss_mib_rescore_mmap_worst": round(anon + lists + ids + fp16, 1),
            "disk_mib": round(lists + ids + fp16, 1)}


# --------------------------------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    lines = [f"{'n':>9} {'kind':<22} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'R@10':>6} {'RSS MiB':>8} "
             f"{'anon':>7} {'file':>7} {'disk MiB':>9}  params"]
    for res in results:
        rows = [(k, res[k]) for k in ("flat", "hnsw", "ivfpq") if k in res]
        rows += [(f"ivfpq/{k}", v) for k, v in res.get("ivfpq_variants", {}).items() if isinstance(v, dict)]
        for kind, r in rows:
            p = r.get("params", {})
            params = ", ".join(f"{k}={p[k]}" for k in ("efSearch", "nlist", "m", "opq", "nprobe", "rerank") if k in p)
            lines.append(f"{res['n']:>9} {kind:<22} {r.get('build_s', float('nan')):>8.1f} {r['p50_ms']:>8.3f} "
                         f"{r['p99_ms']:>8.3f} {r['recall_at_10']:>6.3f} {r['rss_mib']:>8.0f} "
                         f"{r['after_queries']['RssAnon']:>7.0f} {r['after_queries']['RssFile']:>7.0f} "
                         f"{r.get('disk_mib', float('nan')):>9.0f}  {params}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-compressed"))
    parser.add_argument("--tune-queries", type=int, default=500)
    parser.add_argument("--eval-queries", type=int, default=1000)
    parser.add_argument("--flat-queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads (build and serve)")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--recall-target", type=float, default=0.95)
    parser.add_argument("--tune-margin", type=float, default=0.01,
                        help="tune HNSW / IVF-PQ to target + margin on the tuning queries, so that the held-out "
                             "queries' recall (what is reported) clears the target despite picking the cheapest "
                             "setting that passed on a sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the index files")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(json.loads(args.serve))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args.kinds = set(args.kinds.split(","))
    import faiss

    results = []
    report: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "faiss": faiss.__version__,
                    "numpy": np.__version__, "loadavg_start": os.getloadavg()},
        "config": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                   for k, v in vars(args).items() if k != "serve"},
        "results": results}
    for n in (int(s) for s in args.sizes.split(",")):
        results.append(bench_size(n, args, args.workdir / str(n)))
        if "ivfpq" in results[-1]:
            report["estimate_10m"] = estimate_10m(results[-1])
        report["machine"]["loadavg_end"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(results))
    if "estimate_10m" in report:
        print("10M estimate (IVF-PQ):", json.dumps(report["estimate_10m"]))


if __name__ == "__main__":
    main()
