"""Initialisation from BERT (Hugging Face directory) and ImageNet ViT (timm state dict), compared with the
originals' own outputs on tiny random models, plus the copy rules and strict errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model import CheckpointError, ConfigError, create_model
from model.config import PRESETS
from model.pretrained_init import create_model_from_pretrained, init_text_from_bert, init_video_from_vit

transformers = pytest.importorskip("transformers")
timm_vit = pytest.importorskip("timm.models.vision_transformer")

ATOL = 1e-5
FUSION_LAYER = 2  # the tiny preset's


def _randomise_(module: nn.Module, seed: int) -> None:
    """Redraw every parameter so that no LayerNorm is identity and no bias is zero (a mapping slip shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1 and ("norm" in name.lower()):
                param.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            elif "embed" in name or "token" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / (param.numel() // param.shape[0]) ** 0.5)


def _bert_config():
    return transformers.BertConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, vocab_size=30522,
        max_position_embeddings=64, attn_implementation="eager", dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory) -> tuple[nn.Module, Path]:
    hf = transformers.BertForMaskedLM(_bert_config())
    _randomise_(hf, seed=1)
    hf.eval()
    directory = tmp_path_factory.mktemp("bert_mlm")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="module")
def bert_plain(tmp_path_factory) -> tuple[nn.Module, Path]:
    hf = transformers.BertModel(_bert_config())  # with its pooler, which ALPRO ignores
    _randomise_(hf, seed=2)
    hf.eval()
    directory = tmp_path_factory.mktemp("bert_plain")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> tuple[nn.Module, Path]:
    net = timm_vit.VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    _randomise_(net, seed=3)
    net.eval()
    path = tmp_path_factory.mktemp("vit") / "vit_tiny.pth"
    torch.save(net.state_dict(), path)
    return net, path


def _text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(999, 30522, (3, 12), generator=gen)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _assert_matches_bert(model, bert: nn.Module) -> None:
    """Our text layers = BERT after `fusion_layer` layers; our fusion layers on text alone = BERT's last state."""
    ids, mask = _text_batch()
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        text = model.text_tokens(ids, mask)
        fused = model.text_encoder.fuse(text, mask)
    torch.testing.assert_close(text, ref.hidden_states[FUSION_LAYER], atol=ATOL, rtol=0)
    torch.testing.assert_close(fused, ref.last_hidden_state, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# Text


def test_tiny_preset_matches_the_test_bert():
    text = PRESETS["tiny"].text
    assert (text.hidden_size, text.num_layers, text.fusion_layer, text.num_heads, text.intermediate_size,
            text.max_position_embeddings, text.vocab_size) == (64, 4, FUSION_LAYER, 4, 256, 64, 30522)


def test_bert_mlm_directory_gives_bert_outputs(bert_mlm):
    hf, directory = bert_mlm
    model = create_model("tiny")
    ids, mask = _text_batch()
    with torch.no_grad():
        before = model.text_tokens(ids, mask)
        ref_hidden = hf.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert not torch.allclose(before, ref_hidden[FUSION_LAYER], atol=1e-2)  # the comparison can fail

    init_text_from_bert(model, directory)

    _assert_matches_bert(model, hf.bert)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        head_logits = model.mlm_logits(ref.hidden_states[-1])  # the head alone, on BERT's last hidden state
        logits = model.mlm_logits(model.text_encoder.fuse(model.text_tokens(ids, mask), mask))
    assert ref.logits.abs().max() > 5  # random embeddings make logits O(10)
    torch.testing.assert_close(head_logits, ref.logits, atol=ATOL, rtol=0)
    # End to end, the 1e-6 differences of the hidden states grow by the logit scale.
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-5)
    # Same-index layers, fusion layers included, and the head: spot checks against BERT's own tensors.
    torch.testing.assert_close(model.text_encoder.layers[3].fc1.weight, hf.bert.encoder.layer[3].intermediate.dense.weight,
                               atol=0, rtol=0)
    torch.testing.assert_close(model.mlm_head.norm.bias, hf.cls.predictions.transform.LayerNorm.bias, atol=0, rtol=0)


def test_bert_model_directory_without_mlm_head(bert_plain, caplog):
    hf, directory = bert_plain
    model = create_model("tiny")
    head_before = {k: v.clone() for k, v in model.mlm_head.state_dict().items()}

    with caplog.at_level(logging.WARNING, logger="model.pretrained_init"):
        init_text_from_bert(model, directory)

    _assert_matches_bert(model, hf)
    for key, value in model.mlm_head.state_dict().items():
        assert torch.equal(value, head_before[key]), f"mlm_head.{key} changed without a source"
    assert "no MLM head" in caplog.text


