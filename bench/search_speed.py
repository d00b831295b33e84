"""/search latency and throughput at several concurrencies, against the same work done in-process.

    python -m bench.search_speed [--vectors 1000000] [--segments-per-video 10] [--preset base]
        [--nlist N] [--nprobe 32] [--requests 60 160 320] [--concurrency 1 8 32] [--raw-requests 60]
        [--rows index|db] [--row-cache 0] [--precision fp32|int8] [--workdir .cache/bench-search]
        [--json out.json]

Builds (once, cached in --workdir) a data dir of random unit vectors in an IVF-Flat index (inner product,
IndexIDMap2 over Segment ids, as the indexer writes a base; one format-1 version directory, which
store/layout.py still reads) with matching SQLite rows, and a checkpoint of the
preset with random weights (native format). `--rows` picks where /search reads the rows it shows: the index
version's copy (default, as alpro-index writes versions) or the database (as for versions written before the
copy). Then measures:

1. raw vs in-process, in turn at concurrency 1: `encode_text` of one query + `IndexSnapshot.search` (the
   floor under any service), then `Engine.search` (model thread, FAISS over-fetch, row look-up, grouping,
   response model) for the next query;
2. in-process: `Engine.search` at each concurrency;
3. HTTP: `alpro-serve` in a subprocess (uvicorn, httptools, uvloop), driven from here by a minimal
   keep-alive HTTP/1.1 client, one connection per concurrent client.

Reported per level: p50/p99 latency and requests/s. At concurrency 1 the service overhead is the median over
requests of client latency minus the encode + FAISS time the server measured for that request
(`service_overhead_p50_ms`), split into client latency minus the server's took_ms (HTTP, JSON) and took_ms
minus encode + FAISS (row look-ups, grouping, thread hops): per-request differences, which other jobs on the
machine and the encoder's jitter do not blur the way a difference of medians taken minutes apart is. Random
weights and vectors: only speed is meaningful.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench.search_speed")

WORDS = ("a red car drives past a dog running on the beach while people watch the sunset and a man plays "
         "guitar near the old bridge a child throws a ball to the cat in the green garden").split()


def queries(n: int, seed: int = 0) -> list[str]:
    """Distinct 6-12 word captions."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 13)))) + f" {i}" for i in range(n)]


# --------------------------------------------------------------------------------------------------
# The data dir


