"""Checkpoint conversion: round trips, strict errors, LAVIS keys, embedding resizing, official key sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from model import (CheckpointError, ConfigError, create_model, export_official_state_dict, load_model,
                   load_official_checkpoint, load_pretrained, save_official_checkpoint)
from model.checkpoint import official_bert_config
from tests.conftest import REFERENCE, assert_same_outputs, load_reference

RETRIEVAL = REFERENCE / "retrieval_model_step_best.pt"
QA = REFERENCE / "qa_model_step_best.pt"
BERT = REFERENCE / "base_model.json"


def official(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("path", [RETRIEVAL, QA])
def test_official_to_native_keeps_outputs(path, tmp_path):
    model = load_official_checkpoint(path, BERT, vision_num_heads=4)
    model.save_pretrained(tmp_path / "native")
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == ["config.json", "model.safetensors"]
    again = load_pretrained(tmp_path / "native")
    assert again.config == model.config
    assert_same_outputs(model, again)


@pytest.mark.parametrize("path", [RETRIEVAL, QA])
def test_official_export_reproduces_the_reference_file(path, tmp_path):
    source = official(path)
    model = load_official_checkpoint(path, BERT, vision_num_heads=4)
    exported = export_official_state_dict(model)
    assert list(exported) == list(source) or sorted(exported) == sorted(source)
    for key, value in source.items():
        if key.endswith("model.head.weight") or key.endswith("model.head.bias"):
            continue  # the unused Kinetics head is written as zeros
        assert exported[key].dtype == value.dtype, key
        assert torch.equal(exported[key], value), key
    save_official_checkpoint(model, tmp_path / "out.pt")
    reloaded = load_official_checkpoint(tmp_path / "out.pt", official_bert_config(model.config), vision_num_heads=4)
    assert_same_outputs(model, reloaded)


def test_exported_mlm_decoder_stays_tied(tmp_path):
    model = load_official_checkpoint(RETRIEVAL, BERT, vision_num_heads=4)
    save_official_checkpoint(model, tmp_path / "out.pt")
    sd = official(tmp_path / "out.pt")
    decoder = sd["text_encoder.cls.predictions.decoder.weight"]
    words = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    assert decoder.untyped_storage().data_ptr() == words.untyped_storage().data_ptr()


def test_lavis_rehosted_keys_load_the_same(tmp_path):
    lavis = {k.replace("bert.", ""): v for k, v in official(RETRIEVAL).items()}
    torch.save({"model": lavis}, tmp_path / "alpro_msrvtt_retrieval.pt")
    model = load_official_checkpoint(tmp_path / "alpro_msrvtt_retrieval.pt", BERT, vision_num_heads=4)
    assert_same_outputs(model, load_official_checkpoint(RETRIEVAL, BERT, vision_num_heads=4))


@pytest.mark.parametrize("removed", ["text_encoder.bert.encoder.layer.1.attention.self.key.weight",
                                     "visual_encoder.model.blocks.0.temporal_fc.bias", "itm_head.weight",
                                     "text_encoder.cls.predictions.transform.dense.weight", "temp"])
def test_missing_key_is_named(removed, tmp_path):
    sd = official(RETRIEVAL)
    del sd[removed]
    with pytest.raises(CheckpointError, match="missing keys") as info:
        load_official_checkpoint(sd, BERT, vision_num_heads=4)
    assert removed in str(info.value)


def test_unexpected_key_is_named():
    sd = official(RETRIEVAL)
    sd["text_encoder.bert.encoder.layer.1.attention.self.extra.weight"] = torch.zeros(3)
    sd["visual_encoder.model.blocks.0.spare"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected keys") as info:
        load_official_checkpoint(sd, BERT, vision_num_heads=4)
    assert "text_encoder.bert.encoder.layer.1.attention.self.extra.weight" in str(info.value)
    assert "visual_encoder.model.blocks.0.spare" in str(info.value)


def test_wrong_shape_is_named():
    sd = official(RETRIEVAL)
    sd["text_encoder.bert.encoder.layer.0.intermediate.dense.bias"] = torch.zeros(255)
    sd["itm_head.weight"] = torch.zeros(3, 64)
    with pytest.raises(CheckpointError, match="shape mismatches") as info:
        load_official_checkpoint(sd, BERT, vision_num_heads=4)
    message = str(info.value)
    assert "text_encoder.bert.encoder.layer.0.intermediate.dense.bias" in message
    assert "itm_head.weight: checkpoint (3, 64) vs model (2, 64)" in message


def test_untied_decoder_is_refused():
    sd = official(RETRIEVAL)
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(CheckpointError, match="not tied"):
        load_official_checkpoint(sd, BERT, vision_num_heads=4)


def test_bert_config_that_contradicts_the_weights_is_refused():
    config = json.loads(BERT.read_text()) | {"hidden_size": 768}
    with pytest.raises(ConfigError, match="hidden_size=768"):
        load_official_checkpoint(RETRIEVAL, config, vision_num_heads=4)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_official_checkpoint(bad, BERT)
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "absent.pt", BERT)
    with pytest.raises(CheckpointError, match="not a native"):
        load_pretrained(tmp_path)


def test_frames_and_image_size_overrides_resize_embeddings_by_nearest():
    sd = official(RETRIEVAL)
    model = load_official_checkpoint(sd, BERT, vision_num_heads=4, num_frames=4, img_size=64)
    assert model.config.vision.num_frames == 4 and model.config.vision.img_size == 64
    time_embed = sd["visual_encoder.model.time_embed"]  # (1, 2, D) -> nearest to 4 repeats each frame twice
    torch.testing.assert_close(model.visual_encoder.time_embed, time_embed[:, [0, 0, 1, 1]])
    pos = sd["visual_encoder.model.pos_embed"]  # (1, 1+4, D) -> (1, 1+16, D): cls kept, 1-D nearest x4
    expected = torch.cat([pos[:, :1], pos[:, 1:].repeat_interleave(4, dim=1)], dim=1)
    torch.testing.assert_close(model.visual_encoder.pos_embed, expected)
    video = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        assert model.encode_video(video).shape == (2, 256)


def test_load_model_dispatches_on_path(tmp_path):
    model = load_model(RETRIEVAL, bert_config=BERT, vision_num_heads=4)
    model.save_pretrained(tmp_path / "native")
    assert_same_outputs(model, load_model(tmp_path / "native"))
    with pytest.raises(ConfigError, match="BERT config"):
        load_model(RETRIEVAL)


def read_key_table(name: str) -> dict[str, tuple[int, ...]]:
    table = {}
    for line in (REFERENCE / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        table[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return table


@pytest.mark.parametrize("table,overrides", [
    ("full_size_keys_retrieval.tsv", {}),
    ("full_size_keys_qa.tsv", {"num_frames": 16, "num_answers": 1500, "mlm_head": False}),
    ("full_size_keys_pretrain.tsv", {"num_frames": 4, "num_entities": 1000}),
])
def test_base_preset_exports_exactly_the_official_full_size_keys(table, overrides):
    with torch.device("meta"):
        model = create_model("base", **overrides)
    exported = {k: tuple(v.shape) for k, v in export_official_state_dict(model).items()}
    assert exported == read_key_table(table)


def test_fingerprint_ignores_init_only_settings_and_sees_weights():
    from model import checkpoint_fingerprint

    torch.manual_seed(0)
    base = create_model("tiny")
    other = create_model("tiny", text_init_std=0.15, vision_pos_init_std=0.5, vision_time_init_std=0.5)
    other.load_state_dict(base.state_dict())
    assert checkpoint_fingerprint(other) == checkpoint_fingerprint(base)  # same weights, same function
    with torch.no_grad():
        other.temp.add_(0.01)
    assert checkpoint_fingerprint(other) != checkpoint_fingerprint(base)
    deeper = create_model("tiny", vision_drop_path_rate=0.3)
    deeper.load_state_dict(base.state_dict())
    assert checkpoint_fingerprint(deeper) != checkpoint_fingerprint(base)  # other config fields still count


def test_conv_patch_stem_round_trips_native_and_official(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", vision_patch_stem="conv")
    model.train()
    with torch.no_grad():  # BatchNorm running statistics away from their initial values
        model.visual_encoder(torch.randn(4, *load_reference("video.pt").shape[1:]) * 2 + 1)
    model.eval()
    model.save_pretrained(tmp_path / "native")
    native = load_pretrained(tmp_path / "native")
    assert native.config == model.config
    assert_same_outputs(model, native)
    save_official_checkpoint(model, tmp_path / "out.pt")
    assert "visual_encoder.model.patch_embed.stem.0.weight" in official(tmp_path / "out.pt")
    reloaded = load_official_checkpoint(tmp_path / "out.pt", official_bert_config(model.config),
                                        vision_num_heads=model.config.vision.num_heads)
    assert reloaded.config.vision.patch_stem == "conv"
    assert reloaded.config.vision.patch_size == model.config.vision.patch_size
    assert_same_outputs(model, reloaded)


def test_settings_added_later_count_in_the_fingerprint_only_when_set():
    from model import checkpoint_fingerprint

    torch.manual_seed(0)
    base = create_model("tiny")
    # a checkpoint saved before these settings existed has the same identity as one saved now at the defaults
    assert not {"cls_time", "time_segments", "fusion_pos"} & set(base.config.identity_dict()["vision"])
    for setting, value in (("vision_cls_time", True), ("vision_time_segments", 2), ("vision_fusion_pos", True)):
        changed = create_model("tiny", **{setting: value})
        changed.load_state_dict(base.state_dict())  # no new weights: only the function differs
        assert checkpoint_fingerprint(changed) != checkpoint_fingerprint(base), setting


def test_save_pretrained_replaces_a_checkpoint_whole(tmp_path):
    target = tmp_path / "native"
    torch.manual_seed(0)
    create_model("tiny").save_pretrained(target)
    (target / "stale.txt").write_text("from the older checkpoint")
    torch.manual_seed(1)
    new = create_model("tiny", max_text_len=12)
    assert new.save_pretrained(target) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    again = load_pretrained(target)
    assert again.config == new.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in new.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["native"]  # no stage or old copy left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it (readable by a service)


def test_save_pretrained_fsyncs_everything_before_the_rename(tmp_path, monkeypatch):
    import model.install

    events = []
    monkeypatch.setattr(model.install, "_fsync_file", lambda path: events.append(("file", Path(path).name)))
    monkeypatch.setattr(model.install, "_fsync_dir", lambda path: events.append(("dir", Path(path))))
    rename = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: (events.append(("rename", Path(dst))), rename(src, dst)))
    create_model("tiny").save_pretrained(tmp_path / "native")
    published = events.index(("rename", tmp_path / "native"))
    assert {("file", "config.json"), ("file", "model.safetensors")} <= set(events[:published])
    assert events[published - 1][0] == "dir"  # the stage itself, after its files
    assert ("dir", tmp_path) in events[published + 1:]  # the rename made durable


def test_save_pretrained_refuses_to_replace_other_data(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        create_model("tiny").save_pretrained(target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]
