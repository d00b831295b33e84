"""ALPRO network, checkpoint conversion and pre-processing. Imports none of the other packages."""

from .alpro import AlproModel
from .checkpoint import (
    CheckpointError,
    checkpoint_fingerprint,
    convert_official_state_dict,
    export_official_state_dict,
    load_model,
    load_official_checkpoint,
    load_pretrained,
    save_official_checkpoint,
)
from .decode import VideoDecodeError, VideoError, VideoInfo, decode_clips, decode_frames, open_video, probe_video
from .preprocess import (Clip, SamplingError, iter_video_clips, load_video, normalize_frames, resize_frames,
                         sample_frame_indices, window_frame_range)
from .tokenizer import Tokenizer, TokenizerError
from .pretrained_init import create_model_from_pretrained, init_text_from_bert, init_video_from_vit
from .config import PRESETS, AlproConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig, preset_config


def create_model(preset: str = "base", **overrides) -> AlproModel:
    """A randomly initialised model (eval mode) from a named preset (`base`, `tiny`) with overrides."""
    return AlproModel(preset_config(preset, **overrides))


__all__ = [
    "Clip", "SamplingError", "Tokenizer", "TokenizerError", "VideoDecodeError", "VideoError", "VideoInfo",
    "decode_clips", "decode_frames", "iter_video_clips", "load_video", "normalize_frames", "open_video",
    "probe_video", "resize_frames", "sample_frame_indices", "window_frame_range",
    "AlproConfig", "AlproModel", "CheckpointError", "ConfigError", "PRESETS", "PreprocessConfig", "TextConfig",
    "VisionConfig", "checkpoint_fingerprint", "convert_official_state_dict", "create_model",
    "create_model_from_pretrained", "init_text_from_bert", "init_video_from_vit",
    "export_official_state_dict", "load_model", "load_official_checkpoint", "load_pretrained",
    "preset_config", "save_official_checkpoint",
]
