"""Checkpoints: the official ALPRO format (read and write) and our native format (safetensors + JSON).

Official files are flat state dicts saved by the reference (`torch.save(model.state_dict())`); LAVIS
re-hosts them with `bert.` removed from key names and sometimes wraps them in {"model": ...}. Conversion
is a pure function over an ordered rename table; loading is strict and lists every bad key.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch

from .alpro import AlproModel, prompter_config
from .config import AlproConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig, apply_overrides
from .timesformer import resize_pos_embed, resize_time_embed

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
NATIVE_FORMAT = "alpro-native"
NATIVE_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_P = r"^((?:prompter\.)?)"  # optional prompter prefix, kept in group 1

# Official -> native, applied in order to every key (later rules see earlier results).
OFFICIAL_TO_NATIVE: tuple[tuple[str, str], ...] = (
    (_P + r"visual_encoder\.model\.", r"\1visual_encoder."),
    (_P + r"text_encoder\.bert\.", r"\1text_encoder."),
    (_P + r"text_encoder\.cls\.predictions\.transform\.dense\.", r"\1mlm_head.dense."),
    (_P + r"text_encoder\.cls\.predictions\.transform\.LayerNorm\.", r"\1mlm_head.norm."),
    (_P + r"text_encoder\.cls\.predictions\.bias$", r"\1mlm_head.bias"),
    (_P + r"text_encoder\.embeddings\.LayerNorm\.", r"\1text_encoder.embeddings.norm."),
    (_P + r"text_encoder\.encoder\.layer\.(\d+)\.attention\.self\.", r"\1text_encoder.layers.\2.attn."),
    (_P + r"text_encoder\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"\1text_encoder.layers.\2.attn.out."),
    (_P + r"text_encoder\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"\1text_encoder.layers.\2.attn_norm."),
    (_P + r"text_encoder\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"\1text_encoder.layers.\2.fc1."),
    (_P + r"text_encoder\.encoder\.layer\.(\d+)\.output\.dense\.", r"\1text_encoder.layers.\2.fc2."),
    (_P + r"text_encoder\.encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"\1text_encoder.layers.\2.mlp_norm."),
    (r"^classifier\.0\.", "qa_head.fc1."),
    (r"^classifier\.2\.", "qa_head.fc2."),
    (r"^mpm_head\.0\.", "pem_head.fc1."),
    (r"^mpm_head\.2\.", "pem_head.fc2."),
)

# Native -> official; `{bert}` becomes "bert." for MLM-style text encoders and "" for QA ones.
NATIVE_TO_OFFICIAL: tuple[tuple[str, str], ...] = (
    (_P + r"visual_encoder\.", r"\1visual_encoder.model."),
    (_P + r"mlm_head\.dense\.", r"\1text_encoder.cls.predictions.transform.dense."),
    (_P + r"mlm_head\.norm\.", r"\1text_encoder.cls.predictions.transform.LayerNorm."),
    (_P + r"mlm_head\.bias$", r"\1text_encoder.cls.predictions.bias"),
    (_P + r"text_encoder\.embeddings\.norm\.", r"\1text_encoder.{bert}embeddings.LayerNorm."),
    (_P + r"text_encoder\.embeddings\.", r"\1text_encoder.{bert}embeddings."),
    (_P + r"text_encoder\.layers\.(\d+)\.attn\.out\.", r"\1text_encoder.{bert}encoder.layer.\2.attention.output.dense."),
    (_P + r"text_encoder\.layers\.(\d+)\.attn\.", r"\1text_encoder.{bert}encoder.layer.\2.attention.self."),
    (_P + r"text_encoder\.layers\.(\d+)\.attn_norm\.", r"\1text_encoder.{bert}encoder.layer.\2.attention.output.LayerNorm."),
    (_P + r"text_encoder\.layers\.(\d+)\.fc1\.", r"\1text_encoder.{bert}encoder.layer.\2.intermediate.dense."),
    (_P + r"text_encoder\.layers\.(\d+)\.fc2\.", r"\1text_encoder.{bert}encoder.layer.\2.output.dense."),
    (_P + r"text_encoder\.layers\.(\d+)\.mlp_norm\.", r"\1text_encoder.{bert}encoder.layer.\2.output.LayerNorm."),
    (r"^qa_head\.fc1\.", "classifier.0."),
    (r"^qa_head\.fc2\.", "classifier.2."),
    (r"^pem_head\.fc1\.", "mpm_head.0."),
    (r"^pem_head\.fc2\.", "mpm_head.2."),
)

# Official keys with no native counterpart: an unused Kinetics head and a constant buffer (both optional),
# and the MLM decoder, which is tied to the word embeddings and the prediction bias.
_UNUSED = re.compile(_P + r"(visual_encoder\.model\.head\.(weight|bias)|text_encoder\.(bert\.)?embeddings\.position_ids)$")
_DECODER = re.compile(_P + r"text_encoder\.cls\.predictions\.decoder\.(weight|bias)$")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in table:
        key = re.sub(pattern, replacement, key)
    return key


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Accept a flat state dict or one wrapped as {"model": ...} / {"state_dict": ...} (LAVIS)."""
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
                return unwrap_state_dict(inner)
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError("not an ALPRO checkpoint: expected a flat {name: tensor} state dict")


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (or LAVIS) key names -> native names; drops unused keys, checks the tied MLM decoder."""
    out: dict[str, torch.Tensor] = {}
    decoders: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _UNUSED.match(key):
            continue
        if _DECODER.match(key):
            decoders[key] = value
            continue
        native = _rename(key, OFFICIAL_TO_NATIVE)
        if native in out:
            raise CheckpointError(f"two checkpoint keys map to {native!r} (one of them {key!r})")
        out[native] = value
    for key, value in decoders.items():
        prefix = "prompter." if key.startswith("prompter.") else ""
        tied = (f"{prefix}text_encoder.embeddings.word_embeddings.weight" if key.endswith("weight")
                else f"{prefix}mlm_head.bias")
        if tied in out and (out[tied].shape != value.shape or not torch.equal(out[tied], value)):
            raise CheckpointError(f"{key} is not tied to its source ({tied}); untied MLM decoders are not supported")
    return out


def _official_text_prefix(config: AlproConfig) -> str:
    # The reference's QA model holds a bare BertModel; every other model a BertForMaskedLM.
    return "" if config.num_answers and not config.mlm_head else "bert."


def export_official_state_dict(model: AlproModel) -> dict[str, torch.Tensor]:
    """Native model -> flat state dict with the reference's key names, loadable by the reference code."""
    config = model.config
    unsaid = [name for name in ("cls_time", "time_segments", "fusion_pos")
              if getattr(config.vision, name) not in (False, 1)]
    if unsaid:
        logger.warning("vision settings %s are not in ALPRO and the official format cannot say them: the reference "
                       "code, and load_official_checkpoint, run these weights without them; the native format "
                       "(save_pretrained) keeps them", unsaid)
    bert = _official_text_prefix(config)
    native = {k: v.detach() for k, v in model.state_dict().items()}
    device = model.temp.device
    out: dict[str, torch.Tensor] = {}
    for key, value in native.items():
        official = _rename(key, NATIVE_TO_OFFICIAL).replace("{bert}", bert)
        back = _rename(official, OFFICIAL_TO_NATIVE)
        if back != key:  # the two tables must stay inverse to each other
            raise AssertionError(f"rename tables disagree: {key} -> {official} -> {back}")
        out[official] = value
    for prefix, sub in (("", config), ("prompter.", prompter_config(config))):
        if prefix and model.prompter is None:
            continue
        sub_bert = "bert." if prefix else bert
        v = sub.vision
        out[f"{prefix}visual_encoder.model.head.weight"] = torch.zeros(v.num_classes, v.embed_dim, device=device)
        out[f"{prefix}visual_encoder.model.head.bias"] = torch.zeros(v.num_classes, device=device)
        out[f"{prefix}text_encoder.{sub_bert}embeddings.position_ids"] = torch.arange(
            sub.text.max_position_embeddings, device=device).unsqueeze(0)
        if sub.mlm_head:
            out[f"{prefix}text_encoder.cls.predictions.decoder.weight"] = out[
                f"{prefix}text_encoder.{sub_bert}embeddings.word_embeddings.weight"]
            out[f"{prefix}text_encoder.cls.predictions.decoder.bias"] = out[f"{prefix}text_encoder.cls.predictions.bias"]
    return out


