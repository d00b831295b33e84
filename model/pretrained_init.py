"""Initialisation for training from scratch, from local files: BERT for text, ImageNet ViT for video.

ALPRO (arXiv 2112.09583, implementation details, and the reference's `AlproBaseModel` / TimeSformer
`load_pretrained_imagenet`): every BERT layer initialises the same-index ALPRO layer, text layers
[0, fusion_layer) and fusion layers alike, and BertForMaskedLM's head initialises the MLM head. The
TimeSformer starts from ViT-B/16: spatial `attn` and `norm1` are copied as they are and also into
`temporal_attn` and `temporal_norm1`; `time_embed` is zero; `temporal_fc` is zero in blocks >= 1 (block 0
keeps its random init, as in the reference); `pos_embed` is resized by the reference's rule; the
classifier head is dropped.

Inputs are local files only: a Hugging Face BERT directory (`save_pretrained` output) and a timm ViT state
dict. Conversion is a pure function per source; loading is strict and names every bad key in the source's
own key names.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn

from .alpro import AlproModel
from .checkpoint import (
    NATIVE_TO_OFFICIAL,
    OFFICIAL_TO_NATIVE,
    CheckpointError,
    _rename,
    convert_official_state_dict,
    load_state_dict_strict,
    unwrap_state_dict,
)
from .config import AlproConfig, ConfigError, TextConfig, VisionConfig, apply_overrides, preset_config
from .timesformer import resize_pos_embed

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Weight files of a Hugging Face directory, in order of preference (single file, then sharded).
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")

# BERT keys ALPRO has no use for: the pooler (ALPRO has none) and the next-sentence head of
# BertForPreTraining checkpoints (bert-base-uncased's original file has both).
_BERT_IGNORED = re.compile(r"^(bert\.)?pooler\.|^cls\.seq_relationship\.")
# Pre-2019 BERT files name LayerNorm parameters gamma/beta.
_LEGACY_NORM = re.compile(r"(LayerNorm)\.(gamma|beta)$")

# timm ViT keys that have no counterpart in the TimeSformer: the ImageNet classifier.
_VIT_DROPPED = re.compile(r"^head\.(weight|bias)$")
# Spatial parameters that also initialise the temporal branch of the same block.
_VIT_TEMPORAL_COPY = re.compile(r"^blocks\.(\d+)\.(attn|norm1)\.(.+)$")
_TEMPORAL_NAMES = {"attn": "temporal_attn", "norm1": "temporal_norm1"}


# --------------------------------------------------------------------------------------------------
# Reading files


def read_weights_file(path: PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a .safetensors file or a torch.save'd (possibly wrapped) state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".npz":
        raise CheckpointError(f"{path}: .npz (JAX) ViT weights are not supported; load them with timm and "
                              "torch.save(model.state_dict()) first")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing here
        raise CheckpointError(f"cannot read {path} as a PyTorch state dict: {e}") from e
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _find_hf_weights(directory: Path) -> Path:
    for name in HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory} holds none of the weight files {list(HF_WEIGHT_FILES)}")


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weights file, or all shards listed by a `*.index.json`."""
    if not path.name.endswith(".index.json"):
        return read_weights_file(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read shard index {path}: {e}") from e
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_weights_file(path.parent / shard))
    return state


