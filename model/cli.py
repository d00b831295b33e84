"""`alpro-convert`: official ALPRO checkpoints <-> our native format."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .checkpoint import (CheckpointError, load_official_checkpoint, load_pretrained, official_bert_config,
                         save_official_checkpoint)
from .config import ConfigError

logger = logging.getLogger(__name__)


def _answers(path: Path | None) -> tuple[str, ...] | None:
    """Answer strings by index from the reference's train_ans2label.json ({answer: index})."""
    if path is None:
        return None
    mapping = json.loads(path.read_text())
    answers = [""] * (max(mapping.values()) + 1)
    for answer, index in mapping.items():
        answers[index] = answer
    return tuple(answers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpro-convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    to_native = sub.add_parser("to-native", help="official .pt (reference or LAVIS) -> native directory")
    to_native.add_argument("checkpoint", type=Path, help="official model_step_best.pt / alpro_*.pt")
    to_native.add_argument("output", type=Path, help="native checkpoint directory to write")
    to_native.add_argument("--bert-config", type=Path, required=True, help="the release's model_config.json")
    to_native.add_argument("--vision-num-heads", type=int, default=12, help="TimeSformer heads (default 12)")
    to_native.add_argument("--num-frames", type=int, help="resize time embeddings to this many frames")
    to_native.add_argument("--img-size", type=int, help="resize position embeddings to this image size")
    to_native.add_argument("--max-text-len", type=int, help="tokens per text (reference: 40 MSRVTT, 50 DiDeMo)")
    to_native.add_argument("--answers", type=Path, help="train_ans2label.json of a QA checkpoint")
    to_official = sub.add_parser("to-official", help="native directory -> official .pt + model_config.json")
    to_official.add_argument("checkpoint", type=Path, help="native checkpoint directory")
    to_official.add_argument("output", type=Path, help="official .pt file to write (config JSON beside it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "to-native":
            overrides = {"vision_num_heads": args.vision_num_heads}
            for name in ("num_frames", "img_size", "max_text_len"):
                if getattr(args, name) is not None:
                    overrides[name] = getattr(args, name)
            answers = _answers(args.answers)
            if answers is not None:
                overrides["answers"] = answers
            model = load_official_checkpoint(args.checkpoint, args.bert_config, **overrides)
            model.save_pretrained(args.output)
            logger.info("wrote %s (%d parameters)", args.output, model.num_parameters())
        else:
            model = load_pretrained(args.checkpoint)
            save_official_checkpoint(model, args.output)
            config_path = args.output.with_name("model_config.json")
            config_path.write_text(json.dumps(official_bert_config(model.config), indent=2) + "\n")
            logger.info("wrote %s and %s", args.output, config_path)
    except (CheckpointError, ConfigError, FileNotFoundError, OSError) as e:
        print(f"alpro-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