def _shape(sd: Mapping[str, torch.Tensor], *keys: str) -> tuple[int, ...] | None:
    for key in keys:
        if key in sd:
            return tuple(sd[key].shape)
    return None


def _dim(sd: Mapping[str, torch.Tensor], what: str, candidates: list[tuple[str, int]]) -> int:
    """First readable dimension among (key, axis) candidates, so one missing key still loads far enough
    for the strict check to name it."""
    for key, axis in candidates:
        if key in sd:
            return int(sd[key].shape[axis])
    raise CheckpointError(f"cannot read the {what} off the checkpoint: none of {[k for k, _ in candidates]} present")


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for k in sd if (m := regex.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: Mapping[str, torch.Tensor], bert_config: Mapping[str, Any],
                 vision_num_heads: int = 12) -> AlproConfig:
    """Sizes read off native-named tensor shapes; head counts, fusion layer and eps from the BERT config."""
    sd = state_dict
    width = _dim(sd, "video width", [("visual_encoder.cls_token", 2), ("visual_encoder.norm.weight", 0),
                                     ("visual_encoder.pos_embed", 2)])
    stem_modules = _count(sd, r"^visual_encoder\.patch_embed\.stem\.(\d+)\.weight$")  # last index + 1
    if stem_modules:  # conv stem: each level is conv, BatchNorm, ReLU (3 modules) and halves the resolution
        patch = 2 ** ((stem_modules + 2) // 3)
    else:
        patch = _dim(sd, "patch size", [("visual_encoder.patch_embed.proj.weight", 3)])
    num_patches = _dim(sd, "patch count", [("visual_encoder.pos_embed", 1)]) - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointError(f"visual_encoder pos_embed has {num_patches} patch rows, not a square grid")
    hidden_mlp = _dim(sd, "video MLP width", [("visual_encoder.blocks.0.mlp.fc1.weight", 0),
                                              ("visual_encoder.blocks.0.mlp.fc1.bias", 0),
                                              ("visual_encoder.blocks.0.mlp.fc2.weight", 1)])
    vision = VisionConfig(
        embed_dim=width,
        depth=_count(sd, r"^visual_encoder\.blocks\.(\d+)\."),
        num_heads=vision_num_heads,
        mlp_ratio=hidden_mlp / width,
        patch_size=patch,
        img_size=grid * patch,
        num_frames=_dim(sd, "frame count", [("visual_encoder.time_embed", 1)]),
        qkv_bias="visual_encoder.blocks.0.attn.qkv.bias" in sd,
        patch_stem="conv" if stem_modules else "linear",
    )
    text = TextConfig(
        vocab_size=_dim(sd, "vocabulary size", [("text_encoder.embeddings.word_embeddings.weight", 0),
                                                ("mlm_head.bias", 0)]),
        hidden_size=_dim(sd, "text width", [("text_encoder.embeddings.word_embeddings.weight", 1),
                                            ("text_encoder.embeddings.norm.weight", 0)]),
        num_layers=_count(sd, r"^text_encoder\.layers\.(\d+)\."),
        fusion_layer=int(bert_config.get("fusion_layer", 6)),
        num_heads=int(bert_config.get("num_attention_heads", 12)),
        intermediate_size=_dim(sd, "text feed-forward width", [("text_encoder.layers.0.fc1.weight", 0),
                                                               ("text_encoder.layers.0.fc1.bias", 0)]),
        max_position_embeddings=_dim(sd, "position count", [("text_encoder.embeddings.position_embeddings.weight", 0)]),
        type_vocab_size=_dim(sd, "token-type count", [("text_encoder.embeddings.token_type_embeddings.weight", 0)]),
        layer_norm_eps=float(bert_config.get("layer_norm_eps", 1e-12)),
        hidden_dropout=float(bert_config.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(bert_config.get("attention_probs_dropout_prob", 0.1)),
        pad_token_id=int(bert_config.get("pad_token_id", 0)),
    )
    _check_bert_config(text, bert_config)
    num_answers = _dim(sd, "answer count", [("qa_head.fc2.weight", 0), ("qa_head.fc2.bias", 0)]) \
        if any(k.startswith("qa_head.") for k in sd) else 0
    num_entities = _dim(sd, "entity count", [("pem_head.fc2.weight", 0), ("pem_head.fc2.bias", 0),
                                             ("prompter.video_prompt_feat", 0)]) \
        if any(k.startswith(("pem_head.", "prompter.")) for k in sd) else 0
    config = AlproConfig(
        vision=vision,
        text=text,
        preprocess=PreprocessConfig(),
        embed_dim=_dim(sd, "projection width", [("vision_proj.weight", 0), ("text_proj.weight", 0),
                                                ("vision_proj.bias", 0)]),
        mlm_head=any(k.startswith("mlm_head.") for k in sd),
        num_answers=num_answers,
        num_entities=num_entities,
    )
    config.validate()
    return config


def _check_bert_config(text: TextConfig, bert_config: Mapping[str, Any]) -> None:
    """The BERT config must agree with what the tensors say; a wrong config file is a user error."""
    pairs = {"hidden_size": text.hidden_size, "num_hidden_layers": text.num_layers,
             "intermediate_size": text.intermediate_size, "vocab_size": text.vocab_size,
             "max_position_embeddings": text.max_position_embeddings}
    wrong = [f"{name}={bert_config[name]} (checkpoint has {value})"
             for name, value in pairs.items() if name in bert_config and int(bert_config[name]) != value]
    if wrong:
        raise ConfigError("BERT config does not match the checkpoint: " + ", ".join(wrong))


def resize_embeddings(state_dict: dict[str, torch.Tensor], config: AlproConfig) -> dict[str, torch.Tensor]:
    """Resize time and position embeddings (model and prompter) to the config's frames and image size."""
    out = dict(state_dict)
    for prefix in ("", "prompter."):
        key = f"{prefix}visual_encoder.time_embed"
        if key in out:
            out[key] = resize_time_embed(out[key], config.vision.num_frames)
        key = f"{prefix}visual_encoder.pos_embed"
        if key in out:
            out[key] = resize_pos_embed(out[key], config.vision.num_patches)
    return out


def load_state_dict_strict(model: AlproModel, state_dict: Mapping[str, torch.Tensor],
                           source: str = "checkpoint", name: Callable[[str], str] = str) -> None:
    """Load or raise CheckpointError listing every missing, unexpected and mis-shaped key (as `name` shows it)."""
    expected = model.state_dict()
    missing = sorted(name(k) for k in expected if k not in state_dict)
    unexpected = sorted(name(k) for k in state_dict if k not in expected)
    mismatched = sorted(f"{name(k)}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                        for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit the model:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _official_namer(official_keys: list[str]):
    """native key -> the official name it had in this checkpoint (or would have had, for a missing key)."""
    known = {_rename(k, OFFICIAL_TO_NATIVE): k for k in official_keys}
    bert = "bert." if any(".bert." in k for k in official_keys) else ""
    return lambda key: known.get(key) or _rename(key, NATIVE_TO_OFFICIAL).replace("{bert}", bert)


def read_state_dict(checkpoint: Union[PathLike, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        return unwrap_state_dict(checkpoint)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing here
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
    return unwrap_state_dict(obj)


def read_bert_config(bert_config: Union[PathLike, Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(bert_config, Mapping):
        return dict(bert_config)
    path = Path(bert_config)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read BERT config {path}: {e}") from e


def load_official_checkpoint(checkpoint: Union[PathLike, Mapping[str, torch.Tensor]],
                             bert_config: Union[PathLike, Mapping[str, Any]], **overrides: Any) -> AlproModel:
    """Build an AlproModel from an official (or LAVIS re-hosted) ALPRO checkpoint, strictly, in eval mode.

    `bert_config` is the reference's model_config.json / base_model.json (a path or a dict). Overrides:
    `vision_num_heads` (default 12, not readable from weights), `num_frames` / `img_size` (embeddings are
    resized by nearest interpolation), and any AlproConfig field (e.g. `answers`, `max_text_len`).
    """
    official = read_state_dict(checkpoint)
    name = _official_namer(list(official))
    native = convert_official_state_dict(official)
    bert = read_bert_config(bert_config)
    config = infer_config(native, bert, vision_num_heads=int(overrides.pop("vision_num_heads", 12)))
    if overrides:
        config = apply_overrides(config, **overrides)
    native = resize_embeddings(native, config)
    model = AlproModel(config)
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint"
    load_state_dict_strict(model, native, source=source, name=name)
    return model.eval()


def save_official_checkpoint(model: AlproModel, path: PathLike) -> Path:
    """Write the official flat state dict (tied tensors shared, as the reference saves them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    moved: dict[int, torch.Tensor] = {}  # keep tied tensors shared after the move to CPU
    state_dict = {k: moved.setdefault(id(v), v.cpu()) for k, v in export_official_state_dict(model).items()}
    torch.save(state_dict, path)
    return path


def official_bert_config(config: AlproConfig) -> dict[str, Any]:
    """The reference's BERT config JSON (model_config.json) for this model."""
    t = config.text
    return {
        "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": t.attention_dropout,
        "hidden_act": "gelu", "hidden_dropout_prob": t.hidden_dropout, "hidden_size": t.hidden_size,
        "initializer_range": 0.02, "intermediate_size": t.intermediate_size, "layer_norm_eps": t.layer_norm_eps,
        "max_position_embeddings": t.max_position_embeddings, "model_type": "bert",
        "num_attention_heads": t.num_heads, "num_hidden_layers": t.num_layers, "pad_token_id": t.pad_token_id,
        "type_vocab_size": t.type_vocab_size, "vocab_size": t.vocab_size, "fusion_layer": t.fusion_layer,
        "encoder_width": config.vision.embed_dim,
    }


# --------------------------------------------------------------------------------------------------
# Native format


def save_pretrained(model: AlproModel, directory: PathLike) -> Path:
    """Directory with model.safetensors and config.json (the config records the pre-processing), written
    atomically: it appears (or replaces a checkpoint there) whole, or not at all if the process dies."""
    # model.install writes directories for the hub too and imports this module, hence the late import
    from .install import publish_directory, staged_directory

    directory = Path(directory)
    target = directory.resolve()  # staged beside the real directory, so that the rename stays on one file system
    with staged_directory(target) as stage:
        write_native_files(model, stage)
        publish_directory(stage, target)
    return directory


def write_native_files(model: AlproModel, directory: PathLike) -> None:
    """model.safetensors and config.json into the existing `directory`, in place: for a stage that a caller
    fills (with other files too) and then publishes (model.install.publish_directory)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": NATIVE_FORMAT})
    payload = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "config": model.config.to_dict()}
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")


def read_native_config(directory: PathLike) -> AlproConfig:
    path = Path(directory) / CONFIG_NAME
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"not a native ALPRO checkpoint directory ({path}: {e})") from e
    if payload.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path} is not an {NATIVE_FORMAT} config (format={payload.get('format')!r})")
    if int(payload.get("version", 0)) > NATIVE_VERSION:
        raise CheckpointError(f"{path} has format version {payload['version']}; this code reads <= {NATIVE_VERSION}")
    return AlproConfig.from_dict(payload["config"])


def load_pretrained(directory: PathLike, map_location: Union[str, torch.device] = "cpu",
                    **overrides: Any) -> AlproModel:
    """Load a native checkpoint directory strictly, in eval mode; overrides as in load_official_checkpoint."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_native_config(directory)
    if overrides:
        config = apply_overrides(config, **overrides)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"missing weights file {weights}")
    state_dict = resize_embeddings(load_file(str(weights)), config)
    model = AlproModel(config)
    load_state_dict_strict(model, state_dict, source=str(weights))
    return model.to(map_location).eval()


def load_model(path: PathLike, bert_config: Union[PathLike, Mapping[str, Any], None] = None,
               **overrides: Any) -> AlproModel:
    """A native directory, or an official .pt file (then `bert_config` is required)."""
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path, **overrides)
    if bert_config is None:
        raise ConfigError(f"{path} is an official checkpoint file; pass its BERT config (model_config.json)")
    return load_official_checkpoint(path, bert_config, **overrides)


def checkpoint_fingerprint(model: AlproModel) -> str:
    """A short content hash of weights and config: identifies the model that made an index. Init-only settings
    are left out, so adding one keeps the fingerprints (and indexes) of existing checkpoints valid."""
    import hashlib

    digest = hashlib.sha256(json.dumps(model.config.identity_dict(), sort_keys=True).encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
