"""/search latency while clients hammer /qa on long videos: does on-demand decoding starve search?

    python -m bench.qa_load [--minutes 20] [--height 720] [--qa-clients 4] [--requests 60]
        [--workdir .cache/bench-qa-load] [--json out.json]

Makes (once, cached in --workdir) a long real h264 video with imageio-ffmpeg's ffmpeg (testsrc2, a keyframe
every 10 s), indexes it with a tiny random checkpoint, then runs `alpro-serve` in a subprocess with a tiny
QA checkpoint and no QA cache (every /qa decodes the video again) and measures, in one run:
1. /search p50/p99 at concurrency 1, idle;
2. the same while --qa-clients clients send /qa back to back (each /qa decodes the whole video);
3. the /qa outcomes meanwhile (answered, 503 overloaded, 504 past the deadline) and their latency.
Prints the ratio of the two /search medians (the goal: within 2x). Random weights: only speed counts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_library(work: Path, minutes: float, height: int) -> tuple[Path, Path, Path]:
    import imageio_ffmpeg
    import torch

    from model import create_model

    videos, data, ckpt = work / "videos", work / "data", work / "checkpoints"
    video = videos / f"long_{minutes:g}min_{height}p.mp4"
    if not video.is_file():
        videos.mkdir(parents=True, exist_ok=True)
        width = height * 16 // 9 // 2 * 2
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size={width}x{height}:rate=25", "-t", str(int(minutes * 60)), "-c:v", "libx264",
                        "-preset", "ultrafast", "-g", "250", "-pix_fmt", "yuv420p", str(video)], check=True)
    if not (ckpt / "retrieval").is_dir():
        torch.manual_seed(0)
        create_model("tiny").save_pretrained(ckpt / "retrieval")
        torch.manual_seed(1)
        create_model("tiny", num_answers=5, answers=("a", "b", "c", "d", "e"), num_frames=4,
                     mlm_head=False).save_pretrained(ckpt / "qa")
    if not (data / "index").is_dir():
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
        subprocess.run([str(Path(sys.executable).parent / "alpro-index"), str(videos), "--data-dir", str(data),
                        "--checkpoint", str(ckpt / "retrieval"), "--segment-seconds", "60", "--no-progress"],
                       env=env, check=True)
    return data, ckpt / "qa", video


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def search_latencies(base: str, n: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client(base_url=base, timeout=60) as c:
        for i in range(n):
            start = time.perf_counter()
            r = c.post("/search", json={"query": f"a test pattern {i}", "top_k": 5})
            out.append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200, r.text
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--qa-clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench-qa-load")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import httpx

    data, qa, video = make_library(args.workdir, args.minutes, args.height)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    env.update(ALPRO_QA_CHECKPOINT=str(qa), ALPRO_QA_CACHE_MB="0")
    server = subprocess.Popen([str(Path(sys.executable).parent / "alpro-serve"), "--data-dir", str(data), "--port",
                               str(port), "--no-access-log", "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("alpro-serve did not become ready")
            time.sleep(0.2)
        video_id = httpx.post(f"{base}/search", json={"query": "x", "top_k": 1}).json()["results"][0]["video_id"]
        idle = search_latencies(base, args.requests)
        stop = threading.Event()
        qa_results: list[tuple[int, float]] = []

        def hammer() -> None:
            with httpx.Client(base_url=base, timeout=300) as c:
                while not stop.is_set():
                    start = time.perf_counter()
                    r = c.post("/qa", json={"video_id": video_id, "question": "what is it?"})
                    qa_results.append((r.status_code, time.perf_counter() - start))
                    if r.status_code == 503:
                        stop.wait(float(r.headers.get("retry-after", "1")))

        clients = [threading.Thread(target=hammer) for _ in range(args.qa_clients)]
        for t in clients:
            t.start()
        time.sleep(1.0)  # let the decodes get going (a warm-up, not synchronisation)
        loaded = search_latencies(base, args.requests)
        stop.set()
        for t in clients:
            t.join(600)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    codes: dict[str, int] = {}
    for code, _ in qa_results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    result = {
        "video": f"{args.minutes:g} min {args.height}p ({video.stat().st_size / 1e6:.0f} MB)",
        "search_idle_p50_ms": round(statistics.median(idle), 2), "search_idle_p99_ms": round(percentile(idle, 0.99), 2),
        "search_loaded_p50_ms": round(statistics.median(loaded), 2),
        "search_loaded_p99_ms": round(percentile(loaded, 0.99), 2),
        "ratio_p50": round(statistics.median(loaded) / statistics.median(idle), 2),
        "qa_clients": args.qa_clients, "qa_statuses": codes,
        "qa_p50_s": round(statistics.median([s for _, s in qa_results]), 2) if qa_results else None,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
