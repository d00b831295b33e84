"""The network's public API on random tiny models: shapes, norms, autocast, checkpointing, presets."""

from __future__ import annotations

import pytest
import torch

from model import AlproConfig, ConfigError, create_model, load_pretrained, preset_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny", num_answers=5)


def clip(config: AlproConfig, batch: int = 2) -> torch.Tensor:
    v = config.vision
    return torch.randn(batch, v.num_frames, 3, v.img_size, v.img_size)


def text(batch: int = 2, length: int = 7):
    ids = torch.randint(1000, 30000, (batch, length))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # padding in the first row
    ids[0, 4:] = 0
    return ids, mask


def test_presets_keep_the_real_vocabulary():
    for name in ("base", "tiny"):
        assert preset_config(name).text.vocab_size == 30522
    base = preset_config("base")
    assert (base.vision.embed_dim, base.vision.depth, base.vision.num_heads, base.vision.num_frames,
            base.vision.img_size) == (768, 12, 12, 8, 224)
    assert (base.text.num_layers, base.text.fusion_layer, base.embed_dim) == (12, 6, 256)
    assert preset_config("tiny", vision_num_heads=2, num_frames=3).vision.num_frames == 3
    with pytest.raises(ConfigError, match="unknown model override"):
        preset_config("tiny", colour="red")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(ConfigError, match="must equal"):
        preset_config("tiny", vision_embed_dim=32, vision_num_heads=4)


@torch.no_grad()
def test_public_api_shapes_and_norms(tiny):
    video = clip(tiny.config)
    ids, mask = text()
    v, t = tiny.encode_video(video), tiny.encode_text(ids, mask)
    assert v.shape == (2, 256) and t.shape == (2, 256)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    assert tiny.vtm_logits(video, ids, mask).shape == (2, 2)
    assert tiny.answer_logits(video, ids, mask).shape == (2, 5)
    assert tiny.temperature == pytest.approx(0.07)
    n = tiny.config.vision.num_patches
    assert tiny.video_tokens(video).shape == (2, 1 + n, 64)