def test_legacy_pytorch_bin_with_gamma_beta_pooler_and_nsp(bert_mlm, tmp_path):
    """bert-base-uncased's original file: pytorch_model.bin, LayerNorm gamma/beta, pooler, NSP head, decoder."""
    hf, _ = bert_mlm
    state = {}
    for key, value in hf.state_dict().items():
        if "LayerNorm." in key:
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[key] = value.clone()
    assert "cls.predictions.decoder.weight" in state  # tied copy of the word embeddings
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    state["bert.pooler.dense.weight"] = torch.randn(64, 64)
    state["bert.pooler.dense.bias"] = torch.randn(64)
    state["cls.seq_relationship.weight"] = torch.randn(2, 64)
    state["cls.seq_relationship.bias"] = torch.randn(2)
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")

    model = create_model("tiny")
    init_text_from_bert(model, tmp_path)

    _assert_matches_bert(model, hf.bert)
    torch.testing.assert_close(model.mlm_head.dense.weight, hf.cls.predictions.transform.dense.weight, atol=0, rtol=0)


def test_prompter_gets_the_same_text_init(bert_mlm):
    hf, directory = bert_mlm
    model = create_model("tiny", num_entities=5)
    assert model.prompter is not None
    init_text_from_bert(model, directory)
    _assert_matches_bert(model.prompter, hf.bert)
    torch.testing.assert_close(model.prompter.mlm_head.dense.bias, hf.cls.predictions.transform.dense.bias,
                               atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# Video


def _zero_first_temporal_fc(model) -> None:
    with torch.no_grad():
        model.visual_encoder.blocks[0].temporal_fc.weight.zero_()
        model.visual_encoder.blocks[0].temporal_fc.bias.zero_()


def _assert_matches_vit(model, net: nn.Module) -> None:
    """With identical frames and no temporal mixing, the TimeSformer is the ViT applied to one frame."""
    t = model.config.num_frames
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    clip = img[:, None].expand(2, t, 3, 32, 32).contiguous()  # (B, T, C, H, W), T identical frames
    with torch.no_grad():
        ours = model.video_tokens(clip)
        ref = net.forward_features(img)  # (B, 1 + N, D) after the final norm
    torch.testing.assert_close(ours[:, 0], ref[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[:, 1:], ref[:, 1:], atol=ATOL, rtol=0)


def _assert_copy_rules(encoder, net: nn.Module) -> None:
    assert torch.count_nonzero(encoder.time_embed) == 0
    torch.testing.assert_close(encoder.cls_token, net.cls_token, atol=0, rtol=0)
    torch.testing.assert_close(encoder.pos_embed, net.pos_embed, atol=0, rtol=0)
    torch.testing.assert_close(encoder.patch_embed.proj.weight, net.patch_embed.proj.weight, atol=0, rtol=0)
    for i, (ours, theirs) in enumerate(zip(encoder.blocks, net.blocks)):
        for attn in (ours.attn, ours.temporal_attn):
            for part in ("qkv", "proj"):
                for p in ("weight", "bias"):
                    assert torch.equal(getattr(getattr(attn, part), p), getattr(getattr(theirs.attn, part), p)), \
                        f"block {i} {part}.{p}"
        for norm in (ours.norm1, ours.temporal_norm1):
            assert torch.equal(norm.weight, theirs.norm1.weight) and torch.equal(norm.bias, theirs.norm1.bias)
        assert torch.equal(ours.norm2.weight, theirs.norm2.weight)
        assert torch.equal(ours.mlp.fc1.weight, theirs.mlp.fc1.weight)
        assert torch.equal(ours.mlp.fc2.bias, theirs.mlp.fc2.bias)
        if i >= 1:
            assert torch.count_nonzero(ours.temporal_fc.weight) == 0 and torch.count_nonzero(ours.temporal_fc.bias) == 0
    assert torch.equal(encoder.norm.weight, net.norm.weight) and torch.equal(encoder.norm.bias, net.norm.bias)


def test_vit_copy_rules_and_block0_temporal_fc_kept(vit):
    net, path = vit
    model = create_model("tiny")
    with torch.no_grad():  # make every target value of the init visibly different beforehand
        for block in model.visual_encoder.blocks:
            block.temporal_fc.weight.normal_()
            block.temporal_fc.bias.normal_()
        model.visual_encoder.time_embed.normal_()
    fc0 = model.visual_encoder.blocks[0].temporal_fc.weight.clone()

    init_video_from_vit(model, path)

    _assert_copy_rules(model.visual_encoder, net)
    assert torch.equal(model.visual_encoder.blocks[0].temporal_fc.weight, fc0)  # the reference leaves it random
    assert torch.count_nonzero(fc0) > 0


@pytest.mark.parametrize("fmt", ["pth", "wrapped", "safetensors"])
def test_vit_init_gives_vit_outputs_on_a_still_clip(vit, tmp_path, fmt):
    net, pth = vit
    if fmt == "pth":
        path = pth
    elif fmt == "wrapped":
        path = tmp_path / "wrapped.pth"
        torch.save({"model": net.state_dict()}, path)
    else:
        path = tmp_path / "vit.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = create_model("tiny")
    _zero_first_temporal_fc(model)
    with torch.no_grad():
        before = model.video_tokens(torch.zeros(1, 2, 3, 32, 32))
    assert not torch.allclose(before[:, 0], net.forward_features(torch.zeros(1, 3, 32, 32))[:, 0].detach(), atol=1e-2)

    init_video_from_vit(model, path)
    _zero_first_temporal_fc(model)

    _assert_matches_vit(model, net)


def test_vit_pos_embed_resized_by_nearest_rule(vit, caplog):
    net, path = vit
    model = create_model("tiny", img_size=48)  # 3x3 = 9 patches from timm's 2x2 = 4
    with caplog.at_level(logging.WARNING, logger="model.pretrained_init"):
        init_video_from_vit(model, path)
    src = net.pos_embed.detach()
    rows = [0, 0, 0, 1, 1, 2, 2, 3, 3]  # floor(i * 4 / 9): 1-D nearest over the flattened grid
    expected = torch.cat([src[:, :1], src[:, 1:][:, rows]], dim=1)
    torch.testing.assert_close(model.visual_encoder.pos_embed, expected, atol=0, rtol=0)
    assert "resizing ViT pos_embed from 4 to 9" in caplog.text


def test_prompter_gets_the_same_video_init(vit):
    net, path = vit
    model = create_model("tiny", num_entities=5)
    init_video_from_vit(model, path)
    _assert_copy_rules(model.prompter.visual_encoder, net)
    _zero_first_temporal_fc(model.prompter)
    _assert_matches_vit(model.prompter, net)


def test_create_model_from_pretrained(bert_mlm, vit):
    hf, bert_dir = bert_mlm
    net, vit_path = vit
    model = create_model_from_pretrained("tiny", bert_dir=bert_dir, vit_weights=vit_path, embed_dim=32)
    assert model.config.embed_dim == 32 and model.vision_proj.out_features == 32
    assert not model.training
    _assert_matches_bert(model, hf.bert)
    _assert_copy_rules(model.visual_encoder, net)

    from_config = create_model_from_pretrained(PRESETS["tiny"], bert_dir=bert_dir, num_frames=4)
    assert from_config.config.num_frames == 4
    _assert_matches_bert(from_config, hf.bert)


# --------------------------------------------------------------------------------------------------
# Errors


def _bert_copy(directory: Path, dest: Path, edit=None, config_edit=None) -> Path:
    state = load_file(str(directory / "model.safetensors"))
    if edit:
        edit(state)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_bert_missing_key_is_named_and_nothing_is_loaded(bert_mlm, tmp_path):
    _, directory = bert_mlm
    bad = _bert_copy(directory, tmp_path / "bad",
                     edit=lambda s: s.pop("bert.encoder.layer.3.output.dense.weight"))
    model = create_model("tiny")
    before = model.text_encoder.embeddings.word_embeddings.weight.clone()
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): bert\.encoder\.layer\.3\.output\.dense\.weight"):
        init_text_from_bert(model, bad)
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight, before)


