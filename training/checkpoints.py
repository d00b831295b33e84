"""Training checkpoints: the native model directory (model.safetensors + config.json, loadable by the
indexer and the service), the resolved training config beside it, and - for periodic checkpoints - what
`--resume` needs to continue exactly: optimizer, scheduler, grad scaler, step and data position, and
every process's RNG states.

    OUTPUT/checkpoints/step_0000100/   periodic (resumable), the last `keep_last` kept
    OUTPUT/best/                       best validation metric so far (metrics.json beside it)
    OUTPUT/final/                      the weights at the end of the run

Each directory is filled in a hidden stage beside it (every rank's files included), fsynced and renamed into
place (model.install), so a directory that exists is complete; a replaced one (best, final) stays whole until
the new one is in. What a killed save leaves is put back or removed when the next run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from model import AlproModel
from model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict, read_native_config, write_native_files
from model.install import publish_directory, remove_stale_stages, staged_directory

from .config import TrainConfig
from .distributed import barrier, broadcast_object

logger = logging.getLogger(__name__)

TRAIN_CONFIG_NAME = "train_config.yaml"
STATE_NAME = "trainer_state.pt"
STEP_DIR = re.compile(r"^step_(\d+)$")
STAGED_STEP_DIR = re.compile(r"^\.(step_\d+)\..*\.tmp$")  # model.install's temporaries of a step directory


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


def write_model_files(directory: Path, model: AlproModel, config: TrainConfig, files: dict[str, str],
                      metrics: Optional[dict[str, Any]] = None) -> None:
    """Native checkpoint + resolved config (+ extra files, metrics) into the stage `directory`."""
    write_native_files(model, directory)
    config.save(directory / TRAIN_CONFIG_NAME)
    for name, text in files.items():
        (directory / name).write_text(text)
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")


def write_model_dir(directory: Path, model: AlproModel, config: TrainConfig, files: dict[str, str],
                    metrics: Optional[dict[str, Any]] = None) -> Path:
    """`write_model_files` into a stage, renamed into place (replacing an older checkpoint there) when complete;
    one process's call (no collectives: best and final are rank 0's)."""
    directory = Path(directory)
    with staged_directory(directory) as stage:
        write_model_files(stage, model, config, files, metrics)
        publish_directory(stage, directory)
    return directory


@contextlib.contextmanager
def staged_checkpoint(directory: Path, is_main: bool) -> Iterator[Path]:
    """A stage for `directory` that every rank writes into (rank 0 makes it), published by rank 0 once every
    rank has left the block; on an error it is removed and `directory` stays as it was. Every rank calls it."""
    with contextlib.ExitStack() as stack:
        stage = stack.enter_context(staged_directory(directory)) if is_main else None
        stage = Path(broadcast_object(None if stage is None else str(stage)))
        yield stage
        barrier()  # every rank's files are in
        if is_main:
            publish_directory(stage, directory)


def save_training_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler, scaler,
                        state: TrainState) -> None:
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "state": dataclasses.asdict(state)}, directory / STATE_NAME)


def save_rng(directory: Path, rank: int) -> None:
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")


def missing_files(directory: Path) -> list[str]:
    """What the periodic checkpoint `directory` lacks to resume from (nothing when complete). Directories this
    code writes are complete or absent; older writers added the training state files after the rename."""
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME, STATE_NAME, "rng_rank0.pt")
               if not (directory / name).is_file()]
    if CONFIG_NAME not in missing:
        try:
            read_native_config(directory)
        except ValueError as e:  # CheckpointError and ConfigError are ValueErrors
            missing.append(f"a readable {CONFIG_NAME} ({e})")
    return missing


def _step_candidates(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def step_dirs(output_dir: Path) -> list[Path]:
    """Complete periodic checkpoints, oldest first."""
    return [p for p in _step_candidates(output_dir) if not missing_files(p)]


def prune(output_dir: Path, keep_last: int) -> None:
    dirs = step_dirs(output_dir)
    for old in dirs[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(output_dir: Path) -> None:
    """Put back or remove what killed saves left in the run's directory (rank 0, before anything is written)."""
    output_dir = Path(output_dir)
    root = output_dir / "checkpoints"
    names = {m.group(1) for p in root.iterdir() if (m := STAGED_STEP_DIR.match(p.name))} if root.is_dir() else set()
    for directory in [root / name for name in sorted(names)] + [output_dir / "best", output_dir / "final"]:
        remove_stale_stages(directory)


def resolve_resume(resume: str, output_dir: Path) -> Optional[Path]:
    """`auto`: the newest complete periodic checkpoint of the run (None when there is none), skipping incomplete
    ones with a warning; else the given dir, which must be complete."""
    if resume == "auto":
        for directory in reversed(_step_candidates(output_dir)):
            missing = missing_files(directory)
            if not missing:
                return directory
            logger.warning("--resume auto skips %s: incomplete, without %s (a save that did not finish)",
                           directory, ", ".join(missing))
        return None
    path = Path(resume)
    missing = missing_files(path)
    if missing:
        raise FileNotFoundError(f"{path} is not a complete resumable checkpoint: without {', '.join(missing)}")
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
