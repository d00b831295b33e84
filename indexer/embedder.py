"""Embedder stage: batched `video_tokens` -> `video_features` calls, GPU (autocast) or CPU (fp32).

Clips arrive as uint8 (B, T, H, W, 3) and are normalised here, on the model's device, with the same
arithmetic as model.preprocess.normalize_frames (/255, - mean, / std, in that order, in float32), so a
GPU run moves 4x fewer bytes over PCIe. The pipeline key names everything that determines a vector:
change any part and cached embeddings no longer apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from model.alpro import AlproModel
from model.quantize import quantize_encoders

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache entry layout or the segmentation rule changes


def pipeline_key(fingerprint: str, segment_seconds: float, sampling: str, precision: str = "fp32") -> str:
    """Short hash of what makes a video's embeddings: checkpoint (config and pre-processing included in its
    fingerprint), segmentation, the precision the encoder ran in and the cache layout. fp32 adds nothing, so
    keys made before the precision counted stay valid."""
    fields = {"fingerprint": fingerprint, "segment_seconds": float(segment_seconds), "sampling": sampling,
              "cache_format": CACHE_FORMAT}
    if precision != "fp32":
        fields["precision"] = precision
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def resolve_device(name: str | None) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype: `auto` is bf16 (or fp16) on CUDA and none (fp32) on the CPU, where bf16 is about 6x
    slower here; an explicit bf16 or fp16 is honoured on either; int8 runs int8 layers, not autocast."""
    if precision in ("fp32", "int8") or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """What an index records of the precision its vectors and tokens were computed in (autocast runs)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def index_precision(device: torch.device, precision: str = "auto") -> str:
    """What an index made on `device` with the `precision` setting records: int8, fp32, bf16 or fp16."""
    return "int8" if precision == "int8" else precision_name(autocast_dtype(device, precision))


@dataclass
class EncodedBatch:
    embeddings: np.ndarray  # float32 (B, D)
    tokens: np.ndarray | None  # float16 (B, 1 + N, D)


class Embedder:
    """Turns uint8 clip batches into L2-normalised embeddings (and optionally token features)."""

    def __init__(self, model: AlproModel, device: torch.device, *, store_tokens: bool = False,
                 precision: str = "auto") -> None:
        self.model = model.to(device).eval()
        if precision == "int8":  # the CPU path: int8 Linear layers in both encoders (model/quantize.py)
            self.model = quantize_encoders(self.model, inplace=True)
        self.device = device
        self.store_tokens = store_tokens
        self.dtype = autocast_dtype(device, precision)
        pre = model.config.preprocess
        self._mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(3, 1, 1)
        self._std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(3, 1, 1)
        self.clips_encoded = 0

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> float32 (B, T, 3, H, W) on the device, normalised."""
        x = clips.to(self.device, non_blocking=True)  # asynchronous from pinned memory
        x = x.permute(0, 1, 4, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
        return x.div_(255.0).sub_(self._mean).div_(self._std)

    @torch.inference_mode()
    def encode(self, clips: torch.Tensor) -> EncodedBatch:
        video = self.normalize(clips)  # (B, T, 3, H, W)
        if self.dtype is not None:
            with torch.autocast(self.device.type, dtype=self.dtype):
                tokens = self.model.video_tokens(video)  # (B, 1 + N, D)
                features = self.model.video_features(tokens)
        else:
            tokens = self.model.video_tokens(video)
            features = self.model.video_features(tokens)
        # re-normalise in fp32: autocast's half-precision projection leaves norms a little off 1
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        self.clips_encoded += int(clips.shape[0])
        return EncodedBatch(
            embeddings=features.cpu().numpy(),
            tokens=tokens.to(torch.float16).cpu().numpy() if self.store_tokens else None,
        )


__all__ = ["EncodedBatch", "Embedder", "autocast_dtype", "index_precision", "pipeline_key", "precision_name",
           "resolve_device"]