def read_bert_directory(bert_dir: PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(config.json contents, state dict, weights path) of a Hugging Face BERT directory."""
    directory = Path(bert_dir)
    if not directory.is_dir():
        raise CheckpointError(f"BERT weights must be a Hugging Face directory (config.json + weights); "
                              f"{directory} is not a directory")
    config_path = directory / "config.json"
    try:
        bert_config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the BERT config {config_path}: {e}") from e
    weights = _find_hf_weights(directory)
    return bert_config, _read_hf_weights(weights), weights


def _vit_weights_path(path: PathLike) -> Path:
    """A weights file, or the weights file inside a timm/Hugging Face model directory."""
    path = Path(path)
    return _find_hf_weights(path) if path.is_dir() else path


# --------------------------------------------------------------------------------------------------
# Text: BERT -> text_encoder (+ mlm_head)


def check_bert_config(bert_config: Mapping[str, Any], text: TextConfig) -> None:
    """Raise CheckpointError if the BERT config describes another network than `text`.

    Sizes would also show up as shape errors, but head count, epsilon and activation are invisible in
    the tensors and would silently change the outputs.
    """
    fields = (  # (BERT config name, our value, the override that changes ours)
        ("hidden_size", text.hidden_size, "text_hidden_size"),
        ("num_hidden_layers", text.num_layers, "text_num_layers"),
        ("num_attention_heads", text.num_heads, "text_num_heads"),
        ("intermediate_size", text.intermediate_size, "text_intermediate_size"),
        ("vocab_size", text.vocab_size, "text_vocab_size"),
        ("max_position_embeddings", text.max_position_embeddings, "text_max_position_embeddings"),
        ("type_vocab_size", text.type_vocab_size, "text_type_vocab_size"),
    )
    wrong = [f"{name}: BERT {bert_config[name]} vs model {ours} (override {override}={bert_config[name]})"
             for name, ours, override in fields if name in bert_config and int(bert_config[name]) != ours]
    if "layer_norm_eps" in bert_config and not math.isclose(float(bert_config["layer_norm_eps"]),
                                                             text.layer_norm_eps, rel_tol=1e-6):
        eps = bert_config["layer_norm_eps"]
        wrong.append(f"layer_norm_eps: BERT {eps} vs model {text.layer_norm_eps} (override text_layer_norm_eps={eps})")
    # Our layers hard-code exact-erf GELU and absolute positions, as bert-base-uncased has.
    if bert_config.get("hidden_act", "gelu") != "gelu":
        wrong.append(f"hidden_act: BERT {bert_config['hidden_act']!r}, this model implements only 'gelu' (erf)")
    if bert_config.get("position_embedding_type", "absolute") != "absolute":
        wrong.append(f"position_embedding_type: BERT {bert_config['position_embedding_type']!r}, "
                     "this model implements only 'absolute'")
    if wrong:
        raise CheckpointError("BERT config does not match the model:\n  " + "\n  ".join(wrong))


def _modern_norm_name(match: re.Match[str]) -> str:
    return f"{match.group(1)}.{'weight' if match.group(2) == 'gamma' else 'bias'}"


def convert_bert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Hugging Face BERT keys (with or without `bert.`) -> native `text_encoder.*` / `mlm_head.*` keys.

    Returns the converted dict and {native key: source key} for error messages. The pooler and NSP head
    are dropped; a tied MLM decoder is checked against the word embeddings by the official converter.
    """
    prefixed: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for key, value in state_dict.items():
        if _BERT_IGNORED.match(key):
            continue
        # Official ALPRO keys are `text_encoder.` + the Hugging Face BERT keys, so the official table applies.
        official = "text_encoder." + _LEGACY_NORM.sub(_modern_norm_name, key)
        if official in prefixed:
            raise CheckpointError(f"two BERT keys map to {official!r} (one of them {key!r})")
        prefixed[official] = value
        names[_rename(official, OFFICIAL_TO_NATIVE)] = key
    native = convert_official_state_dict(prefixed)
    return native, names


def _bert_name(native: str, bert_prefix: str) -> str:
    """Native key -> the key the BERT directory would use for it."""
    official = _rename(native, NATIVE_TO_OFFICIAL).replace("{bert}", bert_prefix)
    return official[len("text_encoder."):] if official.startswith("text_encoder.") else official


def _load_parts(parts: Mapping[str, nn.Module], state: Mapping[str, torch.Tensor], source: str,
                name: Callable[[str], str]) -> None:
    """Strictly load `state` (keys `part.…`) into the named submodules at once, or change nothing.

    The parts are wrapped in one ModuleDict (sharing their parameters) so a bad key anywhere is reported
    before any tensor is copied; error messages use the source's key names.
    """
    wrapper = nn.ModuleDict(dict(parts))
    load_state_dict_strict(wrapper, state, source=source, name=name)  # type: ignore[arg-type]


def init_text_from_bert(model: AlproModel, bert_dir: PathLike) -> None:
    """Initialise text and fusion layers (and the MLM head, when the directory has one) from a BERT directory.

    The directory is the output of transformers' BertModel/BertForMaskedLM `save_pretrained`. Every
    text_encoder tensor must be covered with the right shape, else CheckpointError lists the keys.
    The prompter, when the model has one, gets the same weights.
    """
    bert_config, hf_state, weights = read_bert_directory(bert_dir)
    check_bert_config(bert_config, model.config.text)
    native, names = convert_bert_state_dict(hf_state)
    bert_prefix = "bert." if any(k.startswith("bert.") for k in hf_state) else ""

    def name(native_key: str) -> str:
        return names.get(native_key) or _bert_name(native_key, bert_prefix)

    has_mlm = any(k.startswith("mlm_head.") for k in native)
    for target in _targets(model):
        parts: dict[str, nn.Module] = {"text_encoder": target.text_encoder}
        state = {k: v for k, v in native.items() if k.startswith("text_encoder.")}
        if has_mlm and target.mlm_head is not None:
            parts["mlm_head"] = target.mlm_head
            state.update((k, v) for k, v in native.items() if k.startswith("mlm_head."))
        _load_parts(parts, state, str(weights), name)
    if not has_mlm and model.mlm_head is not None:
        logger.warning("%s has no MLM head (cls.predictions.*): the MLM head keeps its random init", weights)
    elif has_mlm and model.mlm_head is None:
        logger.info("%s has an MLM head but the model has none (mlm_head=False): ignored", weights)
    logger.info("initialised the text encoder%s from %s (%d layers: %d text, %d fusion)",
                " and MLM head" if has_mlm and model.mlm_head is not None else "", weights,
                model.config.text.num_layers, model.config.text.fusion_layer,
                model.config.text.num_layers - model.config.text.fusion_layer)


# --------------------------------------------------------------------------------------------------
# Video: timm ViT -> visual_encoder


def _resize_vit_pos_embed(pos_embed: torch.Tensor, config: VisionConfig) -> torch.Tensor:
    rows = pos_embed.shape[1] if pos_embed.ndim == 3 else -1
    grid = math.isqrt(max(rows - 1, 0))
    if pos_embed.ndim != 3 or grid * grid != rows - 1 or rows < 2:
        raise CheckpointError(f"ViT pos_embed of shape {tuple(pos_embed.shape)} is not (1, 1 + grid*grid, D): "
                              "the TimeSformer needs a class-token row followed by a square patch grid")
    if rows - 1 != config.num_patches:
        logger.warning("resizing ViT pos_embed from %d to %d patches (1-D nearest, the reference's rule)",
                       rows - 1, config.num_patches)
    return resize_pos_embed(pos_embed, config.num_patches)


def convert_vit_state_dict(state_dict: Mapping[str, torch.Tensor],
                           config: VisionConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """timm ViT state dict -> TimeSformer state dict (keys relative to `visual_encoder`), less block 0's temporal_fc.

    Returns the converted dict and {our key: timm key} for error messages. Block 0's temporal_fc is left
    out on purpose: the reference keeps its random init.
    """
    temporal_keys = sorted(k for k in state_dict if k == "time_embed" or ".temporal_" in k)
    if temporal_keys:
        raise CheckpointError(f"expected an image ViT state dict, but it already has temporal parameters "
                              f"({', '.join(temporal_keys[:5])}{', ...' if len(temporal_keys) > 5 else ''}): "
                              "load TimeSformer/ALPRO checkpoints with model.checkpoint instead")
    out: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for key, value in state_dict.items():
        if _VIT_DROPPED.match(key):
            continue
        if key == "pos_embed":
            value = _resize_vit_pos_embed(value, config)
        out[key] = value
        names[key] = key
        if m := _VIT_TEMPORAL_COPY.match(key):
            temporal = f"blocks.{m.group(1)}.{_TEMPORAL_NAMES[m.group(2)]}.{m.group(3)}"
            out[temporal] = value
            names[temporal] = key
    dim = config.embed_dim
    out["time_embed"] = torch.zeros(1, config.num_frames, dim)
    names["time_embed"] = "time_embed (zero)"
    for i in range(1, config.depth):
        out[f"blocks.{i}.temporal_fc.weight"] = torch.zeros(dim, dim)
        out[f"blocks.{i}.temporal_fc.bias"] = torch.zeros(dim)
        names[f"blocks.{i}.temporal_fc.weight"] = f"blocks.{i}.temporal_fc.weight (zero)"
        names[f"blocks.{i}.temporal_fc.bias"] = f"blocks.{i}.temporal_fc.bias (zero)"
    return out, names


def _vit_display_name(names: Mapping[str, str]) -> Callable[[str], str]:
    """Our `visual_encoder.*` key -> the timm key that supplies (or should supply) it."""

    def name(key: str) -> str:
        key = key[len("visual_encoder."):] if key.startswith("visual_encoder.") else key
        return names.get(key) or re.sub(r"\.temporal_(attn|norm1)\.", r".\1.", key)

    return name


def init_video_from_vit(model: AlproModel, vit_weights_path: PathLike) -> None:
    """Initialise the TimeSformer from a timm ViT state dict (.pth/.bin/.safetensors file, or a timm directory).

    Strict: every ViT tensor the TimeSformer needs must be present with the right shape and nothing but the
    classifier head may be left over, else CheckpointError lists the keys (in timm names). The head count
    is not visible in the weights: it is the model config's (vision_num_heads). The prompter, when the
    model has one, gets the same weights.
    """
    if model.config.vision.patch_stem != "linear":
        raise ConfigError(f"ImageNet ViT weights embed patches linearly; vision patch_stem "
                          f"{model.config.vision.patch_stem!r} is for training from scratch")
    path = _vit_weights_path(vit_weights_path)
    vit_state = read_weights_file(path)
    converted, names = convert_vit_state_dict(vit_state, model.config.vision)
    dropped = sorted(k for k in vit_state if _VIT_DROPPED.match(k))
    for target in _targets(model):
        state = {"visual_encoder." + k: v for k, v in converted.items()}
        own_fc = target.visual_encoder.blocks[0].temporal_fc  # keeps this model's own (random) values
        state["visual_encoder.blocks.0.temporal_fc.weight"] = own_fc.weight.detach()
        state["visual_encoder.blocks.0.temporal_fc.bias"] = own_fc.bias.detach()
        _load_parts({"visual_encoder": target.visual_encoder}, state, str(path), _vit_display_name(names))
    logger.info("initialised the video encoder from %s (%d ViT tensors; dropped %s; temporal branch copied from "
                "the spatial one, time_embed and temporal_fc[1:] zero)", path, len(vit_state) - len(dropped),
                dropped or "nothing")


# --------------------------------------------------------------------------------------------------
# Factory


def _targets(model: AlproModel) -> list[AlproModel]:
    """The model and its prompter (an ALPRO model of the same sizes), which ALPRO initialises alike."""
    return [model] if model.prompter is None else [model, model.prompter]


def create_model_from_pretrained(preset_or_config: Union[str, AlproConfig], bert_dir: PathLike | None = None,
                                 vit_weights: PathLike | None = None, **overrides: Any) -> AlproModel:
    """A model (eval mode) from a preset name or config plus overrides, initialised from BERT and/or ViT files.

    Parts without a source keep the random init of `AlproModel.reset_parameters`.
    """
    if isinstance(preset_or_config, AlproConfig):
        config = apply_overrides(preset_or_config, **overrides) if overrides else preset_or_config
    else:
        config = preset_config(preset_or_config, **overrides)
    model = AlproModel(config)
    if bert_dir is not None:
        init_text_from_bert(model, bert_dir)
    if vit_weights is not None:
        init_video_from_vit(model, vit_weights)
    if bert_dir is None and vit_weights is None:
        logger.warning("create_model_from_pretrained without bert_dir or vit_weights: the model is random")
    return model.eval()


__all__ = [
    "check_bert_config", "convert_bert_state_dict", "convert_vit_state_dict", "create_model_from_pretrained",
    "init_text_from_bert", "init_video_from_vit", "read_bert_directory", "read_weights_file",
]
