"""encode_video / encode_text throughput at the base config, against this machine's matmul FLOP/s.

    python -m bench.model_speed [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--video-batch 2] [--json out.json]
    python -m bench.model_speed --precision fp32,int8 [--checkpoint DIR | --bert-dir DIR] [--videos DIR]

Prints clips/s, queries/s, the model's achieved FLOP/s and that as a fraction of a large matmul's
FLOP/s measured in the same run (on a GPU, also as a fraction of the given peak).

With --precision (CPU): the fp32 model and its int8 copy (model.quantize) timed in turns in the same process,
so a change in machine load hits both alike; clips/s and queries/s at batch 1 per precision, their ratio to
fp32, and the cosine of each precision's embeddings with fp32's on real decoded clips and captions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from model import AlproModel, Tokenizer, create_model, create_model_from_pretrained, load_pretrained, load_video
from model.alpro import text_encoder_flops, video_encoder_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", "int8")
ROOT = Path(__file__).resolve().parents[1]
# Real clips for the cosine, the first folder that has videos: the demo corpus, else the test fixtures.
VIDEO_DIRS = (ROOT / "demo-data" / "corpus" / "videos", ROOT / "tests" / "fixtures" / "store_v1" / "videos")
CAPTIONS = (
    "a red circle moves from left to right", "two squares bounce off each other", "a person cooking pasta in a kitchen",
    "the blue triangle grows while the green square spins slowly near the top of the frame",
    "what colour is the object that moves right", "dog", "a man rides a bicycle down a busy street at night",
    "a yellow star shrinks and then moves down",
)


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
    parser.add_argument("--device", help="default: cuda when available, else cpu; cpu with --precision")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--video-batch", type=int, default=2)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timing per measurement")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--peak-tflops", type=float, help="device peak for the dtype (GPU), for the ratio")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--precision", help="comma-separated precisions to compare in one run, e.g. fp32,int8 "
                        f"(CPU; from {', '.join(PRECISIONS)}); the first is the reference for ratios and cosines")
    parser.add_argument("--rounds", type=int, default=5, help="--precision: timing rounds; each times one video "
                        "batch and --text-calls single queries per precision, the precisions in turn")
    parser.add_argument("--text-calls", type=int, default=10, help="--precision: batch-1 queries per round")
    parser.add_argument("--videos", type=Path, help="--precision: folder of real videos for the cosine "
                        "(default: demo-data/corpus/videos, else tests/fixtures/store_v1/videos)")
    parser.add_argument("--num-videos", type=int, default=4, help="--precision: clips decoded for the cosine")
    parser.add_argument("--checkpoint", type=Path, help="--precision: a native checkpoint instead of random base")
    parser.add_argument("--bert-dir", type=Path, help="--precision: base sizes with the text encoder (and the "
                        "video width) of this Hugging Face BERT directory, its weights loaded; video random")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.precision or not torch.cuda.is_available() else "cuda"
    if args.precision:
        return compare_precisions(args)

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


def bench_model(args: argparse.Namespace) -> AlproModel:
    """The fp32 model to compare: a checkpoint, base sizes around a BERT directory, or random base."""
    if args.checkpoint:
        return load_pretrained(args.checkpoint)
    if args.bert_dir:
        bert = json.loads((args.bert_dir / "config.json").read_text())
        width, layers = bert["hidden_size"], bert["num_hidden_layers"]
        # every BERT layer a text layer (no fusion layers): encode_text is then exactly the BERT encoder
        return create_model_from_pretrained(
            "base", bert_dir=args.bert_dir, text_hidden_size=width, text_num_layers=layers, text_fusion_layer=layers,
            text_num_heads=bert["num_attention_heads"], text_intermediate_size=bert["intermediate_size"],
            vision_embed_dim=width, vision_num_heads=width // 64)
    return create_model("base")


def real_clips(args: argparse.Namespace, model: AlproModel) -> tuple[torch.Tensor, str]:
    """(N, T, 3, H, W) clips decoded from the first folder with videos, and that folder."""
    folders = [args.videos] if args.videos else [d for d in VIDEO_DIRS if d.is_dir()]
    for folder in folders:
        paths = sorted(folder.glob("*.mp4"))[: args.num_videos]
        if paths:
            return torch.stack([load_video(p, model.config) for p in paths]), str(folder)
    raise SystemExit(f"no .mp4 videos in {[str(f) for f in folders]}: pass --videos DIR")


def interleaved_times(models: dict[str, AlproModel], video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                      rounds: int, text_calls: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call, each call timed alone and the precisions in turn, so that their medians see the same
    machine: a burst of load from another process hits single calls of every precision, not one precision's
    whole measurement."""
    def seconds(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for m in models.values():  # warm-up: first-call allocations, int8 weight packing caches
        m.encode_video(video)
        m.encode_text(ids, mask)
    times: dict[str, dict[str, list[float]]] = {name: {"video": [], "text": []} for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            times[name]["video"].append(seconds(lambda: m.encode_video(video)))
        for _ in range(text_calls):
            for name, m in models.items():
                times[name]["text"].append(seconds(lambda: m.encode_text(ids, mask)))
    return times


def compare_precisions(args: argparse.Namespace) -> dict:
    """Time the precisions in turn in one process; cosine of each with the first on real clips and captions."""
    from model.quantize import quantize_encoders

    names = [p.strip() for p in args.precision.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PRECISIONS))
    if unknown or not names:
        raise SystemExit(f"--precision: unknown {unknown or names}; known: {', '.join(PRECISIONS)}")
    if args.device != "cpu":
        raise SystemExit("--precision compares CPU precisions (int8 is CPU only): pass --device cpu")
    torch.manual_seed(0)
    fp32 = bench_model(args).eval()
    models = {name: quantize_encoders(fp32) if name == "int8" else fp32 for name in names}
    config = fp32.config
    clips, source = real_clips(args, fp32)
    captions = Tokenizer.from_config(config)(list(CAPTIONS))
    length = min(args.text_len, config.text.max_position_embeddings)
    video = clips[: args.video_batch]
    if len(video) < args.video_batch:  # fewer real clips than the batch: repeat them
        video = video.repeat((args.video_batch + len(video) - 1) // len(video), 1, 1, 1, 1)[: args.video_batch]
    ids = torch.randint(1000, 30000, (1, length))
    mask = torch.ones_like(ids)

    with torch.inference_mode():
        embeddings = {name: (torch.cat([m.encode_video(c) for c in clips.split(args.video_batch)]),
                             m.encode_text(*captions)) for name, m in models.items()}
        times = interleaved_times(models, video, ids, mask, args.rounds, args.text_calls)
    ref = names[0]
    ref_video, ref_text = statistics.median(times[ref]["video"]), statistics.median(times[ref]["text"])
    result: dict = {"device": f"cpu x{torch.get_num_threads()}", "torch": torch.__version__,
                    "quantized_engine": torch.backends.quantized.engine,
                    "model": str(args.checkpoint or args.bert_dir or "base (random init)"),
                    "video_batch": args.video_batch, "text_len": length, "rounds": args.rounds,
                    "text_calls": args.rounds * args.text_calls,
                    "cosine_clips": len(clips), "cosine_videos": source, "cosine_captions": len(CAPTIONS)}
    for name in names:
        video_s, text_s = statistics.median(times[name]["video"]), statistics.median(times[name]["text"])
        video_cos = (embeddings[name][0] * embeddings[ref][0]).sum(-1)
        text_cos = (embeddings[name][1] * embeddings[ref][1]).sum(-1)
        both = torch.cat([video_cos, text_cos])
        result[name] = {
            "video_clips_per_s": args.video_batch / video_s, "text_queries_per_s_b1": 1 / text_s,
            "video_speedup": ref_video / video_s, "text_speedup_b1": ref_text / text_s,
            "cosine_min": float(both.min()), "cosine_mean": float(both.mean()),
            "video_cosine_min": float(video_cos.min()), "video_cosine_mean": float(video_cos.mean()),
            "text_cosine_min": float(text_cos.min()), "text_cosine_mean": float(text_cos.mean()),
        }
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"{k:>28}: {v:.5f}" if "cosine" in k else f"{k:>28}: {v:.4g}")
        else:
            print(f"{key:>28}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