def test_bert_missing_mlm_key_is_named(bert_mlm, tmp_path):
    _, directory = bert_mlm
    bad = _bert_copy(directory, tmp_path / "bad", edit=lambda s: s.pop("cls.predictions.transform.dense.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): cls\.predictions\.transform\.dense\.bias"):
        init_text_from_bert(create_model("tiny"), bad)


def test_bert_wrong_shape_is_named(bert_mlm, tmp_path):
    _, directory = bert_mlm

    def edit(state):
        state["bert.encoder.layer.1.attention.self.key.weight"] = torch.zeros(64, 32)

    bad = _bert_copy(directory, tmp_path / "bad", edit=edit)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): bert\.encoder\.layer\.1\.attention\.self"
                                              r"\.key\.weight: checkpoint \(64, 32\) vs model \(64, 64\)"):
        init_text_from_bert(create_model("tiny"), bad)


def test_bert_unexpected_key_is_named(bert_mlm, tmp_path):
    _, directory = bert_mlm
    bad = _bert_copy(directory, tmp_path / "bad",
                     edit=lambda s: s.__setitem__("bert.encoder.layer.0.crossattention.self.query.weight",
                                                  torch.zeros(64, 64)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): bert\.encoder\.layer\.0\.crossattention"):
        init_text_from_bert(create_model("tiny"), bad)


def test_bert_config_that_disagrees_is_named(bert_mlm, tmp_path):
    _, directory = bert_mlm
    bad = _bert_copy(directory, tmp_path / "bad", config_edit=lambda c: c.update(num_attention_heads=8))
    with pytest.raises(CheckpointError, match=r"num_attention_heads: BERT 8 vs model 4 \(override text_num_heads=8\)"):
        init_text_from_bert(create_model("tiny"), bad)
    with pytest.raises(CheckpointError, match=r"num_hidden_layers: BERT 4 vs model 6"):
        init_text_from_bert(create_model("tiny", text_num_layers=6), directory)


def test_bert_directory_problems(bert_mlm, tmp_path):
    _, directory = bert_mlm
    with pytest.raises(CheckpointError, match="not a directory"):
        init_text_from_bert(create_model("tiny"), directory / "model.safetensors")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="config.json"):
        init_text_from_bert(create_model("tiny"), no_config)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(CheckpointError, match="none of the weight files"):
        init_text_from_bert(create_model("tiny"), no_weights)


