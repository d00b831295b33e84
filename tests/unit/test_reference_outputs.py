"""The official ALPRO code's outputs for a tiny model, reproduced through load_official_checkpoint."""

from __future__ import annotations

import pytest
import torch

from model import load_official_checkpoint
from tests.conftest import REFERENCE, load_reference

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def retrieval():
    model = load_official_checkpoint(REFERENCE / "retrieval_model_step_best.pt", REFERENCE / "base_model.json",
                                     vision_num_heads=4)
    return model, load_reference("retrieval_outputs.pt")


@pytest.fixture(scope="module")
def qa():
    model = load_official_checkpoint(REFERENCE / "qa_model_step_best.pt", REFERENCE / "base_model.json",
                                     vision_num_heads=4)
    return model, load_reference("qa_outputs.pt")


@pytest.fixture(scope="module")
def inputs():
    return {name: load_reference(f"{name}.pt") for name in
            ("video", "text_input_ids", "text_attention_mask", "qa_input_ids", "qa_attention_mask")}


def test_sizes_read_off_the_checkpoint(retrieval, qa):
    config = retrieval[0].config
    assert (config.vision.embed_dim, config.vision.depth, config.vision.num_frames, config.vision.img_size) == (64, 2, 2, 32)
    assert (config.text.hidden_size, config.text.num_layers, config.text.fusion_layer, config.text.vocab_size) == (64, 4, 2, 1000)
    assert config.mlm_head and config.num_answers == 0
    assert qa[0].config.num_answers == 7 and not qa[0].config.mlm_head


@torch.no_grad()
def test_unimodal_embeddings(retrieval, inputs):
    model, ref = retrieval
    video_tokens = model.video_tokens(inputs["video"])
    text_tokens = model.text_tokens(inputs["text_input_ids"], inputs["text_attention_mask"])
    torch.testing.assert_close(video_tokens, ref["video_embeds"], **TOL)
    torch.testing.assert_close(text_tokens, ref["text_embeds"], **TOL)
    video_feat = model.encode_video(inputs["video"])
    text_feat = model.encode_text(inputs["text_input_ids"], inputs["text_attention_mask"])
    torch.testing.assert_close(video_feat, ref["video_feat"], **TOL)
    torch.testing.assert_close(text_feat, ref["text_feat"], **TOL)
    torch.testing.assert_close(video_feat @ text_feat.T, ref["cosine_sim"], **TOL)
    torch.testing.assert_close(model.similarity(video_feat, text_feat), ref["vtc_sim"], **TOL)
    assert model.temperature == pytest.approx(float(ref["temp"]), abs=1e-7)


@torch.no_grad()
def test_vtm_scores_every_pair(retrieval, inputs):
    model, ref = retrieval
    video = inputs["video"]
    ids, mask = inputs["text_input_ids"], inputs["text_attention_mask"]
    n = ids.shape[0]
    logits = torch.stack([model.vtm_logits(video[b:b + 1].expand(n, -1, -1, -1, -1), ids, mask)
                          for b in range(video.shape[0])])  # (B, N, 2)
    torch.testing.assert_close(logits, ref["vtm_logits"], **TOL)
    torch.testing.assert_close(logits.softmax(-1)[..., 1], ref["vtm_prob"], **TOL)
    cosine = model.encode_video(video) @ model.encode_text(ids, mask).T
    torch.testing.assert_close(logits[..., 1] + cosine, ref["lavis_score"], **TOL)


@torch.no_grad()
def test_cached_tokens_give_the_same_fusion(retrieval, inputs):
    model, ref = retrieval
    ids, mask = inputs["text_input_ids"], inputs["text_attention_mask"]
    video_tokens = model.video_tokens(inputs["video"])
    text_tokens = model.text_tokens(ids, mask)
    pair = ref["pair_video_index"]
    fused = model.fuse(video_tokens[pair], text_tokens, mask)
    torch.testing.assert_close(fused, ref["fusion_last_hidden_pairs"], **TOL)
    torch.testing.assert_close(fused[:, 0], ref["fusion_cls"][pair, torch.arange(len(pair))], **TOL)


@torch.no_grad()
def test_answer_logits(qa, inputs):
    model, ref = qa
    ids, mask = inputs["qa_input_ids"], inputs["qa_attention_mask"]
    torch.testing.assert_close(model.video_tokens(inputs["video"]), ref["video_embeds"], **TOL)
    torch.testing.assert_close(model.text_tokens(ids, mask), ref["text_embeds"], **TOL)
    logits = model.answer_logits(inputs["video"], ids, mask)
    torch.testing.assert_close(logits, ref["answer_logits"], **TOL)
    assert torch.equal(logits.argmax(-1), ref["pred_label"])


def test_normalised_video_matches_the_reference_norm():
    """video.pt is ImageNorm(video_uint8): /255, minus CLIP mean, over CLIP std (B, T, C, H, W)."""
    from model.config import CLIP_MEAN, CLIP_STD

    raw = load_reference("video_uint8.pt").float() / 255
    mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    torch.testing.assert_close((raw - mean) / std, load_reference("video.pt"), atol=1e-6, rtol=1e-6)
