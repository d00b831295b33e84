"""Video pre-processing shared by training, the indexer and the service (ALPRO_REFERENCE.md "Pre-processing").

Frame sampling follows the reference `_load_video_from_path_decord` (salesforce/ALPRO,
src/datasets/dataset_base.py); frames are resized straight to img x img (aspect ignored, no crop: the
fine-tune and inference rule), scaled to [0, 1] and normalised with the CLIP mean/std of the config.

Where this differs from the reference, on purpose:
- Fewer frames than asked (vlen < num_frames): the reference's "rand"/"headtail" crash and its
  "uniform" returns frame 0 num_frames times; here every strategy returns each frame in order,
  repeated evenly: `start + floor(arange(num_frames) * vlen / num_frames)`.
- Windows (start/end): the reference steps by whole-video length / num_frames even inside a window,
  and "rand" ignores the window; here all strategies sample inside the window, with its length as vlen.
- "headtail" with an odd num_frames: the reference returns num_frames - 1 frames; here the tail half
  gets the extra frame.
- Normalisation always divides by 255 (the reference skips it when a clip's maximum is <= 1).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import AlproConfig, PreprocessConfig
from .decode import PathLike, Size, VideoError, VideoInfo, decode_clips, open_video

logger = logging.getLogger(__name__)

SAMPLING_STRATEGIES = ("uniform", "rand", "headtail")
Rng = Union[random.Random, np.random.Generator, None]
Window = tuple[float, float]  # (start_s, end_s)


class SamplingError(VideoError):
    """Frame sampling cannot be done as asked: unknown strategy, empty or out-of-range window."""


@dataclass(frozen=True)
class Clip:
    """Frames sampled from one time window of a video, ready for the network."""

    start_s: float  # window start in seconds (0 for a whole video)
    end_s: float  # window end in seconds
    frame_indices: np.ndarray  # int64 (T,) indices into the decoded video
    frames: torch.Tensor  # float32 (T, 3, H, W), normalised


# --- sampling ---------------------------------------------------------------------------------------


def sample_frame_indices(
    vlen: int,
    num_frames: int,
    sampling: str = "uniform",
    *,
    start: int = 0,
    end: int | None = None,
    rng: Rng = None,
) -> np.ndarray:
    """int64 (num_frames,) frame indices in [start, end) (end defaults to vlen), sorted.

    "uniform": `np.arange(start, end, (end - start) / num_frames, dtype=int)` exactly as the reference
    (numpy's `dtype=int` truncates the step, so the indices are start + i * floor(step)); "rand": a sorted
    random sample without repeats; "headtail": half from each half, sorted. `rng` (random.Random or a
    numpy Generator) makes "rand"/"headtail" reproducible; None uses the global `random` module, as the
    reference does.
    """
    if sampling not in SAMPLING_STRATEGIES:
        raise SamplingError(f"unknown frame sampling {sampling!r}; choose one of {SAMPLING_STRATEGIES}")
    if num_frames < 1:
        raise SamplingError(f"num_frames must be >= 1, got {num_frames}")
    end = vlen if end is None else end
    if not 0 <= start < end <= vlen:
        raise SamplingError(f"frame range [{start}, {end}) is empty or outside a video of {vlen} frames")
    length = end - start
    if length < num_frames:
        # too few frames for distinct indices: use every frame, each repeated evenly, in order
        return start + np.arange(num_frames, dtype=np.int64) * length // num_frames
    if sampling == "uniform":
        indices = np.arange(start, end, length / num_frames, dtype=int)
        assert len(indices) == num_frames, (vlen, num_frames, start, end)
    elif sampling == "rand":
        indices = np.sort(_sample(rng, start, end, num_frames))
    else:  # headtail
        mid = start + length // 2
        head = np.sort(_sample(rng, start, mid, num_frames // 2))
        tail = np.sort(_sample(rng, mid, end, num_frames - num_frames // 2))
        indices = np.concatenate([head, tail])
    return indices.astype(np.int64)


def _sample(rng: Rng, low: int, high: int, k: int) -> np.ndarray:
    """k distinct integers from [low, high)."""
    if isinstance(rng, np.random.Generator):
        return rng.choice(np.arange(low, high), size=k, replace=False)
    source = random if rng is None else rng
    return np.array(source.sample(range(low, high), k), dtype=np.int64)


def window_frame_range(info: VideoInfo, window: Window) -> tuple[int, int]:
    """The frames [start, end) of a (start_s, end_s) window, by the reference's `int(t * fps)` rule.

    A window shorter than one frame still gets the frame it starts in.
    """
    start_s, end_s = window
    if not 0 <= start_s < end_s:
        raise SamplingError(f"window {window} must satisfy 0 <= start_s < end_s")
    start = int(start_s * info.fps)
    if start >= info.num_frames:
        raise SamplingError(
            f"window {window} starts at frame {start}, past the end of the video "
            f"({info.num_frames} frames, {info.duration_s:.2f} s)"
        )
    end = min(int(end_s * info.fps), info.num_frames)
    return start, max(end, start + 1)


# --- pixels -----------------------------------------------------------------------------------------


def to_channels_first(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) or (..., 3, H, W) -> (..., 3, H, W); channels-last wins only where dim -3 is not 3."""
    if frames.ndim < 3:
        raise VideoError(f"frames must be (..., H, W, 3) or (..., 3, H, W), got shape {tuple(frames.shape)}")
    if frames.shape[-3] == 3:
        return frames
    if frames.shape[-1] == 3:
        return frames.movedim(-1, -3)
    raise VideoError(f"frames must have 3 RGB channels first or last, got shape {tuple(frames.shape)}")


def resize_frames(frames: torch.Tensor, size: Size) -> torch.Tensor:
    """Resize straight to size x size (or (H, W)), aspect ignored: (..., 3, H', W'), dtype kept.

    Bilinear with antialiasing, the torch counterpart of FFmpeg's bilinear scaler that decoding uses.
    """
    frames = to_channels_first(frames)
    h, w = (size, size) if isinstance(size, int) else size
    if tuple(frames.shape[-2:]) == (h, w):
        return frames
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:])  # (N, 3, H, W)
    out = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if not frames.dtype.is_floating_point:
        out = out.round_().clamp_(0, 255).to(frames.dtype)
    else:
        out = out.to(frames.dtype)
    return out.reshape(*lead, 3, h, w)


