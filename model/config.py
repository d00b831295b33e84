"""Configuration of the ALPRO network (arXiv 2112.09583, section 3 and the reference code's configs).

Frozen dataclasses, one per part, with named presets. The official sizes are the `base` preset; `tiny`
keeps the real 30522-token vocabulary but shrinks every width and depth so tests run in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BERT_VOCAB_SIZE = 30522


class ConfigError(ValueError):
    """A configuration value is invalid or inconsistent with another one."""


# Field metadata of settings that only shape a random init (loading replaces what they made): they say
# nothing about what a checkpoint's weights compute, so `identity_dict` and the fingerprint leave them out.
INIT_ONLY = {"init_only": True}
# Settings added after checkpoints were made: left out of a checkpoint's identity while at their default, so
# the fingerprints (and indexes) of existing checkpoints stay valid.
OMIT_DEFAULT = {"omit_default": True}
PATCH_STEMS = ("linear", "conv")


@dataclass(frozen=True)
class VisionConfig:
    """TimeSformer with divided space-time attention."""

    embed_dim: int = 768  # token width
    depth: int = 12  # number of divided space-time blocks
    num_heads: int = 12  # attention heads (not recoverable from weights)
    mlp_ratio: float = 4.0  # MLP hidden width / embed_dim
    patch_size: int = 16  # square patch side in pixels
    img_size: int = 224  # square input side in pixels
    num_frames: int = 8  # frames per clip (time_embed length)
    qkv_bias: bool = True  # bias on the qkv projections
    layer_norm_eps: float = 1e-6  # LayerNorm epsilon
    drop_path_rate: float = 0.1  # stochastic depth at the last block (linear from 0), training only
    num_classes: int = 400  # size of the unused Kinetics head kept in official checkpoints
    # std of the random init of `pos_embed` and `time_embed` (random init only; loading replaces them). The
    # reference starts from ImageNet ViT weights (pos_embed learned, time_embed zero, as model.pretrained_init
    # does). From scratch, a zero or small time embedding leaves the encoder blind to frame order: the output
    # is a mean over frames and temporal attention is symmetric in them. The tiny learning model (reference
    # init) embedded a clip and the same clip played backwards at cosine 0.9999994 after training, with
    # patch tokens of norm 25 against position/time embeddings of norm 0.1-0.25 (left vs right at chance).
    pos_init_std: float = field(default=0.02, metadata=INIT_ONLY)
    time_init_std: float = field(default=0.0, metadata=INIT_ONLY)
    # How frames become patch tokens. "linear": the reference's one strided convolution (a linear map of each
    # patch). "conv": log2(patch_size) 3x3 stride-2 convolutions with BatchNorm and ReLU, then a 1x1 to the
    # width (Xiao et al. 2021, "Early convolutions help transformers see better"); not in ALPRO, and the
    # official code cannot load it. Trained from scratch on shape/colour/motion labels of fresh alpro-synth
    # clips (64 px, 16-px patches, width 128, steps of 16 clips), the tiny encoder read held-out shapes at
    # 86% after 800 steps and 99.8% after 1200 with it, 44% and 60% with the linear one; the same stem with
    # GroupNorm, per-pixel LayerNorm or no norm in place of BatchNorm: 49%, 48%, 42% after 800 steps.
    patch_stem: str = "linear"
    # Add `time_embed` to each frame's copy of cls in spatial attention (the reference adds it to patch tokens
    # only). Frame t's cls then asks its own question of frame t's patches, so their mean over frames could
    # tell a clip from the same clip played backwards within one attention layer (in the learning benchmark's
    # 420 steps it did not learn to: README "Benchmarks"). Not in ALPRO: no weights change, so official-format
    # export writes a checkpoint the reference code runs without it.
    cls_time: bool = field(default=False, metadata=OMIT_DEFAULT)
    # Video tokens handed to fusion: each patch's tokens averaged over `time_segments` equal runs of frames,
    # (1 + N*S) tokens in (n s) order. 1 is the reference (the mean over all frames: 1 + N tokens); T hands
    # over every frame's tokens, so fusion can ask where a shape is early and where late. Not in ALPRO; no
    # weights change. Must divide num_frames.
    time_segments: int = field(default=1, metadata=OMIT_DEFAULT)
    # Add each token's own position and time embedding (`pos_embed` of its patch, `time_embed` averaged over its
    # segment's frames) to the patch tokens handed to fusion, after the encoder's last norm. Fusion has no
    # position embedding of its own for the video, so it otherwise reads where and when a token is only from
    # what the encoder kept of its input embeddings. Not in ALPRO; no weights change; [CLS] (retrieval) unchanged.
    fusion_pos: bool = field(default=False, metadata=OMIT_DEFAULT)

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per frame."""
        return self.grid_size**2

    def validate(self) -> None:
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"vision embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_frames < 1 or self.depth < 1:
            raise ConfigError("vision num_frames and depth must be >= 1")
        if self.time_segments < 1 or self.num_frames % self.time_segments:
            raise ConfigError(f"vision time_segments {self.time_segments} must be >= 1 and divide num_frames "
                              f"{self.num_frames}")
        if self.pos_init_std < 0 or self.time_init_std < 0:
            raise ConfigError("vision pos_init_std and time_init_std must be >= 0")
        if self.patch_stem not in PATCH_STEMS:
            raise ConfigError(f"vision patch_stem {self.patch_stem!r} is not one of {PATCH_STEMS}")
        if self.patch_stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"the conv patch stem needs a power-of-two patch_size >= 2, got {self.patch_size}")


