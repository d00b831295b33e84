"""AdamW groups (decay on weight matrices only), warm-up + linear decay, and what each task freezes."""

from __future__ import annotations

import pytest
import torch

from model import create_model
from training.config import OptimSection
from training.modeling import freeze
from training.optim import build_optimizer, build_scheduler, parameter_groups


def test_decay_only_on_weight_matrices():
    model = create_model("tiny", num_answers=3)
    groups = parameter_groups(model, OptimSection(weight_decay=0.1))
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {name: id(p) in decayed for name, p in model.named_parameters()}
    for name in ("temp", "visual_encoder.cls_token", "visual_encoder.pos_embed", "visual_encoder.time_embed",
                 "text_encoder.embeddings.word_embeddings.weight", "text_encoder.embeddings.position_embeddings.weight",
                 "text_encoder.embeddings.token_type_embeddings.weight", "text_encoder.embeddings.norm.weight",
                 "text_encoder.layers.0.attn_norm.weight", "visual_encoder.blocks.0.norm1.weight",
                 "visual_encoder.blocks.0.attn.qkv.bias", "itm_head.bias", "mlm_head.bias"):
        assert names[name] is False, name
    for name in ("visual_encoder.patch_embed.proj.weight", "visual_encoder.blocks.0.attn.qkv.weight",
                 "text_encoder.layers.0.attn.query.weight", "itm_head.weight", "qa_head.fc1.weight",
                 "vision_proj.weight", "mlm_head.dense.weight"):
        assert names[name] is True, name


def test_weight_decay_reaches_the_optimiser():
    model = create_model("tiny")
    optimizer = build_optimizer(model, OptimSection(lr=0.1, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    w = "itm_head.weight"
    assert torch.allclose(after[w], before[w] * (1 - 0.1 * 0.5))  # decoupled decay: p -= lr * wd * p
    assert torch.equal(after["itm_head.bias"], before["itm_head.bias"])
    assert torch.equal(after["temp"], before["temp"])


def test_warmup_then_linear_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([p], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=100, config=OptimSection(lr=1.0, warmup_ratio=0.1,
                                                                                min_lr_ratio=0.0))
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(1 - 45 / 90)
    assert lrs[99] == pytest.approx(1 / 90) and min(lrs) >= 0
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0]["total"] == 100  # the schedule's length survives a checkpoint


def test_freeze_follows_the_losses():
    model = create_model("tiny")
    frozen = freeze(model, "pretrain-prompter", {"vtc": 1.0})
    assert "itm_head.weight" in frozen and "mlm_head.bias" in frozen
    assert "text_encoder.layers.3.fc1.weight" in frozen  # fusion layers: no fusion without VTM/MLM/PEM
    assert "text_encoder.layers.0.fc1.weight" not in frozen and "temp" not in frozen
    model = create_model("tiny", num_answers=4)
    frozen = freeze(model, "finetune-qa", {"qa": 1.0})
    assert {"temp", "vision_proj.weight", "itm_head.weight"} <= set(frozen)
    assert not any(n.startswith(("qa_head.", "text_encoder.layers.3.")) for n in frozen)
    model = create_model("tiny")
    frozen = freeze(model, "finetune-retrieval", {"vtc": 1.0, "vtm": 1.0})
    assert all(n.startswith("mlm_head.") for n in frozen)


def test_lr_multipliers_for_encoders_and_new_heads():
    model = create_model("tiny", num_answers=3)  # tiny: text layers 0-1 encode text, 2-3 fuse
    groups = parameter_groups(model, OptimSection(lr=1.0, encoder_lr_mult=0.1, head_lr_mult=5.0), ("qa_head.",))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["visual_encoder.blocks.0.attn.qkv.weight"])] == pytest.approx(0.1)
    assert lr_of[id(params["text_encoder.layers.1.fc1.weight"])] == pytest.approx(0.1)
    assert lr_of[id(params["text_encoder.embeddings.word_embeddings.weight"])] == pytest.approx(0.1)
    assert lr_of[id(params["text_encoder.layers.2.fc1.weight"])] == pytest.approx(1.0)  # fusion
    assert lr_of[id(params["qa_head.fc1.weight"])] == pytest.approx(5.0)