def normalize_frames(frames: torch.Tensor, config: AlproConfig | PreprocessConfig) -> torch.Tensor:
    """RGB frames on the 0-255 scale (uint8, or float) -> float32 (..., 3, H, W): /255, - mean, / std."""
    pre = config.preprocess if isinstance(config, AlproConfig) else config
    frames = to_channels_first(frames)
    x = frames.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # never alias the input
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)  # the reference's ImageNorm, in its order


# --- whole pipeline ---------------------------------------------------------------------------------


def load_video(
    path: PathLike,
    config: AlproConfig,
    *,
    sampling: str | None = None,
    window: Window | None = None,
    rng: Rng = None,
    size: Size | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """One clip as network input: float32 (T, 3, H, W) with T = config.num_frames, H = W = img_size.

    `sampling` defaults to the config's (inference) strategy; `window` restricts sampling to
    (start_s, end_s); `size` overrides img_size (e.g. 256 before a pre-training crop).
    """
    strategy = sampling or config.preprocess.sampling

    def select(info: VideoInfo) -> list[np.ndarray]:
        start, end = (0, info.num_frames) if window is None else window_frame_range(info, window)
        return [sample_frame_indices(info.num_frames, config.num_frames, strategy, start=start, end=end, rng=rng)]

    _, (frames,) = decode_clips(path, select, size=size or config.img_size, backend=backend)
    return normalize_frames(frames, config)  # (T, 3, H, W)


def iter_video_clips(
    path: PathLike,
    config: AlproConfig,
    windows: Sequence[Window] | Callable[[VideoInfo], Sequence[Window]],
    *,
    sampling: str | None = None,
    rng: Rng = None,
    size: Size | None = None,
    backend: str | None = None,
) -> Iterator[Clip]:
    """Clips of several time windows of one video, decoded in a single open and pass, in window order.

    `windows` may be a function of the video's info (e.g. to split its duration into segments).
    Clips are produced one at a time, so a long video never holds more than its pending frames.
    """
    strategy = sampling or config.preprocess.sampling
    source = open_video(path, size=size or config.img_size, backend=backend)
    try:
        info = source.info
        spans = list(windows(info) if callable(windows) else windows)
        groups = []
        for window in spans:
            start, end = window_frame_range(info, window)
            groups.append(
                sample_frame_indices(info.num_frames, config.num_frames, strategy, start=start, end=end, rng=rng)
            )
        for (start_s, end_s), indices, frames in zip(spans, groups, source.iter_clips(groups)):
            yield Clip(float(start_s), float(end_s), indices, normalize_frames(frames, config))
    finally:
        source.close()
