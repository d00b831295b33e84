"""Checkpoints written by alpro-train load through the native loader (and `load_model`) and, exported to
the official format, through load_official_checkpoint with the same weights and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import (Tokenizer, load_model, load_official_checkpoint, load_pretrained, save_official_checkpoint)
from model.checkpoint import official_bert_config
from training import synth
from training.config import load_config
from training.trainer import train

from .test_training_ddp import tiny_prompter

COMMON = ["data.source=synthetic", "data.synth_epoch_clips=16", "data.num_workers=0", "train.batch_size=4",
          "train.max_steps=2", "train.progress=false", "model.overrides.max_text_len=20"]


def trained(tmp_path: Path, task: str, extra: list[str] = ()) -> Path:
    result = train(load_config(None, [*COMMON, f"train.output_dir={tmp_path / task}", *extra], task=task))
    return Path(result.final)


def same_outputs(a, b) -> None:
    torch.manual_seed(0)
    c = a.config
    video = torch.randn(2, c.num_frames, 3, c.img_size, c.img_size)
    ids, mask = Tokenizer.from_config(c)(["a red circle moves left", "what colour is the square?"])
    with torch.no_grad():
        assert torch.allclose(a.encode_video(video), b.encode_video(video), atol=1e-6)
        assert torch.allclose(a.encode_text(ids, mask), b.encode_text(ids, mask), atol=1e-6)
        if c.num_answers:
            assert torch.allclose(a.answer_logits(video, ids, mask), b.answer_logits(video, ids, mask), atol=1e-5)
        else:
            assert torch.allclose(a.vtm_logits(video, ids, mask), b.vtm_logits(video, ids, mask), atol=1e-5)


def round_trip(tmp_path: Path, native_dir: Path, **overrides):
    native = load_pretrained(native_dir)
    assert load_model(native_dir).config == native.config
    official = save_official_checkpoint(native, tmp_path / "official" / native_dir.parent.name / "model_step_best.pt")
    bert = official.with_name("model_config.json")
    bert.write_text(json.dumps(official_bert_config(native.config)))
    loaded = load_official_checkpoint(official, bert, vision_num_heads=native.config.vision.num_heads,
                                      max_text_len=native.config.preprocess.max_text_len, **overrides)
    a, b = native.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    same_outputs(native, loaded)
    return native, loaded


def test_retrieval_checkpoint_exports(tmp_path):
    native, loaded = round_trip(tmp_path, trained(tmp_path, "finetune-retrieval"))
    assert native.config.preprocess.max_text_len == 20 and loaded.config.mlm_head


def test_qa_checkpoint_exports_with_its_answers(tmp_path):
    native_dir = trained(tmp_path, "finetune-qa")
    native = load_pretrained(native_dir)
    assert native.config.answers and native.config.num_answers == len(native.config.answers)
    _, loaded = round_trip(tmp_path, native_dir, answers=native.config.answers)
    assert loaded.config.answers == native.config.answers


def test_pretrain_checkpoint_with_prompter_exports(tmp_path):
    prompter = tiny_prompter(tmp_path / "prompter", {}, synth.entity_vocabulary())
    native_dir = trained(tmp_path, "pretrain", [f"model.prompter={prompter}"])
    native, loaded = round_trip(tmp_path, native_dir)
    assert native.config.num_entities == len(synth.entity_vocabulary())
    assert torch.equal(loaded.prompter.video_prompt_feat, load_pretrained(prompter).video_prompt_feat)


def test_prompter_checkpoint_holds_prompt_features(tmp_path):
    native_dir = trained(tmp_path, "pretrain-prompter")
    model = load_pretrained(native_dir)
    entities = (native_dir / "entities.txt").read_text().split("\n")[:-1]
    assert entities == synth.entity_vocabulary() and model.config.prompt_entities == len(entities)
    norms = model.video_prompt_feat.norm(dim=-1)
    assert bool((norms > 0.05).all() and (norms <= 1.0 + 1e-5).all())  # means of unit vectors
    with pytest.raises(Exception):
        load_official_checkpoint({"temp": torch.tensor(1.0)}, official_bert_config(model.config))


def test_conv_stem_checkpoint_exports_and_frozen_encoders_keep_its_statistics(tmp_path):
    retrieval = trained(tmp_path, "finetune-retrieval", ["model.overrides.vision_patch_stem=conv"])
    native, loaded = round_trip(tmp_path, retrieval)
    assert loaded.config.vision.patch_stem == "conv"

    def stats(model) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if ".stem." in k and "running_" in k}

    before = stats(native)
    assert before and not all(torch.equal(v, torch.zeros_like(v)) for v in before.values())  # trained
    for mult, kept in (("0.0", True), ("1.0", False)):
        qa = trained(tmp_path / mult, "finetune-qa", [f"model.init={retrieval}", f"optim.encoder_lr_mult={mult}"])
        after = stats(load_pretrained(qa))
        # frozen encoders: BatchNorm stays in eval mode and keeps the statistics it was trained with
        assert all(torch.equal(before[k], after[k]) for k in before) is kept, mult