def build_data_dir(work: Path, *, vectors: int, per_video: int, preset: str, nlist: int | None, nprobe: int,
                   train_sample: int, seed: int = 0, rows_in_index: bool = True) -> Path:
    """Checkpoint + data dir (index version 1, DB rows for every segment); reused when the config matches."""
    import faiss
    import torch
    from sqlalchemy import insert

    from store.layout import FAISS_NAME, MANIFEST_NAME, DataDir
    from store.manifest import IndexManifest
    from store.faiss_build import ivf_nlist
    from store.atomic import write_current
    from store.tables import Video, create_engine_for, init_db
    from model import checkpoint_fingerprint, create_model

    nlist = nlist or ivf_nlist(vectors)
    config = {"vectors": vectors, "per_video": per_video, "preset": preset, "nlist": nlist, "nprobe": nprobe,
              "train_sample": train_sample, "seed": seed}
    stamp = work / "bench.json"
    data = work / "data"
    if stamp.exists() and json.loads(stamp.read_text()) == config and (data / "index" / "CURRENT").exists():
        logger.info("reusing %s", work)
        write_segments(data, vectors=vectors, per_video=per_video, rows_in_index=rows_in_index)
        return data
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = create_model(preset)
    checkpoint = model.save_pretrained(work / "checkpoint")
    fingerprint = checkpoint_fingerprint(model)
    dim = model.config.embed_dim
    logger.info("checkpoint %s (%s) in %.1f s", checkpoint, fingerprint, time.perf_counter() - t0)

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((vectors, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(1, vectors + 1, dtype=np.int64)
    inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    inner.train(matrix[rng.choice(vectors, min(vectors, train_sample), replace=False)])
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(matrix, ids)
    logger.info("IVF%d over %d vectors in %.1f s", nlist, vectors, time.perf_counter() - t0)

    t0 = time.perf_counter()
    datadir = DataDir(data)
    datadir.enable_writes()
    engine = create_engine_for(datadir.database_url)
    init_db(engine)
    num_videos = (vectors + per_video - 1) // per_video
    video_ids = _video_ids(num_videos)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(insert(Video), [
            {"id": vid, "path": _video_path(v), "size_bytes": 10_000_000,
             "mtime": 0.0, "duration_s": 10.0 * per_video, "fps": 30.0, "width": 1280, "height": 720,
             "num_frames": 300 * per_video, "indexed_at": now, "checkpoint_fingerprint": fingerprint,
             "pipeline_key": "", "codec": "h264"} for v, vid in enumerate(video_ids)])
        def row(segment_id: int) -> tuple:
            video, index = divmod(segment_id - 1, per_video)
            return (segment_id, video_ids[video], index, 10.0 * index, 10.0 * (index + 1),
                    f"thumbnails/{video_ids[video]}/{index}.jpg")

        rows = (row(i) for i in ids.tolist())
        conn.exec_driver_sql('INSERT INTO segments (id, video_id, "index", start_s, end_s, thumbnail) '
                             "VALUES (?, ?, ?, ?, ?, ?)", list(rows))
    engine.dispose()
    logger.info("DB rows: %d videos, %d segments in %.1f s", num_videos, vectors, time.perf_counter() - t0)

    version_dir = datadir.version_dir(1)
    version_dir.mkdir(parents=True)
    faiss.write_index(index, str(version_dir / FAISS_NAME))
    write_segments(data, vectors=vectors, per_video=per_video, rows_in_index=rows_in_index)
    manifest = IndexManifest(
        version=1, created_at=now.isoformat(timespec="seconds"), checkpoint_fingerprint=fingerprint,
        checkpoint=str(checkpoint), model_config=model.config.to_dict(), dim=dim, num_vectors=vectors,
        num_videos=num_videos, index_type="ivf", metric="ip", has_tokens=False, recall_at_10=None,
        search_params={"nprobe": nprobe})
    (version_dir / MANIFEST_NAME).write_text(manifest.to_json())
    write_current(datadir, 1)
    stamp.write_text(json.dumps(config))
    return data


def _video_ids(num_videos: int) -> list[str]:
    return [f"{v:032x}" for v in range(num_videos)]


def _video_path(v: int) -> str:
    return f"/media/bench/{v // 1000:04d}/video_{v:07d}.mp4"


def write_segments(data: Path, *, vectors: int, per_video: int, rows_in_index: bool) -> None:
    """segments.npz of version 1, with the rows search results show (as alpro-index writes it) or without
    them (as versions from before the row columns: the service reads each search's rows from the DB)."""
    from store.layout import SEGMENTS_NAME, DataDir

    path = DataDir(data).version_dir(1) / SEGMENTS_NAME
    ids = np.arange(1, vectors + 1, dtype=np.int64)
    num_videos = (vectors + per_video - 1) // per_video
    index = ((ids - 1) % per_video)
    columns: dict[str, np.ndarray] = {"ids": ids, "video_pos": ((ids - 1) // per_video).astype(np.int32),
                                      "seg_index": index.astype(np.int32), "video_ids": np.array(_video_ids(num_videos))}
    if rows_in_index:  # the same values as the DB rows written by build_data_dir
        columns.update(start_s=10.0 * index, end_s=10.0 * (index + 1), thumbnail=np.ones(vectors, bool),
                       video_paths=np.array([_video_path(v) for v in range(num_videos)]),
                       video_durations=np.full(num_videos, 10.0 * per_video))
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "wb") as f:
        np.savez(f, **columns)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Measurements


def summarize(latencies: list[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "throughput_rps": len(ms) / wall_s}


async def _drive(call, texts: list[str], concurrency: int) -> tuple[list[float], list[dict], float]:
    """Run `call(text)` over the texts with `concurrency` workers; latencies, bodies, wall time."""
    latencies: list[float] = []
    bodies: list[dict] = []
    queue = list(reversed(texts))

    async def worker() -> None:
        while queue:
            text = queue.pop()
            t0 = time.perf_counter()
            body = await call(text)
            latencies.append(time.perf_counter() - t0)
            bodies.append(body)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, bodies, time.perf_counter() - start


def _server_side(bodies: list[dict]) -> dict[str, float]:
    took = [b["took_ms"] for b in bodies]
    inner = [b["timings"]["encode_ms"] + b["timings"]["faiss_ms"] for b in bodies]
    return {"server_took_p50_ms": statistics.median(took),
            "server_encode_p50_ms": statistics.median(b["timings"]["encode_ms"] for b in bodies),
            "server_faiss_p50_ms": statistics.median(b["timings"]["faiss_ms"] for b in bodies),
            "server_db_p50_ms": statistics.median(b["timings"]["db_ms"] for b in bodies),
            # requests whose rows all came from the service's row cache (no DB round trip)
            "db_skipped_fraction": sum(b["timings"]["db_ms"] == 0 for b in bodies) / len(bodies),
            # DB, grouping, thread hops and, above concurrency 1, the wait for the model thread
            "took_minus_encode_faiss_p50_ms": statistics.median(t - i for t, i in zip(took, inner))}


def measure_in_process(data: Path, texts: dict[int, list[str]], warmup: list[str], row_cache: int,
                       raw_texts: list[str], precision: str = "fp32") -> tuple[dict[str, Any], dict[int, dict]]:
    """`Engine.search` at each concurrency; first, pairs of (raw encode + FAISS, Engine.search) in turn.

    Raw is `encode_text` of one query and `IndexSnapshot.search` for the k the service fetches, with the
    engine's own model and snapshot, on a thread of its own as the service's model thread is (on a loaded
    machine, OpenMP regions started from the main thread measured up to 10x slower here). Taking the two in
    turn keeps their ratio meaningful when other jobs on the machine change the encoder's speed.
    """
    import torch

    from service import schemas
    from service.engine import Engine
    from service.metrics import Metrics
    from service.settings import Settings

    settings = Settings(data_dir=data, device="cpu", row_cache_size=row_cache, precision=precision)
    engine = Engine.load(settings, Metrics())
    loaded = engine.retrieval
    k = max(11 * settings.overfetch, 16)  # what the engine fetches for top_k=10

    def raw(text: str) -> tuple[float, float]:
        with engine.index.acquire() as lease:
            t0 = time.perf_counter()
            with torch.inference_mode():
                embedding = loaded.model.encode_text(*loaded.tokenizer([text])).numpy()
            t1 = time.perf_counter()
            lease.snapshot.search(embedding, k)
            return t1 - t0, time.perf_counter() - t1

    async def run() -> tuple[dict[str, Any], dict[int, dict]]:
        await engine.start()
        pool = ThreadPoolExecutor(1, thread_name_prefix="raw")
        loop = asyncio.get_running_loop()
        try:
            async def call(text: str) -> dict:
                return (await engine.search(schemas.SearchRequest(query=text, top_k=10))).model_dump()

            await _drive(call, warmup, 1)
            for text in warmup[:3]:
                await loop.run_in_executor(pool, raw, text)
            encode, search, total, paired = [], [], [], []
            for text in raw_texts:
                e, f = await loop.run_in_executor(pool, raw, text)
                t0 = time.perf_counter()
                await call(text + " .")
                paired.append(time.perf_counter() - t0)
                encode.append(e)
                search.append(f)
                total.append(e + f)
            raw_result = {
                "requests": len(total), "encode_p50_ms": statistics.median(encode) * 1000,
                "faiss_p50_ms": statistics.median(search) * 1000, "p50_ms": statistics.median(total) * 1000,
                "p99_ms": float(np.percentile(total, 99) * 1000),
                "paired_in_process_p50_ms": statistics.median(paired) * 1000,
                "paired_ratio_p50": statistics.median(paired) / statistics.median(total)}
            logger.info("raw vs in-process, in turn: %s", raw_result)
            out = {}
            for concurrency, batch in texts.items():
                latencies, bodies, wall = await _drive(call, batch, concurrency)
                out[concurrency] = {**summarize(latencies, wall), **_server_side(bodies)}
                logger.info("in-process c=%d: %s", concurrency, out[concurrency])
            return raw_result, out
        finally:
            pool.shutdown()
            await engine.stop()

    return asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for JSON POSTs, one connection: a load generator that costs
    tens of microseconds a request (httpx costs about a millisecond, which on two cores is taken from the
    server and would be counted as service overhead)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "RawClient":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.writer is not None
        self.writer.close()

    async def post(self, path: str, payload: dict) -> tuple[int, dict]:
        assert self.reader is not None and self.writer is not None
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))


def measure_http(data: Path, texts: dict[int, list[str]], warmup: list[str], row_cache: int,
                 precision: str = "fp32") -> dict[int, dict]:
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    env.update(ALPRO_DEVICE="cpu", ALPRO_MAX_QUEUE="256", ALPRO_ROW_CACHE_SIZE=str(row_cache),
               ALPRO_PRECISION=precision)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "--data-dir", str(data), "--port", str(port),
                               "--no-access-log", "--log-level", "warning"], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"alpro-serve exited with {server.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("alpro-serve did not become ready")
            time.sleep(0.2)

        async def level(batch: list[str], concurrency: int) -> tuple[list[float], list[dict], float]:
            latencies: list[float] = []
            bodies: list[dict] = []
            queue = list(reversed(batch))

            async def worker() -> None:
                async with RawClient("127.0.0.1", port) as client:
                    while queue:
                        text = queue.pop()
                        t0 = time.perf_counter()
                        status, body = await client.post("/search", {"query": text, "top_k": 10})
                        latencies.append(time.perf_counter() - t0)
                        if status != 200:
                            raise RuntimeError(f"/search answered {status}: {body}")
                        bodies.append(body)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, bodies, time.perf_counter() - start

        async def run() -> dict[int, dict]:
            await level(warmup, 1)
            out = {}
            for concurrency, batch in texts.items():
                latencies, bodies, wall = await level(batch, concurrency)
                result = {**summarize(latencies, wall), **_server_side(bodies)}
                # per request: what the client saw minus what the server spent inside the engine
                result["http_overhead_p50_ms"] = statistics.median(
                    lat * 1000 - b["took_ms"] for lat, b in zip(latencies, bodies))
                # everything but encode + FAISS, per request: HTTP, JSON, row look-ups, grouping, thread hops
                result["service_overhead_p50_ms"] = statistics.median(
                    lat * 1000 - b["timings"]["encode_ms"] - b["timings"]["faiss_ms"]
                    for lat, b in zip(latencies, bodies))
                out[concurrency] = result
                logger.info("HTTP c=%d: %s", concurrency, result)
            return out

        return asyncio.run(run())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as alpro-serve does, before torch loads (raw and in-process)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000, help="segment vectors in the index")
    parser.add_argument("--segments-per-video", type=int, default=10)
    parser.add_argument("--preset", default="base", help="model preset whose text encoder is timed")
    parser.add_argument("--nlist", type=int, help="IVF lists (default: the indexer's 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--train-sample", type=int, default=100_000, help="vectors k-means trains on")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[200, 160, 320],
                        help="requests per concurrency level (one number, or one per level)")
    parser.add_argument("--raw-requests", type=int, default=60)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-search"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="ALPRO_PRECISION of the measured service: int8 encodes queries with int8 layers")
    parser.add_argument("--build-only", action="store_true", help="build (or check) the data dir and stop")
    parser.add_argument("--rows", choices=("index", "db"), default="index",
                        help="where search reads the rows it shows: the index version's copy (as alpro-index "
                        "writes it) or the database (versions written before the copy)")
    parser.add_argument("--row-cache", type=int, default=0,
                        help="ALPRO_ROW_CACHE_SIZE for the measured service (default 0: every search reads the DB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    requests = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    if len(requests) != len(args.concurrency):
        parser.error("--requests takes one number or one per --concurrency level")

    load_before = os.getloadavg()
    data = build_data_dir(args.workdir, vectors=args.vectors, per_video=args.segments_per_video, preset=args.preset,
                          nlist=args.nlist, nprobe=args.nprobe, train_sample=args.train_sample,
                          rows_in_index=args.rows == "index")
    if args.build_only:
        return {"data_dir": str(data)}
    all_texts = queries(sum(requests) * 2 + args.raw_requests + 20)
    warmup, rest = all_texts[:10], all_texts[10:]
    raw_texts, rest = rest[:args.raw_requests], rest[args.raw_requests:]
    def take(n: int) -> list[str]:
        nonlocal rest
        batch, rest = rest[:n], rest[n:]
        return batch

    raw, in_process = measure_in_process(data, {c: take(n) for c, n in zip(args.concurrency, requests)}, warmup,
                                         args.row_cache, raw_texts, args.precision)
    http_levels = {c: take(n) for c, n in zip(args.concurrency, requests)}
    http = measure_http(data, http_levels, warmup, args.row_cache, args.precision)

    import torch

    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}", "torch": torch.__version__,
        "vectors": args.vectors, "videos": (args.vectors + args.segments_per_video - 1) // args.segments_per_video,
        "index": f"IVF{args.nlist or 'auto'},Flat nprobe={args.nprobe}", "preset": args.preset,
        "load_average": {"before": load_before, "after": os.getloadavg()},  # others' jobs skew the figures
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "row_cache_size": args.row_cache, "rows": args.rows,
        "precision": args.precision,
        "raw": raw, "in_process": in_process, "http": http,
    }
    if 1 in http:
        h1 = http[1]
        result["at_concurrency_1"] = {
            # per request: client latency - (encode + FAISS) as the server timed them: the overhead
            "service_overhead_p50_ms": h1["service_overhead_p50_ms"],
            "http_minus_raw_p50_ms": h1["p50_ms"] - raw["p50_ms"],  # medians minutes apart: blurred by the encoder
            "http_overhead_p50_ms": h1["http_overhead_p50_ms"],  # per request: client latency - server took_ms
            "engine_overhead_p50_ms": h1["took_minus_encode_faiss_p50_ms"],  # per request: took_ms - (encode + FAISS)
            "in_process_over_raw": raw["paired_ratio_p50"],  # measured in turn, same conditions
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
