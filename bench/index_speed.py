"""Indexer throughput: videos/s end to end and per stage (decode, encode, write) on generated libraries.

    python -m bench.index_speed                      # 200 short + 3 long videos, base model (random weights)
    python -m bench.index_speed --videos 40 --long-videos 1 --json

Two libraries are generated (h264, 320x240, 30 fps): `--videos` short clips of `--short-seconds` and
`--long-videos` videos of `--long-seconds` (several segments each). Each is indexed from scratch into a
fresh data dir with the real pipeline; then the short library is indexed again (incremental: nothing
decoded). Besides the stage times of the run itself, each stage's capacity is measured alone (the reader
with its worker processes and no model; the model on one batch of clips), which says which stage bounds
the pipeline and how much of the bound (the slower stage's rate, the model's measured inside the run) the
pipeline reaches. `encode idle` is the fraction of the run
the model sat waiting for decoded clips: the pipeline's idle-wait on the slower stage when decoding is
the slower one, pure overhead when encoding is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

import model
from indexer.embedder import Embedder, resolve_device
from indexer.pipeline import run_index
from indexer.reader import ReaderOptions, VideoReaderDataset, WorkItem, default_num_workers
from indexer.settings import IndexSettings

logger = logging.getLogger(__name__)


def write_clip(path: Path, seconds: float, seed: int, width: int = 320, height: int = 240, fps: int = 30) -> Path:
    """A real h264 file with moving, seed-specific content (every file distinct)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky texture codecs compress like video
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(int(seconds * fps)):
            frame = np.roll(base, shift=(i * 2, i * 3), axis=(0, 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_library(root: Path, count: int, seconds: float, seed: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = root / f"v{i:04d}.mp4"
        if not path.exists():
            write_clip(path, seconds, seed + i)
    return root


def decode_capacity(library: Path, config: model.AlproConfig, segment_seconds: float, workers: int) -> dict[str, float]:
    """The reader alone (its worker processes, no model): videos/s and clips/s it can deliver."""
    paths = sorted(library.glob("*.mp4"))
    items = [WorkItem(i, str(i), str(p)) for i, p in enumerate(paths)]
    options = ReaderOptions.from_config(config, segment_seconds)
    loader = DataLoader(VideoReaderDataset(items, options), batch_size=None, num_workers=workers,
                        prefetch_factor=2 if workers else None, in_order=False)
    start = time.perf_counter()
    clips = sum(chunk.num_clips for chunk in loader)
    wall = time.perf_counter() - start
    return {"videos_per_s": len(items) / wall, "clips_per_s": clips / wall, "wall_s": wall}


def encode_capacity(net: model.AlproModel, batch_size: int, device: torch.device, repeats: int = 2) -> dict[str, float]:
    """The embedder alone on random uint8 clips: clips/s."""
    cfg = net.config
    embedder = Embedder(net, device)
    clips = torch.randint(0, 256, (batch_size, cfg.num_frames, cfg.img_size, cfg.img_size, 3), dtype=torch.uint8)
    embedder.encode(clips)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        embedder.encode(clips)
    wall = time.perf_counter() - start
    return {"clips_per_s": repeats * batch_size / wall, "s_per_clip": wall / (repeats * batch_size)}


def index_once(library: Path, data: Path, checkpoint: Path, net: model.AlproModel, args) -> dict[str, Any]:
    settings = IndexSettings(videos_dir=library, data_dir=data, checkpoint=checkpoint, num_workers=args.workers,
                             batch_size=args.batch_size, segment_seconds=args.segment_seconds,
                             progress=not args.no_progress, device=args.device)
    start = time.perf_counter()
    summary = run_index(settings, model=net)
    out = summary.to_dict()
    out["wall_s"] = time.perf_counter() - start
    return out


def report(name: str, run: dict[str, Any], decode: dict[str, float], encode: dict[str, float]) -> list[str]:
    t = run["timings"]
    p = run["pipeline"]
    clips = run["encoded_clips"]
    # the model's rate inside the run (not the separate measurement): other load on the machine drifts
    in_run_encode = clips / t["encode"] if t["encode"] > 0 else float("inf")
    bound_clips_per_s = min(decode["clips_per_s"], in_run_encode)
    return [
        f"{name}: {run['decoded']} videos, {clips} clips in {t['pipeline']:.1f} s -> {run['videos_per_s']:.3f} videos/s, "
        f"{p['clips_per_s']:.3f} clips/s (end to end incl. model load, publish: {run['wall_s']:.1f} s)",
        f"  stage time: decode {t['decode']:.1f} s (worker-s, {p['num_workers']} workers), encode {t['encode']:.1f} s, "
        f"write {t['write']:.1f} s, publish {t['publish']:.2f} s",
        f"  stage capacity alone: decode {decode['clips_per_s']:.2f} clips/s ({decode['videos_per_s']:.2f} videos/s), "
        f"encode {encode['clips_per_s']:.3f} clips/s ({encode['s_per_clip']:.2f} s/clip)",
        f"  bound by {'encode' if in_run_encode < decode['clips_per_s'] else 'decode'} "
        f"({in_run_encode:.3f} clips/s in the run); pipeline reaches "
        f"{p['clips_per_s'] / bound_clips_per_s:.0%} of it; encoder idle {p['encode_idle_fraction']:.1%} of the run, "
        f"utilisation {p['utilisation']}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=200, help="short videos in the first library")
    parser.add_argument("--short-seconds", type=float, default=3.0)
    parser.add_argument("--long-videos", type=int, default=3)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--preset", default="base", help="model preset (random weights)")
    parser.add_argument("--num-frames", type=int, help="override the preset's frames per clip")
    parser.add_argument("--img-size", type=int, help="override the preset's image size")
    parser.add_argument("--batch-size", type=int, help="clips per model call (indexer default)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (indexer default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", type=Path, help="keep libraries here (reused between runs)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="index_speed_"))
    overrides = {k: v for k, v in (("num_frames", args.num_frames), ("img_size", args.img_size)) if v}
    net = model.create_model(args.preset, **overrides)
    checkpoint = net.save_pretrained(work / f"ckpt-{args.preset}")
    device = resolve_device(args.device)
    batch_size = args.batch_size or (32 if device.type == "cuda" else 4)
    workers = default_num_workers() if args.workers is None else args.workers
    cfg = net.config

    t = time.perf_counter()
    short = make_library(work / "short", args.videos, args.short_seconds, seed=0)
    long = make_library(work / "long", args.long_videos, args.long_seconds, seed=10_000)
    generate_s = time.perf_counter() - t

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "config": {"preset": args.preset, "num_frames": cfg.num_frames, "img_size": cfg.img_size,
                   "batch_size": batch_size, "workers": workers, "videos": args.videos,
                   "short_seconds": args.short_seconds, "long_videos": args.long_videos,
                   "long_seconds": args.long_seconds, "segment_seconds": args.segment_seconds},
        "generate_s": generate_s,
    }
    results["encode_capacity"] = encode_capacity(net, batch_size, device)
    lines = [f"machine: {results['machine']}", f"config: {results['config']}"]
    for name, library in (("short", short), ("long", long)):
        if not any(library.iterdir()):
            continue
        decode = decode_capacity(library, cfg, args.segment_seconds, workers)
        run = index_once(library, work / f"data-{name}-{time.time_ns()}", checkpoint, net, args)
        results[name] = {"run": run, "decode_capacity": decode}
        lines += report(name, run, decode, results["encode_capacity"])
    # incremental: the short library again into the same data dir as its first run
    data_dirs = sorted(work.glob("data-short-*"))
    if data_dirs:
        rerun = index_once(short, data_dirs[-1], checkpoint, net, args)
        results["short_rerun"] = {"wall_s": rerun["wall_s"], "decoded": rerun["decoded"],
                                  "unchanged": rerun["unchanged"]}
        lines.append(f"short, second run: {rerun['unchanged']} unchanged, {rerun['decoded']} decoded, "
                     f"{rerun['wall_s']:.2f} s")
    if args.json:
        print(json.dumps(results, default=float))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
