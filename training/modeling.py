"""Build the network a task trains: from a preset, from BERT/ViT weights, or from a checkpoint whose heads
differ (pre-trained -> retrieval / QA; ALPRO_REFERENCE.md "Checkpoints" for which heads each kind has).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from model import AlproConfig, AlproModel, CheckpointError, create_model_from_pretrained, load_model, preset_config
from model.alpro import prompter_config
from model.checkpoint import read_native_config

from .config import ModelSection

logger = logging.getLogger(__name__)

# Heads a task may add (missing in the source) or drop (present in the source but not wanted).
HEAD_PREFIXES = ("qa_head.", "pem_head.", "prompter.", "mlm_head.")
# Frame count and image size are resized on load; other overrides apply to the new config only.
RESIZE_KEYS = ("num_frames", "img_size", "vision_num_heads")


def base_config(section: ModelSection) -> AlproConfig:
    """The architecture: the init checkpoint's (plus overrides) or the preset's (plus overrides)."""
    overrides = dict(section.overrides)
    if section.init:
        path = Path(section.init)
        if path.is_dir():
            config = read_native_config(path)
        else:
            config = load_model(path, section.init_bert_config).config
        extra = {k: v for k, v in overrides.items() if k != "vision_num_heads"}
        return config.replace(**extra) if extra else config
    return preset_config(section.preset, **overrides)


def task_config(base: AlproConfig, task: str, num_entities: int = 0,
                answers: Sequence[str] = ()) -> AlproConfig:
    """The config a task trains, derived from the base architecture."""
    if task == "pretrain-prompter":
        return prompter_config(base.replace(num_entities=num_entities))
    if task == "pretrain":
        return base.replace(num_entities=num_entities, num_answers=0, answers=(), mlm_head=True, prompt_entities=0)
    if task == "finetune-retrieval":
        return base.replace(num_entities=0, num_answers=0, answers=(), mlm_head=True, prompt_entities=0)
    if task == "finetune-qa":
        return base.replace(num_entities=0, num_answers=len(answers), answers=tuple(answers), mlm_head=False,
                            prompt_entities=0)
    raise ValueError(f"unknown task {task!r}")


def copy_weights(target: AlproModel, source: dict[str, torch.Tensor], source_name: str,
                 allow_missing: Sequence[str] = HEAD_PREFIXES, allow_unexpected: Sequence[str] = HEAD_PREFIXES) -> None:
    """Load `source` into `target`; keys may be missing/unexpected only under head prefixes; loud otherwise."""
    expected = target.state_dict()
    missing = [k for k in expected if k not in source]
    unexpected = [k for k in source if k not in expected]
    mismatched = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in source.items()
                  if k in expected and v.shape != expected[k].shape]
    bad_missing = [k for k in missing if not k.startswith(tuple(allow_missing))]
    bad_unexpected = [k for k in unexpected if not k.startswith(tuple(allow_unexpected))]
    if bad_missing or bad_unexpected or mismatched:
        raise CheckpointError(f"{source_name} does not fit the model beyond its heads: missing {bad_missing}, "
                              f"unexpected {bad_unexpected}, mismatched {mismatched}")
    state = {k: v for k, v in source.items() if k in expected}
    target.load_state_dict(state, strict=False)
    heads = sorted({k.split(".")[0] for k in missing})
    dropped = sorted({k.split(".")[0] for k in unexpected})
    logger.info("initialised from %s (%d tensors); new: %s; dropped: %s", source_name, len(state),
                heads or "none", dropped or "none")


def build_model(section: ModelSection, config: AlproConfig, seed: int) -> AlproModel:
    """The task's model with its initial weights (random / BERT+ViT / a checkpoint)."""
    torch.manual_seed(seed)  # every rank builds the same random init
    if section.init:
        resize = {k: v for k, v in section.overrides.items() if k in RESIZE_KEYS}
        resize.setdefault("num_frames", config.num_frames)
        resize.setdefault("img_size", config.img_size)
        source = load_model(section.init, section.init_bert_config, **resize)
        model = AlproModel(config)
        copy_weights(model, source.state_dict(), section.init)
    elif section.bert_dir or section.vit_weights:
        model = create_model_from_pretrained(config, bert_dir=section.bert_dir, vit_weights=section.vit_weights)
    else:
        model = AlproModel(config)
    if section.prompter:
        load_prompter(model, section.prompter)
    return model


def load_prompter(model: AlproModel, path: str) -> None:
    """Copy a `pretrain-prompter` checkpoint (weights + prompt features) into model.prompter, strictly."""
    if model.prompter is None:
        raise CheckpointError("the model has no prompter (num_entities=0) to load into")
    prompter = load_model(path, num_frames=model.config.num_frames, img_size=model.config.img_size)
    if prompter.config.prompt_entities != model.config.num_entities:
        raise CheckpointError(f"prompter {path} holds {prompter.config.prompt_entities} entity prompts, "
                              f"the model's PEM head has {model.config.num_entities}")
    if not bool(prompter.video_prompt_feat.abs().sum() > 0):
        raise CheckpointError(f"prompter {path} has empty prompt features (build them before saving)")
    model.prompter.load_state_dict(prompter.state_dict(), strict=True)


def freeze(model: AlproModel, task: str, weights: dict[str, float]) -> list[str]:
    """Turn off gradients of what the task's losses do not use (DDP needs every trainable parameter used).

    The prompter is always frozen (a teacher during pre-training); a loss with weight 0 frees its head,
    and without VTM, MLM, PEM or QA nothing runs the fusion layers.
    """
    config = model.config
    fusion_layers = [f"text_encoder.layers.{i}." for i in range(config.text.fusion_layer, config.text.num_layers)]
    qa = task == "finetune-qa"
    frozen_prefixes: list[str] = ["prompter."]
    if qa or weights.get("vtc", 0) <= 0:
        frozen_prefixes += ["vision_proj.", "text_proj.", "temp"]
    if qa or weights.get("vtm", 0) <= 0:
        frozen_prefixes += ["itm_head."]
    if qa or weights.get("mlm", 0) <= 0:
        frozen_prefixes += ["mlm_head."]
    if not qa and not any(weights.get(k, 0) > 0 for k in ("vtm", "mlm", "pem")):
        frozen_prefixes += fusion_layers
    frozen = []
    for name, param in model.named_parameters():
        if name.startswith(tuple(frozen_prefixes)):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def new_head_prefixes(section: ModelSection, task: str) -> tuple[str, ...]:
    """Heads that start from random weights in this run (they may get a larger learning rate)."""
    if not section.init:
        return ()
    return {"finetune-qa": ("qa_head.",), "pretrain": ("pem_head.",)}.get(task, ())
