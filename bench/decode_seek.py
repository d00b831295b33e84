"""Decoding one segment of a long video, as /qa and re-ranking do: seconds, and for PyAV the work done.

    python -m bench.decode_seek VIDEO [--window 1190 1200 ...] [--backend pyav|decord|auto]
                                [--frames 8] [--size 224] [--repeat 3] [--json out.json]

It makes no video; a 20-minute 720p one with a key frame every 10 s:
    ffmpeg -f lavfi -i testsrc2=size=1280x720:rate=25 -t 1200 -g 250 -pix_fmt yuv420p long.mp4
Per window (default: the last 10 s): the best of --repeat runs of `load_video(window=...)` (open, decode,
resize, normalise), and for PyAV the frames its decoder put out and the seeks it made.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from model.config import preset_config
from model.decode import open_video, probe_video
from model.preprocess import load_video, sample_frame_indices, window_frame_range


def decoder_work(path: Path, window: tuple[float, float], frames: int, size: int, backend: str) -> dict:
    """Frames decoded and seeks made for one window (PyAV only; empty for decord)."""
    with open_video(path, size=size, backend=backend) as source:
        start, end = window_frame_range(source.info, window)
        indices = sample_frame_indices(source.info.num_frames, frames, "uniform", start=start, end=end)
        list(source.iter_clips([indices]))
        cursor = getattr(source, "_cursor", None)  # the PyAV backend's reader; decord keeps no count
        if cursor is None:
            return {"backend": source.backend}
        return {"backend": source.backend, "frames_decoded": cursor.decoded, "seeks": cursor.seeks}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("--window", type=float, nargs=2, action="append", metavar=("START_S", "END_S"),
                        help="a segment to decode (repeatable); default: the last 10 s")
    parser.add_argument("--backend", default="pyav", choices=("pyav", "decord", "auto"))
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per segment")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    info = probe_video(args.video)
    windows = args.window or [(max(0.0, info.duration_s - 10.0), info.duration_s)]
    config = preset_config("tiny", num_frames=args.frames, img_size=args.size)
    print(f"{args.video}: {info.width}x{info.height} {info.codec}, {info.num_frames} frames, "
          f"{info.duration_s:.1f} s at {info.fps:g} fps")
    results = []
    for window in windows:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            load_video(args.video, config, window=tuple(window), backend=args.backend)
            times.append(time.perf_counter() - start)
        row = {"window": list(window), "best_s": min(times), "times_s": times,
               **decoder_work(args.video, tuple(window), args.frames, args.size, args.backend)}
        work = f", {row['frames_decoded']} frames decoded, {row['seeks']} seeks" if "seeks" in row else ""
        print(f"window {window[0]:g}-{window[1]:g} s ({row['backend']}): best {row['best_s']:.3f} s "
              f"of {args.repeat}{work}")
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps({"video": str(args.video), "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
