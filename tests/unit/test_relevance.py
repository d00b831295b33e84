"""The relevance judge: captions against alpro-synth specs."""

import dataclasses
import json

import numpy as np
import pytest

from training.relevance import (CaptionError, ShapeAttributes, caption_attributes, is_relevant,
                                load_library_specs, satisfies, score_searches, stated_attributes)
from training.synth import NUM_PHRASINGS, TWIN_KINDS, ClipSpec, ObjectSpec, sample_spec, twin_spec

RED_CIRCLE_LEFT = ObjectSpec(shape="circle", colour="red", motion="left", x=0.7, y=0.5, size=0.5, distance=0.24)
BLUE_SQUARE_SPIN = ObjectSpec(shape="square", colour="blue", motion="spin", x=0.3, y=0.3, size=0.3, spin=72.0)


def _random_specs(n: int, seed: int = 0, two_object_prob: float = 0.5) -> list[ClipSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, two_object_prob) for _ in range(n)]


def test_every_phrasing_of_a_caption_names_what_its_spec_states():
    for spec in _random_specs(300):
        assert len(spec.captions()) == NUM_PHRASINGS
        for caption in spec.captions():
            assert caption_attributes(caption) == stated_attributes(spec), caption


def test_a_video_is_relevant_to_each_of_its_own_captions():
    specs = _random_specs(300, seed=1)
    assert any(len(s.objects) == 2 for s in specs) and any(len(s.objects) == 1 for s in specs)
    for spec in specs:
        for caption in spec.captions():
            assert is_relevant(caption, spec), caption


def test_full_captions_are_relevant_exactly_to_clips_with_the_same_key():
    # The generator's key is its own "cannot be told apart by the captions"; the judge must agree with it.
    specs = _random_specs(120, seed=2, two_object_prob=0.3)
    for a in specs:
        for b in specs:
            assert satisfies(b, stated_attributes(a)) == (a.key == b.key), (a.caption(), b.caption())


def test_a_clip_differing_in_one_named_attribute_is_not_relevant():
    rng = np.random.default_rng(3)
    checked = dict.fromkeys(TWIN_KINDS, 0)
    for spec in _random_specs(200, seed=4):
        for kind in TWIN_KINDS:
            twin = twin_spec(spec, kind, rng)
            if twin is None:
                continue
            checked[kind] += 1
            for caption in spec.captions():
                assert not is_relevant(caption, twin), (kind, caption, twin.caption())
    assert all(checked.values()), checked


@pytest.mark.parametrize("caption", [
    "a green circle moves to the left",  # other colour
    "a red square moves to the left",  # other shape
    "a red circle moves to the right",  # other direction
    "a red circle grows",  # other motion
    "a red circle turns blue",  # a recolour it does not do
])
def test_one_other_attribute_makes_a_caption_irrelevant(caption):
    spec = ClipSpec(objects=(RED_CIRCLE_LEFT,))
    assert is_relevant("a red circle moves to the left", spec)
    assert not is_relevant(caption, spec)


def test_a_recolour_names_its_end_colour():
    obj = dataclasses.replace(RED_CIRCLE_LEFT, motion="recolour", distance=0.0, to_colour="green")
    spec = ClipSpec(objects=(obj,))
    for caption in ("a red circle turns green", "a red circle changing to green",
                    "a red circle changes colour to green"):
        assert is_relevant(caption, spec)
    assert not is_relevant("a red circle turns yellow", spec)
    assert not is_relevant("a green circle turns red", spec)  # played backwards: start and end colour swap


def test_two_object_clips_match_in_any_clause_order_and_need_both():
    spec = ClipSpec(objects=(RED_CIRCLE_LEFT, BLUE_SQUARE_SPIN))
    spec.validate()
    assert is_relevant("a red circle moves to the left while a blue square spins", spec)
    assert is_relevant("a blue square spins and a red circle moving left", spec)
    # Each clause must fit its own shape: swapped motions are another clip.
    assert not is_relevant("a red circle spins while a blue square moves to the left", spec)
    assert not is_relevant("a blue circle moves to the left while a red square spins", spec)
    # The generator names every shape, so one clause describes a one-shape clip, and two describe two.
    assert not is_relevant("a red circle moves to the left", spec)
    assert not is_relevant("a red circle moves to the left while a blue square spins",
                           ClipSpec(objects=(RED_CIRCLE_LEFT,)))


def test_a_caption_may_leave_attributes_out():
    spec = ClipSpec(objects=(RED_CIRCLE_LEFT,))
    assert caption_attributes("A red circle.") == (ShapeAttributes(shape="circle", colour="red"),)
    assert is_relevant("a red circle", spec)
    assert is_relevant("circle moving left", spec)
    assert not is_relevant("a square", spec)


@pytest.mark.parametrize("caption", ["", "a red blob moves left", "a red circle dances", "red"])
def test_words_outside_the_generator_vocabulary_are_an_error(caption):
    with pytest.raises(CaptionError):
        caption_attributes(caption)


def test_scores_count_own_first_relevant_first_and_precision():
    own = ClipSpec(objects=(RED_CIRCLE_LEFT,))
    same = dataclasses.replace(own, background=20)  # another video of the same caption
    other = ClipSpec(objects=(dataclasses.replace(RED_CIRCLE_LEFT, colour="green"),))
    library = {"own.mp4": own, "same.mp4": same, "other.mp4": other}
    caption = own.caption()
    scores = score_searches([(caption, "own.mp4", ["same.mp4", "own.mp4", "other.mp4"]),
                             (caption, "own.mp4", ["own.mp4", "other.mp4", "unknown.mp4"])], library, k=5)
    assert (scores.queries, scores.own_first, scores.first_relevant) == (2, 1, 2)
    assert scores.own_first_rate == 0.5 and scores.first_relevant_rate == 1.0
    assert scores.precision == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert scores.precision_ceiling == pytest.approx(2 / 5)  # two library videos fit the caption
    assert scores.attainable_precision == pytest.approx((2 / 2 + 1 / 2) / 2)  # of the two the top 5 could hold


def test_library_specs_are_read_from_a_corpus(tmp_path):
    specs = _random_specs(3, seed=5)
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for split, spec in zip(("train", "val", "test"), specs):
        row = {"video": f"videos/{split}_000000.mp4", "caption": spec.caption(), "key": spec.key,
               "spec": spec.to_dict()}
        (annotations / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    library = load_library_specs(tmp_path)
    assert library == {"train_000000.mp4": specs[0], "val_000000.mp4": specs[1], "test_000000.mp4": specs[2]}
