"""The prompter probe (training/prompter_probe.py): crops that hold one whole shape, and accuracies counted
against the clips' specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import preset_config
from training import prompter_probe, synth
from training.prompter import black_value
from training.prompter_probe import COLOURED_ENTITIES, SHAPE_ENTITIES, crop_probe, probe_samples, render_crop

CONFIG = preset_config("tiny", img_size=64, num_frames=4)


def test_each_crop_holds_its_whole_shape_and_nothing_outside_the_box():
    samples = probe_samples(CONFIG, 40, seed=7)
    assert len(samples) == 40 and len({s.spec.key for s in samples}) > 30
    black = black_value(CONFIG.preprocess.mean, CONFIG.preprocess.std)
    for s in samples:
        obj = s.spec.objects[0]
        assert len(s.spec.objects) == 1 and obj.to_colour is None
        assert s.times == tuple(synth.clip_times(16)[[0, 4, 8, 12]])
        frames = synth.render_clip(s.spec, 64, times=s.times).astype(int)  # (T, H, W, 3), the uncropped clip
        shape_pixels = np.abs(frames - s.spec.background).max(-1) > 60  # (T, H, W)
        assert shape_pixels.any(axis=(1, 2)).all()
        inside = np.zeros((64, 64), bool)
        inside[s.box.y:s.box.y + s.box.h, s.box.x:s.box.x + s.box.w] = True
        assert not (shape_pixels & ~inside).any(), "part of the shape lies outside the box"
        crop = render_crop(s, CONFIG)  # (T, 3, H, W)
        assert torch.allclose(crop[..., ~torch.from_numpy(inside)], black.view(3, 1).expand(3, int((~inside).sum()))
                              .unsqueeze(0).expand(crop.shape[0], -1, -1))
        assert s.truth == (obj.shape, f"{obj.colour} {obj.shape}")


class Oracle(torch.nn.Module):
    """Encodes a crop as the one-hot rows of the entities it is told the crop shows (`answer(i)`)."""

    def __init__(self, answer) -> None:
        super().__init__()
        self.config = CONFIG
        self.answer = answer
        self.seen = 0
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def encode_video(self, crops: torch.Tensor) -> torch.Tensor:
        rows = [self.answer(self.seen + i) for i in range(crops.shape[0])]
        self.seen += crops.shape[0]
        return torch.stack([sum(F.one_hot(torch.tensor(e), 45).float() for e in row) for row in rows])


@pytest.fixture
def one_hot_prompts(monkeypatch):
    monkeypatch.setattr(prompter_probe, "prompt_features", lambda model, tokenizer, entities, templates: torch.eye(45))


def test_a_model_that_names_the_right_entities_scores_one_and_a_constant_one_the_class_share(one_hot_prompts):
    truth = [s.truth for s in probe_samples(CONFIG, 60, seed=3)]
    entities = [*SHAPE_ENTITIES, *COLOURED_ENTITIES]

    def right(i):
        return entities.index(truth[i][0]), entities.index(truth[i][1])

    oracle = Oracle(right)
    oracle.train()
    got = crop_probe(oracle, tokenizer=object(), count=60, seed=3, batch_size=25)
    assert got == {"shape_acc": 1.0, "coloured_acc": 1.0, "first_is_right_entity": 1.0, "colour_of_coloured_acc": 1.0,
                   "crops": 60}
    assert oracle.training  # left as found

    # always "red star" and "square": right exactly as often as the crops show those
    got = crop_probe(Oracle(lambda i: (entities.index("square"), entities.index("red star"))), tokenizer=object(),
                     count=60, seed=3)
    assert got["shape_acc"] == pytest.approx(np.mean([t[0] == "square" for t in truth]))
    assert got["coloured_acc"] == pytest.approx(np.mean([t[1] == "red star" for t in truth]))
    assert got["colour_of_coloured_acc"] == pytest.approx(np.mean([t[1].startswith("red ") for t in truth]))