def _vit_copy(net: nn.Module, path: Path, edit) -> Path:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    edit(state)
    torch.save(state, path)
    return path


def test_vit_missing_key_is_named_and_nothing_is_loaded(vit, tmp_path):
    net, _ = vit
    bad = _vit_copy(net, tmp_path / "bad.pth", lambda s: s.pop("blocks.1.mlp.fc2.weight"))
    model = create_model("tiny")
    before = model.visual_encoder.cls_token.clone()
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.weight"):
        init_video_from_vit(model, bad)
    assert torch.equal(model.visual_encoder.cls_token, before)


def test_vit_missing_attention_names_the_timm_key(vit, tmp_path):
    net, _ = vit
    bad = _vit_copy(net, tmp_path / "bad.pth", lambda s: s.pop("blocks.0.attn.qkv.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \(\d\): blocks\.0\.attn\.qkv\.bias"):
        init_video_from_vit(create_model("tiny"), bad)


def test_vit_wrong_shape_is_named(vit, tmp_path):
    net, _ = vit
    bad = _vit_copy(net, tmp_path / "bad.pth", lambda s: s.__setitem__("blocks.0.mlp.fc1.weight", torch.zeros(128, 64)))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight: checkpoint \(128, 64\) vs model \(256, 64\)"):
        init_video_from_vit(create_model("tiny"), bad)
    # A ViT of another width: every tensor is named.
    with pytest.raises(CheckpointError, match=r"shape mismatches .*cls_token: checkpoint \(1, 1, 64\) vs model \(1, 1, 32\)"):
        init_video_from_vit(create_model("tiny", vision_embed_dim=32, vision_num_heads=4, text_hidden_size=32),
                            vit[1])


def test_vit_unexpected_and_malformed_inputs(vit, tmp_path):
    net, _ = vit
    bad = _vit_copy(net, tmp_path / "bad.pth", lambda s: s.__setitem__("dist_token", torch.zeros(1, 1, 64)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): dist_token"):
        init_video_from_vit(create_model("tiny"), bad)
    no_cls_row = _vit_copy(net, tmp_path / "no_cls.pth", lambda s: s.__setitem__("pos_embed", s["pos_embed"][:, 1:]))
    with pytest.raises(CheckpointError, match="class-token row"):
        init_video_from_vit(create_model("tiny"), no_cls_row)
    timesformer = _vit_copy(net, tmp_path / "tsf.pth", lambda s: s.__setitem__("time_embed", torch.zeros(1, 2, 64)))
    with pytest.raises(CheckpointError, match="already has temporal parameters"):
        init_video_from_vit(create_model("tiny"), timesformer)
    with pytest.raises(FileNotFoundError):
        init_video_from_vit(create_model("tiny"), tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        init_video_from_vit(create_model("tiny"), tmp_path / "junk.pth")


def test_tests_would_catch_a_swapped_norm(bert_mlm):
    """Guard on the test itself: a wrong mapping (attn_norm <-> mlp_norm) breaks the BERT comparison."""
    hf, directory = bert_mlm
    model = create_model("tiny")
    init_text_from_bert(model, directory)
    layer = model.text_encoder.layers[0]
    with torch.no_grad():
        w = layer.attn_norm.weight.clone()
        layer.attn_norm.weight.copy_(layer.mlp_norm.weight)
        layer.mlp_norm.weight.copy_(w)
    with pytest.raises(AssertionError):
        _assert_matches_bert(model, hf.bert)


def test_vit_weights_refuse_a_conv_patch_stem(vit):
    _, path = vit
    model = create_model("tiny", vision_patch_stem="conv")
    before = {k: v.clone() for k, v in model.visual_encoder.state_dict().items()}
    with pytest.raises(ConfigError, match="patch_stem 'conv' is for training from scratch"):
        init_video_from_vit(model, path)
    after = model.visual_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
