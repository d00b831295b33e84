"""model.quantize on the tiny config: int8 encoders agree with fp32 on real decoded clips, keep AlproModel's API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from model import AlproModel, Tokenizer, create_model, load_video
from model.quantize import Int8Linear, QuantizationError, is_quantized, quantize_encoders

VIDEOS = Path(__file__).resolve().parents[1] / "fixtures" / "store_v1" / "videos"
TEXTS = ["a red square moves left", "a green circle", "the blue triangle spins slowly in the middle of the frame",
         "what colour is the shape", "dog"]


@pytest.fixture(scope="module")
def models() -> tuple[AlproModel, AlproModel]:
    torch.manual_seed(0)
    fp32 = create_model("tiny", num_answers=5)
    return fp32, quantize_encoders(fp32)


@pytest.fixture(scope="module")
def clips(models) -> torch.Tensor:
    paths = sorted(VIDEOS.glob("*.mp4"))
    assert len(paths) == 3, f"expected the three fixture videos in {VIDEOS}"
    return torch.stack([load_video(p, models[0].config) for p in paths])  # (3, T, 3, H, W)


@pytest.fixture(scope="module")
def texts(models) -> tuple[torch.Tensor, torch.Tensor]:
    return Tokenizer.from_config(models[0].config)(TEXTS)


@torch.inference_mode()
def test_embeddings_match_fp32_on_real_clips_and_texts(models, clips, texts):
    fp32, int8 = models
    video_cos = (fp32.encode_video(clips) * int8.encode_video(clips)).sum(-1)
    text_cos = (fp32.encode_text(*texts) * int8.encode_text(*texts)).sum(-1)
    assert video_cos.min() >= 0.99, video_cos
    assert text_cos.min() >= 0.99, text_cos
    torch.testing.assert_close(int8.encode_video(clips).norm(dim=-1), torch.ones(len(clips)))


@torch.inference_mode()
def test_token_methods_vtm_and_qa_still_work(models, clips, texts):
    fp32, int8 = models
    ids, mask = texts[0][:3], texts[1][:3]
    tokens = int8.video_tokens(clips)
    assert tokens.shape == fp32.video_tokens(clips).shape
    assert nn.functional.cosine_similarity(tokens, fp32.video_tokens(clips), dim=-1).min() >= 0.99
    text_tokens = int8.text_tokens(ids, mask)
    features = int8.text_features(text_tokens)
    torch.testing.assert_close(features, int8.encode_text(ids, mask))
    vtm = int8.vtm_logits_from_tokens(tokens, text_tokens, mask)
    assert vtm.shape == (3, 2)
    torch.testing.assert_close(vtm, fp32.vtm_logits(clips, ids, mask), atol=2e-3, rtol=0)
    assert int8.answer_logits_from_tokens(tokens, text_tokens, mask).shape == (3, 5)


def test_encoder_linears_are_int8_and_the_rest_is_untouched(models):
    fp32, int8 = models
    for part in ("visual_encoder", "text_encoder"):
        layers = list(getattr(int8, part).modules())
        assert not any(type(m) is nn.Linear for m in layers), part
        assert sum(isinstance(m, Int8Linear) for m in layers) == sum(
            type(m) is nn.Linear for m in getattr(fp32, part).modules())
    for name in ("vision_proj", "text_proj", "itm_head"):
        assert type(getattr(int8, name)) is nn.Linear, name
    assert is_quantized(int8) and not is_quantized(fp32)  # a copy: the fp32 model is unchanged
    with pytest.raises(QuantizationError, match="already quantised"):
        quantize_encoders(int8)


def test_weights_leave_room_for_8_bit_activations(models):
    """7-bit weights: uint8 activation pairs times these cannot saturate int16 on AVX2 (fbgemm's vpmaddubsw)."""
    layer = models[1].visual_encoder.blocks[0].mlp.fc1
    weight = layer.weight().int_repr()
    assert weight.min() >= -64 and weight.max() <= 63


def test_inplace_quantises_the_given_model():
    torch.manual_seed(0)
    model = create_model("tiny")
    assert quantize_encoders(model, inplace=True) is model and is_quantized(model)


def test_refuses_a_cuda_model_and_other_modules(monkeypatch):
    model = create_model("tiny")
    monkeypatch.setattr(AlproModel, "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.raises(QuantizationError, match="CPU only.*cuda:0"):
        quantize_encoders(model)
    with pytest.raises(QuantizationError, match="takes an AlproModel"):
        quantize_encoders(nn.Linear(4, 4))  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refuses_a_model_on_the_gpu():
    with pytest.raises(QuantizationError, match="CPU only"):
        quantize_encoders(create_model("tiny").cuda())
