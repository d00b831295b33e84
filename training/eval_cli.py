"""`alpro-eval`: retrieval and QA metrics of a checkpoint on annotation files.

    alpro-eval retrieval --checkpoint runs/demo/best --annotations corpus/annotations/test.jsonl \
        --video-root corpus --output metrics.json [--rerank-k 16]
    alpro-eval qa --checkpoint runs/demo_qa/best --annotations corpus/annotations/qa_test.jsonl \
        --video-root corpus --output metrics.json

Retrieval writes r1, r5, r10, median_rank, mean_rank (text->video, VTC) at the top level, and the same
for t2v / v2t with VTC only and with VTM re-ranking of the VTC top-k (t2v_rerank, v2t_rerank). QA writes
accuracy (overall), per_type and mean_per_type. Evaluation uses the checkpoint's own pre-processing
(uniform sampling, size, normalisation, max_text_len). Official .pt checkpoints need --bert-config
(and --answers for QA).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see training.cli)

import torch  # noqa: E402

from model import load_model  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpro-eval", description="Evaluate an ALPRO checkpoint.")
    parser.add_argument("task", choices=("retrieval", "qa"))
    parser.add_argument("--checkpoint", required=True, help="native checkpoint directory or official .pt file")
    parser.add_argument("--bert-config", help="BERT config JSON for an official .pt checkpoint")
    parser.add_argument("--answers", help="QA: {answer: index} JSON for an official checkpoint without answers")
    parser.add_argument("--num-frames", type=int, help="frames per clip (official checkpoints: 16 for QA)")
    parser.add_argument("--annotations", required=True, nargs="+", help="JSON Lines annotation file(s)")
    parser.add_argument("--video-root", help="directory the annotation paths are relative to")
    parser.add_argument("--output", help="write the metrics JSON here (also printed)")
    parser.add_argument("--rerank-k", type=int, default=16, help="retrieval: VTM re-ranks the VTC top-k")
    parser.add_argument("--no-rerank", action="store_true", help="retrieval: VTC scores only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    parser.add_argument("--int8", action="store_true", help="run the encoders' Linear layers in int8 (CPU only; "
                        "model/quantize.py), as ALPRO_PRECISION=int8 does in alpro-index and alpro-serve")
    parser.add_argument("--predictions", action="store_true", help="QA: include every prediction in the output")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .data import read_answer_vocab, read_qa, read_video_text
    from .evaluate import evaluate_qa, evaluate_retrieval

    overrides = {}
    if args.num_frames:
        overrides["num_frames"] = args.num_frames
    if args.answers:
        vocab = read_answer_vocab(args.answers)
        overrides["answers"] = tuple(sorted(vocab, key=vocab.get))
    model = load_model(args.checkpoint, args.bert_config, **overrides).to(args.device).eval()
    if args.int8:
        from model.quantize import QuantizationError, quantize_encoders

        try:
            model = quantize_encoders(model, inplace=True)
        except QuantizationError as e:
            print(f"alpro-eval: --int8: {e}", file=sys.stderr)
            return 2
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if args.task == "retrieval":
        records = read_video_text(args.annotations, args.video_root)
        metrics = evaluate_retrieval(model, records, args.rerank_k, args.batch_size, args.workers, amp,
                                     rerank=not args.no_rerank)
    else:
        records = read_qa(args.annotations, args.video_root)
        metrics = evaluate_qa(model, records, args.batch_size, args.workers, amp)
        if not args.predictions:
            metrics.pop("predictions")
    metrics["checkpoint"] = str(args.checkpoint)
    metrics["precision"] = "int8" if args.int8 else args.amp if args.amp != "off" else "fp32"
    text = json.dumps(metrics, indent=1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