@dataclass(frozen=True)
class TextConfig:
    """BERT: layers [0, fusion_layer) encode text, layers [fusion_layer, num_layers) fuse text and video."""

    vocab_size: int = BERT_VOCAB_SIZE  # WordPiece vocabulary size
    hidden_size: int = 768  # token width; must equal the video width for fusion
    num_layers: int = 12  # text layers + fusion layers
    fusion_layer: int = 6  # index of the first fusion layer
    num_heads: int = 12  # attention heads
    intermediate_size: int = 3072  # feed-forward width
    max_position_embeddings: int = 512  # learned positions
    type_vocab_size: int = 2  # token-type rows (ALPRO only uses row 0)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon
    hidden_dropout: float = 0.1  # dropout after projections, training only
    attention_dropout: float = 0.1  # dropout on attention probabilities, training only
    pad_token_id: int = 0  # [PAD]
    # std of the normal init of the text encoder's weights (random init only; loading replaces them). BERT's
    # 0.02 suits a wide model; a narrow one trained from scratch starts far faster with a larger std (at
    # width 96 and 0.02 or 0.06, fusion gives every pair the same [CLS] and VTM sits at its 1:2 prior).
    init_std: float = field(default=0.02, metadata=INIT_ONLY)

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"text hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not 0 < self.fusion_layer <= self.num_layers:
            raise ConfigError(f"fusion_layer {self.fusion_layer} must be in (0, num_layers={self.num_layers}]")


@dataclass(frozen=True)
class PreprocessConfig:
    """What a caller must do to raw frames and text before they reach the network."""

    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel RGB mean after /255
    std: tuple[float, float, float] = CLIP_STD  # per-channel RGB std after /255
    max_text_len: int = 40  # tokens per caption or question, [CLS] and [SEP] included
    sampling: str = "uniform"  # frame sampling at inference


