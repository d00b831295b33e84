"""encode_video / encode_text throughput at the base config, against this machine's matmul FLOP/s.

    python -m bench.model_speed [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--video-batch 2] [--json out.json]

Prints clips/s, queries/s, the model's achieved FLOP/s and that as a fraction of a large matmul's
FLOP/s measured in the same run (on a GPU, also as a fraction of the given peak).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model import create_model
from model.alpro import text_encoder_flops, video_encoder_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, min_seconds: float, min_iters: int) -> float:
    """Seconds per call: one warm-up call, then at least min_iters calls and min_seconds."""
    fn()
    sync(device)
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < min_seconds:
        fn()
        iters += 1
    sync(device)
    return (time.perf_counter() - start) / iters


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    per_call = timed(lambda: torch.mm(a, b), device, seconds, 3)
    return 2 * n**3 / per_call


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--video-batch", type=int, default=2)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timing per measurement")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--peak-tflops", type=float, help="device peak for the dtype (GPU), for the ratio")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = create_model("base").to(device).eval()
    config = model.config
    v = config.vision
    video = torch.randn(args.video_batch, v.num_frames, 3, v.img_size, v.img_size, device=device)
    ids = torch.randint(1000, 30000, (args.text_batch, args.text_len), device=device)
    mask = torch.ones_like(ids)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run_video():
        with torch.inference_mode(), autocast:
            model.encode_video(video)

    def run_text(batch: int):
        def call():
            with torch.inference_mode(), autocast:
                model.encode_text(ids[:batch], mask[:batch])
        return call

    # Matmul before and after the model, so a change in machine load shows up as a spread between them.
    mm_before = matmul_flops(device, dtype, args.matmul_size, min(args.seconds, 5.0))
    video_s = timed(run_video, device, args.seconds, 2)
    mm_after = matmul_flops(device, dtype, args.matmul_size, min(args.seconds, 5.0))
    mm = (mm_before + mm_after) / 2
    text1_s = timed(run_text(1), device, min(args.seconds, 3.0), 5)
    textb_s = timed(run_text(args.text_batch), device, min(args.seconds, 3.0), 3)

    clip_flops = video_encoder_flops(config)
    query_flops = text_encoder_flops(config, args.text_len)
    video_flops_s = clip_flops * args.video_batch / video_s
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "dtype": args.dtype, "torch": torch.__version__,
        "matmul_gflops": mm / 1e9, "matmul_gflops_before": mm_before / 1e9, "matmul_gflops_after": mm_after / 1e9,
        "video_batch": args.video_batch, "clips_per_s": args.video_batch / video_s,
        "clip_gflop": clip_flops / 1e9, "video_gflops": video_flops_s / 1e9,
        "video_fraction_of_matmul": video_flops_s / mm,
        "queries_per_s_batch1": 1 / text1_s, "query_ms_batch1": text1_s * 1e3,
        f"queries_per_s_batch{args.text_batch}": args.text_batch / textb_s,
        "text_gflops_batched": query_flops * args.text_batch / textb_s / 1e9,
    }
    if args.peak_tflops:
        result["video_fraction_of_peak"] = video_flops_s / (args.peak_tflops * 1e12)
    for key, value in result.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
