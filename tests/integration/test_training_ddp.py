"""Two gloo processes (torchrun) with batch B train the same model as one process with batch 2B.

Pre-training with all four losses (VTC over the all-gathered batch, VTM with hard negatives drawn from
the global batch by a generator both ranks share, MLM masks and PEM boxes drawn per sample), dropout
and stochastic depth off. Losses per step and final weights must agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import AlproModel, Tokenizer
from model.alpro import prompter_config
from model.config import preset_config
from training import synth
from training.prompter import build_prompt_features

ROOT = Path(__file__).resolve().parents[2]
NO_DROPOUT = {"text_hidden_dropout": 0.0, "text_attention_dropout": 0.0, "vision_drop_path_rate": 0.0}


def tiny_prompter(directory: Path, overrides: dict, entities: list[str]) -> Path:
    """A random prompter with real prompt features (deterministic targets are all PEM needs here)."""
    torch.manual_seed(123)
    config = prompter_config(preset_config("tiny", num_entities=len(entities), **overrides))
    model = AlproModel(config)
    build_prompt_features(model, Tokenizer.from_config(config), entities)
    model.save_pretrained(directory)
    return directory


def pretrain_args(out: Path, prompter: Path, batch: int) -> list[str]:
    sets = {"data.source": "synthetic", "data.synth_epoch_clips": 64, "data.num_workers": 0,
            "model.prompter": str(prompter), "train.batch_size": batch, "train.max_steps": 3, "train.log_every": 1,
            "train.progress": "false", "train.seed": 5, "optim.lr": 1e-3, "optim.warmup_ratio": 0.0,
            "train.output_dir": str(out)}
    sets.update({f"model.overrides.{k}": v for k, v in NO_DROPOUT.items()})
    return ["pretrain"] + [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    prompter = tiny_prompter(tmp_path / "prompter", NO_DROPOUT, synth.entity_vocabulary())
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training",
         *pretrain_args(tmp_path / "ddp", prompter, batch=4)])
    run([sys.executable, "-m", "training", *pretrain_args(tmp_path / "single", prompter, batch=8)])

    def losses(run_dir: Path) -> list[dict]:
        return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]

    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [1, 2, 3]
    for a, b in zip(ddp, single):
        for key in ("vtc", "vtm", "mlm", "pem", "loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert ddp[0]["loss"] != ddp[-1]["loss"]  # the steps changed the weights compared below

    w_ddp = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    w_one = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    assert w_ddp.keys() == w_one.keys()
    worst = max(float((w_ddp[k].float() - w_one[k].float()).abs().max()) for k in w_ddp)
    assert worst < 2e-5, worst