@torch.no_grad()
def test_padding_does_not_change_the_text_embedding(tiny):
    ids, mask = text(batch=1, length=5)
    padded_ids = torch.cat([ids, torch.zeros(1, 6, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 6, dtype=mask.dtype)], dim=1)
    torch.testing.assert_close(tiny.encode_text(ids, mask), tiny.encode_text(padded_ids, padded_mask),
                               atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_batch_rows_are_independent(tiny):
    video = clip(tiny.config, batch=3)
    together = tiny.encode_video(video)
    alone = torch.cat([tiny.encode_video(video[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_frame_order_matters_through_time_embed():
    torch.manual_seed(1)
    model = create_model("tiny")
    torch.nn.init.normal_(model.visual_encoder.time_embed, std=0.5)
    video = clip(model.config)
    assert not torch.allclose(model.encode_video(video), model.encode_video(video.flip(1)), atol=1e-4)


def test_wrong_video_shape_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"video must be \(B, 2, 3, 32, 32\)"):
        tiny.encode_video(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no MLM head|no PEM head"):
        create_model("tiny", mlm_head=False).mlm_logits(torch.randn(1, 3, 64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_autocast(tiny, dtype):
    video = clip(tiny.config)
    ids, mask = text()
    reference = tiny.encode_video(video), tiny.encode_text(ids, mask), tiny.vtm_logits(video, ids, mask)
    with torch.autocast("cpu", dtype=dtype):
        low = tiny.encode_video(video), tiny.encode_text(ids, mask), tiny.vtm_logits(video, ids, mask)
    for a, b in zip(reference, low):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b.float(), a, atol=0.1, rtol=0.1)


def training_loss(model, video, ids, mask):
    video_tokens = model.video_tokens(video)
    text_tokens = model.text_tokens(ids, mask)
    sim = model.similarity(model.video_features(video_tokens), model.text_features(text_tokens))
    vtm = model.vtm_logits_from_tokens(video_tokens, text_tokens, mask)
    mlm = model.mlm_logits(model.fuse(video_tokens, text_tokens, mask)[:, : ids.shape[1]])
    return sim.logsumexp(-1).mean() + vtm.square().mean() + mlm.square().mean() * 1e-3


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(2)
    model = create_model("tiny", vision_drop_path_rate=0.0, text_hidden_dropout=0.0, text_attention_dropout=0.0)
    model.train()
    video = clip(model.config)
    ids, mask = text()
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        training_loss(model, video, ids, mask).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_pretraining_model_has_prompter_and_pem():
    model = create_model("tiny", num_entities=10)
    assert model.prompter is not None and model.prompter.video_prompt_feat.shape == (10, 256)
    fused_video = torch.randn(2, 1 + model.config.vision.num_patches, 64)
    patch_mask = torch.zeros(2, model.config.vision.num_patches)
    patch_mask[:, :2] = 1
    assert model.pem_logits(fused_video, patch_mask).shape == (2, 10)


def test_text_init_std_scales_only_the_random_text_init():
    torch.manual_seed(0)
    default = create_model("tiny")
    torch.manual_seed(0)
    wide = create_model("tiny", text_init_std=0.15)
    for (name, a), (_, b) in zip(default.named_parameters(), wide.named_parameters()):
        if a.dim() < 2 or a.numel() < 1000:
            continue
        if name.startswith("text_encoder."):
            assert b.std().item() == pytest.approx(0.15, rel=0.1), name
            assert a.std().item() == pytest.approx(0.02, rel=0.1), name
        else:
            torch.testing.assert_close(a, b, msg=name)  # video side and heads as before


def test_position_and_time_embedding_init_std():
    torch.manual_seed(0)
    default = create_model("tiny")
    torch.manual_seed(0)
    spread = create_model("tiny", vision_pos_init_std=0.5, vision_time_init_std=0.5)
    assert torch.count_nonzero(default.visual_encoder.time_embed) == 0  # the reference: zero time embedding
    assert default.visual_encoder.pos_embed.std().item() == pytest.approx(0.02, rel=0.2)
    for name in ("pos_embed", "time_embed"):
        assert getattr(spread.visual_encoder, name).std().item() == pytest.approx(0.5, rel=0.25), name
    # order matters now: a clip and the same clip played backwards get different video tokens
    vision = spread.config.vision
    video = torch.randn(1, vision.num_frames, 3, vision.img_size, vision.img_size)
    with torch.no_grad():
        forward, backward = spread.visual_encoder(video), spread.visual_encoder(video.flip(1))
        plain_forward, plain_backward = default.visual_encoder(video), default.visual_encoder(video.flip(1))
    torch.testing.assert_close(plain_forward, plain_backward, atol=1e-5, rtol=1e-4)
    assert (forward - backward).abs().max().item() > 1e-2
    with pytest.raises(ConfigError):
        create_model("tiny", vision_time_init_std=-1.0)


def test_cls_time_gives_each_frames_cls_copy_the_time_embedding(tmp_path):
    torch.manual_seed(0)
    plain = create_model("tiny", vision_time_init_std=0.5)
    timed = create_model("tiny", vision_time_init_std=0.5, vision_cls_time=True)
    timed.load_state_dict(plain.state_dict())  # no new weights: the same tensors load both ways
    video = clip(plain.config, batch=2)
    with torch.no_grad():
        a, b = plain.visual_encoder(video), timed.visual_encoder(video)
        assert (a - b).abs().max().item() > 1e-2
        # it is the time embedding on cls that differs: with a zero time embedding both are the same network
        for model in (plain, timed):
            model.visual_encoder.time_embed.zero_()
        torch.testing.assert_close(plain.visual_encoder(video), timed.visual_encoder(video))
    # by hand, block 0's spatial attention for frame t's cls: [cls + time_embed[t] ; frame t's patches]
    torch.manual_seed(1)
    model = create_model("tiny", vision_time_init_std=0.5, vision_cls_time=True).eval()
    enc, block = model.visual_encoder, model.visual_encoder.blocks[0]
    captured = {}
    block.attn.register_forward_hook(lambda _m, inputs, _out: captured.setdefault("x", inputs[0]))
    with torch.no_grad():
        enc(video[:1])
    t = plain.config.vision.num_frames
    cls_in = (enc.cls_token + enc.pos_embed[:, :1])[0, 0]  # (D,)
    expected = block.norm1(cls_in + enc.time_embed[0])  # (T, D): the normed cls copies, one per frame
    torch.testing.assert_close(captured["x"][:t, 0], expected)
    # saved and loaded natively, the setting comes back
    timed.save_pretrained(tmp_path / "m")
    assert load_pretrained(tmp_path / "m").config.vision.cls_time


@pytest.mark.parametrize("segments", [2, 4])
@torch.no_grad()
def test_time_segments_hand_fusion_each_part_of_the_clip_and_leave_retrieval_features_alone(segments):
    torch.manual_seed(0)
    settings = dict(num_frames=4, vision_time_init_std=0.5, num_entities=6)
    pooled = create_model("tiny", **settings).eval()
    split = create_model("tiny", vision_time_segments=segments, **settings).eval()
    split.load_state_dict(pooled.state_dict())
    v = pooled.config.vision
    video = clip(pooled.config, batch=2)
    a, b = pooled.video_tokens(video), split.video_tokens(video)
    assert a.shape == (2, 1 + v.num_patches, v.embed_dim)
    assert b.shape == (2, 1 + v.num_patches * segments, v.embed_dim)
    torch.testing.assert_close(b[:, 0], a[:, 0])  # the same cls, so the same VTC features
    torch.testing.assert_close(split.encode_video(video), pooled.encode_video(video))
    # (n s) order: the segments of patch n are tokens n*S .. n*S + S - 1; segment s is the mean of its frames
    per_segment = b[:, 1:].view(2, v.num_patches, segments, -1)
    torch.testing.assert_close(per_segment.mean(2), a[:, 1:])
    every_frame = create_model("tiny", vision_time_segments=4, **settings).eval()
    every_frame.load_state_dict(pooled.state_dict())
    frames = every_frame.video_tokens(video)[:, 1:].view(2, v.num_patches, 4, -1)
    torch.testing.assert_close(per_segment, frames.view(2, v.num_patches, segments, 4 // segments, -1).mean(3))
    assert (per_segment[:, :, 0] - per_segment[:, :, -1]).abs().max().item() > 1e-2  # early and late stay apart
    # PEM pools every segment of the patches inside the crop
    mask = torch.zeros(2, v.num_patches)
    mask[:, :3] = 1
    torch.testing.assert_close(split.pem_logits(b, mask), pooled.pem_logits(a, mask))
    # the fusion reads all of them: its answer token differs from the pooled model's
    ids, ones = torch.randint(1000, 2000, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    text = pooled.text_tokens(ids, ones)
    assert not torch.allclose(split.fuse(b, text, ones)[:, 0], pooled.fuse(a, text, ones)[:, 0], atol=1e-4)
    with pytest.raises(ConfigError, match="time_segments"):
        create_model("tiny", num_frames=4, vision_time_segments=3)


@torch.no_grad()
def test_fusion_pos_adds_each_tokens_own_position_and_time_embedding_for_fusion_only():
    torch.manual_seed(0)
    settings = dict(num_frames=4, vision_time_init_std=0.5, vision_time_segments=2)
    plain = create_model("tiny", **settings).eval()
    placed = create_model("tiny", vision_fusion_pos=True, **settings).eval()
    placed.load_state_dict(plain.state_dict())  # no new weights
    v, enc = plain.config.vision, plain.visual_encoder
    video = clip(plain.config, batch=2)
    a, b = plain.video_tokens(video), placed.video_tokens(video)
    torch.testing.assert_close(b[:, 0], a[:, 0])
    torch.testing.assert_close(placed.encode_video(video), plain.encode_video(video))
    added = (b - a)[:, 1:].view(2, v.num_patches, 2, -1)  # (n s) order
    for n in range(v.num_patches):
        for s, frames in enumerate(([0, 1], [2, 3])):
            expected = enc.pos_embed[0, 1 + n] + enc.time_embed[0, frames].mean(0)
            torch.testing.assert_close(added[:, n, s], expected.expand(2, -1))


def test_fusion_rows_give_the_same_outputs_for_the_rows_kept():
    torch.manual_seed(0)
    model = create_model("tiny", num_answers=5).eval()
    video = clip(model.config, batch=3)
    ids, mask = text(3, 7)
    mask[1, 5:] = 0  # padding in one row: the kept rows still attend to the right keys
    vt, tt = model.video_tokens(video), model.text_tokens(ids, mask)
    full = model.fuse(vt, tt, mask)
    for rows in (1, 7):
        part = model.fuse(vt, tt, mask, rows=rows)
        assert part.shape == (3, rows, full.shape[-1])
        torch.testing.assert_close(part, full[:, :rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.answer_logits_from_tokens(vt, tt, mask), model.qa_head(full[:, 0]),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.vtm_logits_from_tokens(vt, tt, mask), model.itm_head(full[:, 0]),
                               atol=1e-5, rtol=1e-5)
    # and the gradients that reach the video tokens through the kept rows are the same, checkpointed or not
    for checkpointed in (False, True):
        model.train()
        model.set_grad_checkpointing(checkpointed)
        leaf_a, leaf_b = vt.detach().requires_grad_(), vt.detach().requires_grad_()
        model.fuse(leaf_a, tt.detach(), mask)[:, 0].sum().backward()
        model.fuse(leaf_b, tt.detach(), mask, rows=1)[:, 0].sum().backward()
        torch.testing.assert_close(leaf_b.grad, leaf_a.grad, atol=1e-5, rtol=1e-4)


def test_conv_patch_stem():
    torch.manual_seed(0)
    model = create_model("tiny", vision_patch_stem="conv")
    linear = create_model("tiny")
    embed = model.visual_encoder.patch_embed
    p = model.config.vision.patch_size
    convs = [m for m in embed.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == p.bit_length() - 1 and all(c.stride == (2, 2) for c in convs)
    for conv in convs:  # He init (fan-out, ReLU), not the 0.02 of the transformer's layers
        fan_out = conv.out_channels * 9
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)
    video = clip(model.config, batch=3)
    with torch.no_grad():
        tokens = model.visual_encoder(video)
        assert tokens.shape == linear.visual_encoder(video).shape  # one token per patch, as before
        # eval mode: BatchNorm uses its running statistics, so a clip's tokens do not depend on its batch
        torch.testing.assert_close(model.visual_encoder(video[:1]), tokens[:1], atol=1e-5, rtol=1e-5)
        norm = next(m for m in embed.stem.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = norm.running_mean.clone()
        model.train()
        model.visual_encoder(video)
        assert not torch.equal(norm.running_mean, before)  # training updates them
    with pytest.raises(ConfigError, match="patch_stem 'resnet' is not one of"):
        create_model("tiny", vision_patch_stem="resnet")
    with pytest.raises(ConfigError, match="power-of-two patch_size"):
        create_model("tiny", vision_patch_stem="conv", vision_patch_size=12, img_size=48)
