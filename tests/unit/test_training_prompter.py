"""Prompter pieces: crop boxes, black-outside crops, patch masks, prompt features, entity extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import Tokenizer, create_model, normalize_frames
from model.alpro import prompter_config
from model.config import preset_config
from training.prompter import (IMAGE_TEMPLATES, VIDEO_TEMPLATES, build_prompt_features, crop_video,
                               extract_entities, patch_mask, pseudo_labels, sample_box)


@pytest.mark.parametrize("img,patch", [(224, 16), (64, 16), (96, 8)])
def test_boxes_are_patch_aligned_inside_and_sized_as_asked(img, patch):
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(2000):
        box = sample_box(rng, img, patch)
        assert box.x % patch == box.y % patch == box.w % patch == box.h % patch == 0
        assert box.w >= patch and box.h >= patch and box.x + box.w <= img and box.y + box.h <= img
        areas.append(box.w * box.h / img**2)
        aspects.append(box.w / box.h)
    if img == 224:  # fine grid: snapping barely moves the sampled area and aspect
        assert 0.28 < np.quantile(areas, 0.05) and np.quantile(areas, 0.95) < 0.54
        assert 0.25 < min(aspects) and max(aspects) < 4.0
        assert np.mean(areas) == pytest.approx(0.4, abs=0.03)


def test_crop_blacks_out_the_outside_before_normalisation():
    config = preset_config("tiny")
    raw = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    video = normalize_frames(raw, config)
    box = sample_box(np.random.default_rng(3), 32, 16, area=(0.3, 0.3), aspect=(1.0, 1.0))
    cropped = crop_video(video, box, config.preprocess.mean, config.preprocess.std)
    blacked = raw.clone()
    keep = torch.zeros(32, 32, dtype=torch.bool)
    keep[box.y:box.y + box.h, box.x:box.x + box.w] = True
    blacked[..., ~keep] = 0
    assert torch.allclose(cropped, normalize_frames(blacked, config), atol=1e-6)


def test_patch_mask_marks_exactly_the_box_patches():
    from training.prompter import Box

    mask = patch_mask(Box(x=16, y=32, w=32, h=16), img_size=64, patch_size=16).view(4, 4)
    expected = torch.zeros(4, 4)
    expected[2, 1:3] = 1
    assert torch.equal(mask, expected)


def test_prompt_features_are_the_template_mean_of_normalised_text_features():
    torch.manual_seed(0)
    config = prompter_config(preset_config("tiny", num_entities=3))
    model = create_model("tiny", prompt_entities=3)
    assert model.config == config
    tokenizer = Tokenizer.from_config(model.config)
    entities = ["circle", "red square", "dog"]
    build_prompt_features(model, tokenizer, entities)
    for feats, templates in ((model.video_prompt_feat, VIDEO_TEMPLATES), (model.image_prompt_feat, IMAGE_TEMPLATES)):
        assert len(templates) == 12
        for e, entity in enumerate(entities):
            ids, mask = tokenizer([t.format(entity) for t in templates])
            with torch.no_grad():
                each = F.normalize(model.text_proj(model.text_tokens(ids, mask)[:, 0]), dim=-1)
            assert torch.allclose(feats[e], each.mean(0), atol=1e-5)
    assert not torch.allclose(model.video_prompt_feat, model.image_prompt_feat)
    with pytest.raises(ValueError, match="3 prompt features"):
        build_prompt_features(model, tokenizer, entities[:2])


def test_pseudo_labels_are_a_softmax_over_entities_with_image_prompts_for_images():
    torch.manual_seed(0)
    model = create_model("tiny", prompt_entities=4)
    model.video_prompt_feat.copy_(F.normalize(torch.randn(4, 256), dim=-1))
    model.image_prompt_feat.copy_(F.normalize(torch.randn(4, 256), dim=-1))
    crops = torch.randn(2, 2, 3, 32, 32)
    labels = pseudo_labels(model, crops, torch.tensor([False, True]))
    assert torch.allclose(labels.sum(1), torch.ones(2))
    feats = model.encode_video(crops)
    assert torch.allclose(labels[0], torch.softmax(feats[0] @ model.video_prompt_feat.t() / 0.07, 0), atol=1e-5)
    assert torch.allclose(labels[1], torch.softmax(feats[1] @ model.image_prompt_feat.t() / 0.07, 0), atol=1e-5)


def test_entities_are_the_most_frequent_content_words():
    captions = ["a red dog runs on the grass", "the dog and a cat", "a cat sleeps", "dog"]
    assert extract_entities(captions, 3) == ["dog", "cat", "grass"]
