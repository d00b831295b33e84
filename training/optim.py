"""AdamW with linear warm-up and linear decay (ALPRO_REFERENCE.md "Pre-training in the reference").

Weight decay is applied to weight matrices only: not to biases, norms, embeddings (word, position and
token-type tables, the video cls/pos/time embeddings) or the temperature. (The reference configures a
weight decay that never reaches its optimiser; here it does.)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .config import OptimSection

logger = logging.getLogger(__name__)

NO_DECAY_NAMES = ("temp", "cls_token", "pos_embed", "time_embed", "embeddings.")


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights (1-D), embeddings and the temperature are not decayed."""
    leaf = name.split(".")[-1]
    return param.ndim < 2 or leaf == "bias" or any(part in name for part in NO_DECAY_NAMES)


def encoder_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter names of the unimodal encoders: the video encoder, text embeddings and text-only layers."""
    fusion = model.config.text.fusion_layer
    return ("visual_encoder.", "text_encoder.embeddings.", *(f"text_encoder.layers.{i}." for i in range(fusion)))


def parameter_groups(model: nn.Module, config: OptimSection, new_heads: tuple[str, ...] = ()) -> list[dict]:
    """Trainable parameters grouped by (no decay, lr multiplier): new heads get head_lr_mult, the unimodal
    encoders encoder_lr_mult, everything else (fusion layers, projections, temp, old heads) the base lr."""
    encoders = encoder_prefixes(model)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(tuple(new_heads)):
            mult = config.head_lr_mult
        elif name.startswith(encoders):
            mult = config.encoder_lr_mult
        else:
            mult = 1.0
        groups.setdefault((no_decay(name, param), mult), []).append(param)
    return [{"params": params, "weight_decay": 0.0 if skip_decay else config.weight_decay, "lr": config.lr * mult}
            for (skip_decay, mult), params in sorted(groups.items())]


def build_optimizer(model: nn.Module, config: OptimSection, new_heads: tuple[str, ...] = ()) -> torch.optim.AdamW:
    groups = parameter_groups(model, config, new_heads)
    # PyTorch's fused AdamW kernel (CPU and CUDA): one pass over all tensors. The default on CPU steps the
    # tensors one at a time in Python (the learning benchmark's model, one thread: 141 ms a step, fused 21).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)


class WarmupLinear:
    """lr multiplier at step s: linear 0 -> 1 over `warmup` steps, then linear 1 -> min_ratio at `total`.

    A callable object (not a closure) so LambdaLR's state_dict saves and restores `total` and `warmup`,
    which a time-budgeted run fixes only after measuring its speed.
    """

    def __init__(self, total: int, warmup: int, min_ratio: float = 0.0) -> None:
        self.total, self.warmup, self.min_ratio = total, warmup, min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        remaining = max(self.total - self.warmup, 1)
        return max(self.min_ratio, self.min_ratio + (1.0 - self.min_ratio) * (1.0 - (step - self.warmup) / remaining))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: OptimSection,
                    warmup_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(total_steps * config.warmup_ratio)) if warmup_steps is None else warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinear(total_steps, warmup, config.min_lr_ratio))
