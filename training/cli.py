"""`alpro-train`: pre-training and fine-tuning from a YAML config.

    alpro-train pretrain-prompter  --config configs/pretrain_prompter.yaml
    alpro-train pretrain           --config configs/pretrain.yaml --set model.prompter=runs/prompter/final
    alpro-train pretrain           --config configs/demo.yaml --set optim.lr=2e-4 --set train.max_steps=600
    alpro-train finetune-qa        --config configs/demo_qa.yaml --resume auto
    torchrun --nproc-per-node 8 -m training finetune-retrieval --config configs/msrvtt_ret.yaml

`--set key=value` takes dotted keys (`train.batch_size=16`, `model.overrides.num_frames=8`); values are
YAML (`loss.pem_area=[0.3,0.5]`). The resolved config is written to OUTPUT/config.yaml and beside every
checkpoint. Prints a JSON summary (paths of the final and best checkpoints, steps, time, skipped records).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

# Before torch loads OpenMP: spinning worker threads stall badly when the cores are shared (measured on
# 2 cores at load 10: 35-42 s per step spinning, 2-8 s passive). Export OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import TASKS, TrainConfigError, load_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpro-train", description="ALPRO pre-training and fine-tuning.")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value by dotted key; repeatable")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint directory, or (no value / 'auto') from the newest "
                             "periodic checkpoint in the output directory")
    parser.add_argument("--output-dir", help="shortcut for --set train.output_dir=...")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import rank, shutdown_distributed

    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    try:
        config = load_config(args.config, overrides, task=args.task)
    except TrainConfigError as e:
        print(f"alpro-train: error: {e}", file=sys.stderr)
        return 2
    from settings import SettingsError

    from .environment import read_environment, resolve_named_checkpoints

    try:
        env = read_environment()
        config = resolve_named_checkpoints(config, env)
    except (SettingsError, ValueError) as e:  # a bad ALPRO_* value, or a released checkpoint that cannot be had
        print(f"alpro-train: error: {e}", file=sys.stderr)
        return 2
    from .trainer import train

    try:
        result = train(config, resume=args.resume, device=env.device)
    finally:
        is_main = rank() == 0
        shutdown_distributed()
    if is_main:
        print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
