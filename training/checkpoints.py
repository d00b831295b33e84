"""Training checkpoints: the native model directory (model.safetensors + config.json, loadable by the
indexer and the service), the resolved training config beside it, and - for periodic checkpoints - what
`--resume` needs to continue exactly: optimizer, scheduler, grad scaler, step and data position, and
every process's RNG states.

    OUTPUT/checkpoints/step_0000100/   periodic (resumable), the last `keep_last` kept
    OUTPUT/best/                       best validation metric so far (metrics.json beside it)
    OUTPUT/final/                      the weights at the end of the run
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from model import AlproModel
from model.checkpoint import WEIGHTS_NAME, load_state_dict_strict

from .config import TrainConfig

logger = logging.getLogger(__name__)

TRAIN_CONFIG_NAME = "train_config.yaml"
STATE_NAME = "trainer_state.pt"
STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainState:
    """Where a run is: steps done, the next micro-batch's (epoch, batch), best metric, counters."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    total_steps: int = 0
    warmup_steps: int = 0
    best_value: Optional[float] = None
    best_step: int = -1
    skipped_records: int = 0
    train_seconds: float = 0.0
    samples: int = 0
    schedule_fixed: bool = True  # False while a time-budgeted run is still measuring its speed
    history: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_model_dir(directory: Path, model: AlproModel, config: TrainConfig, files: dict[str, str],
                    metrics: Optional[dict[str, Any]] = None) -> Path:
    """Native checkpoint + resolved config (+ extra files, metrics), written to a temp dir then renamed."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    config.save(tmp / TRAIN_CONFIG_NAME)
    for name, text in files.items():
        (tmp / name).write_text(text)
    if metrics is not None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def save_training_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler, scaler,
                        state: TrainState) -> None:
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "state": dataclasses.asdict(state)}, directory / STATE_NAME)


def save_rng(directory: Path, rank: int) -> None:
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")


def step_dirs(output_dir: Path) -> list[Path]:
    """Periodic checkpoints with a training state, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def prune(output_dir: Path, keep_last: int) -> None:
    dirs = step_dirs(output_dir)
    for old in dirs[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(resume: str, output_dir: Path) -> Optional[Path]:
    """`auto`: the newest periodic checkpoint of the run (None when there is none); else the given dir."""
    if resume == "auto":
        dirs = step_dirs(output_dir)
        return dirs[-1] if dirs else None
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a resumable checkpoint (no {STATE_NAME})")
    return path


def load_training_checkpoint(directory: Path, model: AlproModel, optimizer: torch.optim.Optimizer, scheduler,
                             scaler, rank: int) -> TrainState:
    """Restore weights, optimizer, scheduler, scaler and this rank's RNG states; returns the run state."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(directory) / WEIGHTS_NAME), device=str(model.device))
    load_state_dict_strict(model, weights, source=str(directory))
    payload = torch.load(Path(directory) / STATE_NAME, map_location=model.device, weights_only=False)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    rng_file = Path(directory) / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} missing: resume with the same number of processes")
    set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**payload["state"])
