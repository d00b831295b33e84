"""The training loop: DDP, AMP, gradient accumulation, AdamW + warm-up/linear decay, clipping, logging,
periodic / best checkpoints and exact resume (ALPRO_REFERENCE.md "Pre-training in the reference").

Exact resume: a sample is a function of (seed, epoch, index), the VTM negative generator of
(seed, step, micro-step), and dropout draws from the process RNG, which checkpoints save per rank;
so a run stopped at step k (`train.stop_after`) and resumed ends with the weights of an uninterrupted
run. Time-budgeted runs (`train.max_minutes`) fix their length after measuring their speed and are not
reproducible step for step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoints import (TrainState, load_training_checkpoint, prune, remove_stale_temporaries, resolve_resume,
                          save_rng, save_training_state, staged_checkpoint, write_model_dir, write_model_files)
from .config import TrainConfig
from .data import EpochBatchSampler, collate
from .distributed import (DistInfo, all_reduce_mean, all_reduce_sum, barrier, broadcast_object, init_distributed)
from .optim import build_optimizer, build_scheduler
from .tasks import LossModule, TaskSetup, prepare

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    task: str
    output_dir: str
    steps: int
    final: Optional[str]
    best: Optional[str]
    best_metric: str
    best_value: Optional[float]
    train_seconds: float
    skipped_records: int
    skipped_files: list[str] = field(default_factory=list)
    stopped_early: bool = False
    last_log: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """None (fp32), bf16 or fp16. `auto`: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU
    (bf16 autocast is about 6x slower than fp32 on CPUs without bf16 instructions)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def step_seed(seed: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and render; the training process owns the cores


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class JsonlLog:
    """Rank 0's JSON Lines log (and TensorBoard events when asked for and installed)."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = path
        self.tb = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(path.parent / "tensorboard"))
                except ImportError:
                    logger.warning("train.tensorboard is on but tensorboard is not installed; JSONL only")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, row.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    def __init__(self, config: TrainConfig, info: Optional[DistInfo] = None, device: str = "auto") -> None:
        self.config = config
        self.info = info or init_distributed(device, timeout_s=config.train.dist_timeout_s)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.out = Path(config.train.output_dir)
        self.setup: TaskSetup = prepare(config)
        self.model = self.setup.model.to(self.info.device)
        if self.info.enabled and self.info.device.type == "cuda":
            # BatchNorm (the conv patch stem) normalises over the global batch, as one process would; PyTorch's
            # SyncBatchNorm runs on GPUs only, so CPU processes keep per-process batch statistics.
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self._train_mode()
        self.model.set_grad_checkpointing(config.model.grad_checkpointing)
        self.loss = LossModule(self.model, config.task, self.setup.loss_weights, config.loss,
                               cache_video_tokens=config.train.cache_video_tokens,
                               pool_video=self.setup.pool_video)
        if self.info.enabled:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.loss, device_ids=ids, broadcast_buffers=False)
        else:
            self.wrapped = self.loss
        self.amp_dtype = resolve_amp(config.train.amp, self.info.device)
        run = config.train
        self.sampler = EpochBatchSampler(len(self.setup.train_dataset), run.batch_size, run.seed,
                                         self.info.rank, self.info.world_size,
                                         group=getattr(self.setup.train_dataset, "group", 1))
        workers = config.data.num_workers
        self.loader = DataLoader(self.setup.train_dataset, batch_sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate, pin_memory=self.info.device.type == "cuda",
                                 persistent_workers=workers > 0, worker_init_fn=_worker_init if workers else None,
                                 generator=torch.Generator().manual_seed(run.seed),
                                 prefetch_factor=4 if workers else None)
        self.optimizer = build_optimizer(self.model, config.optim, self.setup.new_heads)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.state = TrainState()
        self._set_length()
        self.scheduler = build_scheduler(self.optimizer, self.state.total_steps, config.optim,
                                         self.state.warmup_steps)
        self.scaler = torch.amp.GradScaler(self.info.device.type) if self.amp_dtype == torch.float16 else None
        self.log = JsonlLog(self.out / "log.jsonl", self.info.is_main, run.tensorboard)
        self.skipped_files: set[str] = set()

    # -- length -------------------------------------------------------------------------------------------

    def _set_length(self) -> None:
        run, optim = self.config.train, self.config.optim
        per_epoch = self.sampler.batches_per_epoch
        if run.max_steps > 0:
            total = run.max_steps
        elif run.max_minutes > 0:
            total = 10**9  # fixed after `time_probe_steps` steps
            self.state.schedule_fixed = False
        else:
            total = max(1, math.ceil(run.epochs * per_epoch / run.grad_accum))
        self.state.total_steps = total
        self.state.warmup_steps = (5 * run.time_probe_steps if not self.state.schedule_fixed
                                   else int(round(total * optim.warmup_ratio)))

    def _update_time_budget(self, loop_seconds: float) -> None:
        """Time-budgeted runs: re-estimate the total steps from the measured speed every `time_probe_steps`
        steps (the first estimate also fixes the warm-up) and stop once the budget is spent; rank 0 decides."""
        run = self.config.train
        s = self.state
        if run.max_minutes <= 0 or run.max_steps > 0:
            return
        budget = run.max_minutes * 60.0
        estimate = s.step % run.time_probe_steps == 0
        if not estimate and self.info.world_size == 1 and loop_seconds < budget:
            return
        decision = None
        if self.info.is_main:
            total, warmup = s.total_steps, s.warmup_steps
            if loop_seconds >= budget:
                total = s.step
            elif estimate:
                per_step = loop_seconds / max(s.step, 1)
                total = max(s.step + 1, s.step + int((budget - loop_seconds) / per_step))
                if not s.schedule_fixed:
                    warmup = max(s.step, int(round(total * self.config.optim.warmup_ratio)))
            decision = (total, warmup, s.schedule_fixed or estimate)
        s.total_steps, s.warmup_steps, s.schedule_fixed = broadcast_object(decision)
        for fn in self.scheduler.lr_lambdas:
            fn.total, fn.warmup = s.total_steps, s.warmup_steps

    # -- data ---------------------------------------------------------------------------------------------

    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        """The endless stream of this rank's micro-batches from the state's position; keeps the position."""
        s = self.state
        self.sampler.set_epoch(s.epoch, s.batch_in_epoch)
        for batch in self.loader:
            s.batch_in_epoch += 1
            if s.batch_in_epoch >= self.sampler.batches_per_epoch:
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            yield batch

    # -- checkpoints --------------------------------------------------------------------------------------

    def _save_periodic(self) -> Path:
        directory = self.out / "checkpoints" / f"step_{self.state.step:07d}"
        with staged_checkpoint(directory, self.info.is_main) as stage:  # appears with every file in it
            if self.info.is_main:
                self._prepare_save()
                write_model_files(stage, self.model, self.config, self.setup.files)
                save_training_state(stage, self.optimizer, self.scheduler, self.scaler, self.state)
            save_rng(stage, self.info.rank)
        if self.info.is_main:
            prune(self.out, self.config.train.keep_last)
        return directory

    def _prepare_save(self) -> None:
        if self.setup.before_save is not None:
            self.setup.before_save(self.model)

    def _train_mode(self) -> None:
        """Training mode, but the prompter (a frozen teacher: no dropout) and frozen BatchNorm layers (the conv
        patch stem of encoders frozen by optim.encoder_lr_mult 0) stay in eval mode: a frozen encoder keeps
        its running statistics and computes what it computed before training."""
        self.model.train()
        if self.model.prompter is not None:
            self.model.prompter.eval()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()):
                module.eval()

    def _validate(self) -> Optional[dict[str, Any]]:
        if self.setup.evaluate is None:
            return None
        metrics = None
        if self.info.is_main:
            start = time.perf_counter()
            metrics = self.setup.evaluate(self.model)
            metrics.pop("predictions", None)
            self._train_mode()
            name = self.setup.best_metric
            if name not in metrics:
                raise KeyError(f"best_metric {name!r} is not among the validation metrics {sorted(metrics)}")
            value = float(metrics[name])
            improved = self.state.best_value is None or value > self.state.best_value
            self.log.write({"step": self.state.step, "eval": metrics, "eval_seconds": time.perf_counter() - start})
            if improved:
                self.state.best_value, self.state.best_step = value, self.state.step
                self._prepare_save()
                write_model_dir(self.out / "best", self.model, self.config, self.setup.files,
                                {"step": self.state.step, **metrics})
            logger.info("step %d: %s = %.2f (best %.2f at step %d)", self.state.step, name, value,
                        self.state.best_value, self.state.best_step)
        best = broadcast_object((self.state.best_value, self.state.best_step))
        self.state.best_value, self.state.best_step = best
        barrier()
        return metrics

    # -- the loop -----------------------------------------------------------------------------------------

    def fit(self, resume: Optional[str] = None) -> TrainResult:
        run = self.config.train
        info = self.info
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)  # before resolving --resume: an interrupted replacement goes back
            self.config.save(self.out / "config.yaml")
        barrier()
        if resume:
            path = resolve_resume(resume, self.out)
            if path is not None:
                self.state = load_training_checkpoint(path, self.model, self.optimizer, self.scheduler,
                                                      self.scaler, info.rank)
                logger.info("resumed from %s at step %d", path, self.state.step)
        s = self.state
        accum = run.grad_accum
        global_batch = run.batch_size * info.world_size * accum
        batches = self._micro_batches()
        sums: dict[str, float] = defaultdict(float)
        count = 0
        last_log: dict[str, Any] = {}
        log_time, log_samples = time.perf_counter(), 0
        skipped_since_log = 0
        stopped = False
        bar = None
        if run.progress and info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.total_steps if s.schedule_fixed else None, initial=s.step, desc=self.config.task,
                       dynamic_ncols=True)
        loop_start = time.perf_counter() - s.train_seconds
        while s.step < s.total_steps:
            self.optimizer.zero_grad(set_to_none=True)
            self.loss.progress = s.step / max(s.total_steps, 1)
            for micro in range(accum):
                batch = next(batches)
                skipped_since_log += len(batch["skipped"])
                if info.is_main:
                    self.skipped_files.update(batch["skipped"])
                batch = _to_device(batch, info.device)
                generator = torch.Generator().manual_seed(step_seed(run.seed, s.step, micro))
                sync = (self.wrapped.no_sync() if info.enabled and micro < accum - 1 else contextlib.nullcontext())
                with sync:
                    with torch.autocast(info.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        objective, terms = self.wrapped(batch, generator)
                    loss = objective.float() / accum
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                for key, value in terms.items():
                    sums[key] += float(value) / accum
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            clip = self.config.optim.grad_clip
            norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            s.step += 1
            s.samples += global_batch
            count += 1
            sums["grad_norm"] += float(norm)
            log_samples += global_batch
            s.train_seconds = time.perf_counter() - loop_start
            self._update_time_budget(s.train_seconds)
            if bar is not None:
                if bar.total != s.total_steps and s.schedule_fixed:
                    bar.total = s.total_steps
                bar.update(1)
            if s.step % run.log_every == 0 or s.step >= s.total_steps:
                means = all_reduce_mean({k: v / count for k, v in sums.items()}, info.device)
                skipped = int(all_reduce_sum(torch.tensor(skipped_since_log, device=info.device)).item())
                s.skipped_records += skipped
                now = time.perf_counter()
                rate = log_samples / max(now - log_time, 1e-9)
                total_loss = sum(v * self.setup.loss_weights.get(k, 0.0) for k, v in means.items())
                last_log = {"step": s.step, "epoch": s.epoch + s.batch_in_epoch / self.sampler.batches_per_epoch,
                            "lr": self.scheduler.get_last_lr()[0], "loss": total_loss, **means,
                            "samples_per_s": rate, "elapsed_s": s.train_seconds, "skipped_records": s.skipped_records}
                self.log.write(last_log)
                if bar is not None:
                    bar.set_postfix(loss=f"{total_loss:.3f}", sps=f"{rate:.1f}")
                sums.clear()
                count, log_samples, log_time, skipped_since_log = 0, 0, now, 0
            if run.eval_every and s.step % run.eval_every == 0 and s.step < s.total_steps:
                self._validate()
            if run.ckpt_every and s.step % run.ckpt_every == 0 and s.step < s.total_steps:
                self._save_periodic()
            if run.stop_after and s.step >= run.stop_after and s.step < s.total_steps:
                self._save_periodic()
                stopped = True
                break
        batches.close()  # ends the DataLoader iterator and its workers
        if bar is not None:
            bar.close()
        final = best = None
        if not stopped:
            self._validate()
            if info.is_main:
                self._prepare_save()
                final = str(write_model_dir(self.out / "final", self.model, self.config, self.setup.files))
            if run.ckpt_every:
                self._save_periodic()
            barrier()
            final = final or str(self.out / "final")
            best = str(self.out / "best") if (self.out / "best").is_dir() else final
        self.log.close()
        if s.skipped_records:
            logger.warning("%d training records could not be decoded and were skipped (distinct files on rank 0: "
                           "%d)", s.skipped_records, len(self.skipped_files))
        return TrainResult(task=self.config.task, output_dir=str(self.out), steps=s.step, final=final, best=best,
                           best_metric=self.setup.best_metric, best_value=s.best_value,
                           train_seconds=round(s.train_seconds, 2), skipped_records=s.skipped_records,
                           skipped_files=sorted(self.skipped_files)[:100], stopped_early=stopped,
                           last_log=last_log)


def train(config: TrainConfig, resume: Optional[str] = None, device: str = "auto") -> TrainResult:
    """Run one training task to the end (or to `train.stop_after`) on `device` (auto: CUDA when present)."""
    return Trainer(config, device=device).fit(resume)