@dataclass(frozen=True)
class AlproConfig:
    """The whole model: encoders, heads and the pre-processing that goes with the weights."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    embed_dim: int = 256  # width of the VTC projections
    temp_init: float = 0.07  # initial VTC temperature
    mlm_head: bool = True  # keep BERT's MLM head (pre-training and retrieval checkpoints have it)
    num_answers: int = 0  # QA classifier outputs; 0 means no QA head
    answers: tuple[str, ...] = ()  # answer strings by classifier index (may be shorter than num_answers)
    num_entities: int = 0  # PEM entities; > 0 adds the PEM head and a prompter
    prompt_entities: int = 0  # > 0 marks this model as a prompter holding that many prompt features
    grad_checkpointing: bool = False  # recompute blocks in backward to save memory

    @property
    def num_frames(self) -> int:
        return self.vision.num_frames

    @property
    def img_size(self) -> int:
        return self.vision.img_size

    def validate(self) -> None:
        self.vision.validate()
        self.text.validate()
        if self.vision.embed_dim != self.text.hidden_size:
            raise ConfigError(
                f"fusion concatenates video and text tokens, so vision embed_dim ({self.vision.embed_dim}) "
                f"must equal text hidden_size ({self.text.hidden_size})"
            )
        if self.answers and len(self.answers) > self.num_answers:
            raise ConfigError(f"{len(self.answers)} answers given for a classifier of {self.num_answers} outputs")

    def replace(self, **changes: Any) -> "AlproConfig":
        """A copy with top-level fields or `vision_*`, `text_*`, `preprocess_*` sub-fields changed."""
        return apply_overrides(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """`to_dict` without the init-only settings: what identifies the function a checkpoint computes."""
        out = self.to_dict()
        for name in _SUBCONFIGS:
            for f in dataclasses.fields(getattr(self, name)):
                if f.metadata.get("init_only") or (f.metadata.get("omit_default")
                                                    and getattr(getattr(self, name), f.name) == f.default):
                    del out[name][f.name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlproConfig":
        data = dict(data)
        sub = {
            "vision": VisionConfig(**data.pop("vision", {})),
            "text": TextConfig(**data.pop("text", {})),
            "preprocess": _preprocess_from_dict(data.pop("preprocess", {})),
        }
        if "answers" in data:
            data["answers"] = tuple(data["answers"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown AlproConfig fields: {sorted(unknown)}")
        config = cls(**sub, **data)
        config.validate()
        return config


def _preprocess_from_dict(data: dict[str, Any]) -> PreprocessConfig:
    data = dict(data)
    for key in ("mean", "std"):
        if key in data:
            data[key] = tuple(data[key])
    return PreprocessConfig(**data)


_SUBCONFIGS = {"vision": VisionConfig, "text": TextConfig, "preprocess": PreprocessConfig}


def apply_overrides(config: AlproConfig, **overrides: Any) -> AlproConfig:
    """Apply keyword overrides: top-level names, or `vision_num_heads=4`-style prefixed sub-fields.

    `num_frames`, `img_size` (vision) and `max_text_len` (preprocess) are shortcuts for sub-fields.
    """
    top: dict[str, Any] = {}
    subs: dict[str, dict[str, Any]] = {name: {} for name in _SUBCONFIGS}
    top_fields = {f.name for f in dataclasses.fields(AlproConfig)}
    for key, value in overrides.items():
        if key in ("num_frames", "img_size"):
            subs["vision"][key] = value
            continue
        if key == "max_text_len":
            subs["preprocess"][key] = value
            continue
        if key in top_fields and key not in _SUBCONFIGS:
            top[key] = tuple(value) if key == "answers" else value
            continue
        for prefix, sub_cls in _SUBCONFIGS.items():
            name = key[len(prefix) + 1 :]
            if key.startswith(prefix + "_") and name in {f.name for f in dataclasses.fields(sub_cls)}:
                subs[prefix][name] = value
                break
        else:
            raise ConfigError(f"unknown model override {key!r}")
    for prefix, changes in subs.items():
        if changes:
            top[prefix] = dataclasses.replace(getattr(config, prefix), **changes)
    new = dataclasses.replace(config, **top)
    new.validate()
    return new


PRESETS: dict[str, AlproConfig] = {
    # The official ALPRO sizes: ViT-B/16 TimeSformer, 8 frames at 224, BERT-base split 6 + 6.
    "base": AlproConfig(),
    # Small enough for unit tests on two CPU cores; keeps the real vocabulary and all structure.
    "tiny": AlproConfig(
        vision=VisionConfig(embed_dim=64, depth=2, num_heads=4, img_size=32, num_frames=2),
        text=TextConfig(hidden_size=64, num_layers=4, fusion_layer=2, num_heads=4, intermediate_size=256,
                        max_position_embeddings=64),
        preprocess=PreprocessConfig(max_text_len=16),
    ),
}


def preset_config(name: str, **overrides: Any) -> AlproConfig:
    """The named preset with overrides applied."""
    try:
        config = PRESETS[name]
    except KeyError as e:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from e
    return apply_overrides(config, **overrides) if overrides else config
