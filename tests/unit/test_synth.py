"""Synthetic corpus generator: sampling, rendering semantics, captions and QA (no video files)."""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
import pytest

from training.synth import (COLOURS, MOTIONS, SHAPES, TWIN_KINDS, ClipSpec, CorpusConfig, ObjectSpec, SynthError,
                            clip_times, entity_vocabulary, render_clip, sample_corpus, sample_distinct_specs,
                            sample_spec, twin_spec)

# Hue (degrees) each colour name must have, written down from the names, not from the palette.
EXPECTED_HUE = {"red": 0, "orange": 33, "yellow": 55, "green": 125, "cyan": 185, "blue": 228, "purple": 280}


def obj(shape="circle", colour="red", motion="still", x=0.5, y=0.5, size=0.4, **kw) -> ObjectSpec:
    return ObjectSpec(shape=shape, colour=colour, motion=motion, x=x, y=y, size=size, **kw)


def clip(*objects: ObjectSpec, **kw) -> ClipSpec:
    spec = ClipSpec(objects=objects, **kw)
    spec.validate()
    return spec


def foreground(frames: np.ndarray) -> np.ndarray:
    """Pixels brighter than any background (backgrounds are dark greys). # (T, H, W) bool"""
    return frames.max(axis=-1) > 100


def centroids(mask: np.ndarray) -> np.ndarray:
    """(x, y) centroid of each frame's mask. # (T, 2)"""
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        assert xs.size, "no object pixels in a frame"
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def hue_degrees(rgb) -> tuple[float, float, float]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return h * 360, s, v


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


# -- sampling -------------------------------------------------------------------------------------------------
def draw(seed: int, n: int = 30) -> list[ClipSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng) for _ in range(n)]


def test_sampling_is_deterministic_by_seed():
    a, b, c = draw(5), draw(5), draw(6)
    assert a == b
    assert a != c and len({s.key for s in a} ^ {s.key for s in c}) > 30
    np.testing.assert_array_equal(render_clip(a[3], 32, 4), render_clip(b[3], 32, 4))


def test_sampled_specs_are_valid_and_cover_the_attribute_space():
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, two_object_prob=0.3) for _ in range(1500)]
    for spec in specs:
        spec.validate()
        assert ClipSpec.from_dict(spec.to_dict()) == spec
    objects = [o for s in specs for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.motion for o in objects} == set(MOTIONS)
    two = sum(len(s.objects) == 2 for s in specs) / len(specs)
    assert 0.2 < two < 0.4
    assert {s.phrasing for s in specs} == {0, 1, 2}
    # Far more distinct captions than a 100-clip test split needs.
    assert len({s.key for s in specs}) > 800


def test_two_object_clips_have_distinct_names_and_never_touch():
    rng = np.random.default_rng(1)
    pairs = [s for s in (sample_spec(rng, two_object_prob=1.0) for _ in range(40))]
    for spec in pairs:
        a, b = spec.objects
        assert a.shape != b.shape and a.colour != b.colour
        alone = [foreground(render_clip(dataclasses.replace(spec, objects=(o,)), 64, 8)) for o in spec.objects]
        # Grow each mask by one pixel: the shapes must not even touch.
        grown = alone[0] | np.roll(alone[0], 1, axis=1) | np.roll(alone[0], -1, axis=1) \
            | np.roll(alone[0], 1, axis=2) | np.roll(alone[0], -1, axis=2)
        assert not (grown & alone[1]).any(), spec.caption()


def test_objects_are_large_against_a_16px_patch_and_stay_in_frame():
    rng = np.random.default_rng(2)
    for _ in range(150):
        spec = sample_spec(rng, two_object_prob=0.5)
        for o in spec.objects:
            mask = foreground(render_clip(dataclasses.replace(spec, objects=(o,)), 64, 8))  # (T, H, W)
            extents = []
            for m in mask:
                ys, xs = np.nonzero(m)
                extents.append(max(np.ptp(xs), np.ptp(ys)) + 1)
                # Nothing touches the border: the whole shape is visible in every frame.
                assert xs.min() > 0 and ys.min() > 0 and xs.max() < 63 and ys.max() < 63, spec.caption()
            # At 64 px a 16-px patch is 1/4 of the side; the shape spans at least that most of the time.
            assert max(extents) >= 16, (spec.caption(), extents)
            assert np.median(extents) >= 14, (spec.caption(), extents)


def test_distinct_specs_have_distinct_keys_and_captions():
    specs = sample_distinct_specs(np.random.default_rng(3), 100)
    assert len({s.key for s in specs}) == 100
    assert len({s.caption() for s in specs}) == 100


def test_distinct_specs_raise_when_the_space_is_too_small():
    # One object: 8 colours x 5 shapes x (7 motions + spin for 4 shapes + 7 colour changes) = 592 keys.
    with pytest.raises(SynthError, match="distinct"):
        sample_distinct_specs(np.random.default_rng(0), 600, two_object_prob=0.0, max_tries_per_clip=5)


# -- rendering ------------------------------------------------------------------------------------------------
def test_red_circle_moving_left():
    spec = clip(obj("circle", "red", "left", x=0.7, y=0.5, size=0.3, distance=0.4))
    frames = render_clip(spec, size=100, num_frames=10)
    assert frames.shape == (10, 100, 100, 3) and frames.dtype == np.uint8
    r, g, b = (frames[..., i].astype(int) for i in range(3))
    red = (r > 150) & (g < 90) & (b < 90)
    xy = centroids(red)
    assert np.all(np.diff(xy[:, 0]) < 0), "the red centroid must move left every frame"
    assert xy[0, 0] - xy[-1, 0] == pytest.approx(40, abs=2)  # 0.4 of a 100-px frame
    assert np.ptp(xy[:, 1]) < 1
    # A circle of diameter 30 px.
    assert red[0].sum() == pytest.approx(np.pi * 15**2, rel=0.1)
    assert "red circle" in spec.caption() and "left" in spec.caption()


@pytest.mark.parametrize("motion, axis, sign", [("right", 0, 1), ("up", 1, -1), ("down", 1, 1)])
def test_translations_move_the_centroid(motion, axis, sign):
    spec = clip(obj("square", "blue", motion, x=0.3 if motion == "right" else 0.5,
                    y=0.7 if motion == "up" else 0.3, size=0.3, distance=0.35))
    xy = centroids(foreground(render_clip(spec, 64, 6)))
    assert np.all(sign * np.diff(xy[:, axis]) > 0)
    assert np.ptp(xy[:, 1 - axis]) < 1


def test_grow_shrink_spin_still_and_recolour():
    def areas(spec):
        return foreground(render_clip(spec, 64, 8)).sum(axis=(1, 2))

    grow = areas(clip(obj("star", "yellow", "grow")))
    shrink = areas(clip(obj("star", "yellow", "shrink")))
    assert np.all(np.diff(grow) > 0) and grow[-1] > 2.5 * grow[0]
    assert np.all(np.diff(shrink) < 0) and shrink[0] > 2.5 * shrink[-1]

    spin = foreground(render_clip(clip(obj("cross", "green", "spin", spin=70.0)), 64, 8))
    assert (spin[0] != spin[-1]).sum() > 100  # the pose changes a lot ...
    assert np.ptp(spin.sum(axis=(1, 2))) < 0.15 * spin[0].sum()  # ... the area hardly
    assert np.abs(np.diff(centroids(spin), axis=0)).max() < 1.5

    still = render_clip(clip(obj("triangle", "white", "still")), 64, 8)
    assert (still == still[:1]).all()

    recolour = render_clip(clip(obj("square", "red", "recolour", to_colour="blue")), 64, 8)
    centre_first, centre_last = recolour[0, 32, 32], recolour[-1, 32, 32]
    assert hue_distance(hue_degrees(centre_first)[0], EXPECTED_HUE["red"]) < 20
    assert hue_distance(hue_degrees(centre_last)[0], EXPECTED_HUE["blue"]) < 20


@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_object_pixels_have_the_named_colour(colour):
    frame = render_clip(clip(obj("square", colour), background=20), 64, 1)[0]
    h, s, v = hue_degrees(frame[32, 32])
    if colour == "white":
        assert s < 0.1 and v > 0.85
    else:
        assert hue_distance(h, EXPECTED_HUE[colour]) < 20 and s > 0.6 and v > 0.6
    assert tuple(frame[1, 1]) == (20, 20, 20)


def test_colours_are_far_apart():
    rgb = np.array(list(COLOURS.values()), dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert distances[~np.eye(len(rgb), dtype=bool)].min() > 90


def test_shapes_look_different():
    masks = {s: foreground(render_clip(clip(obj(s, size=0.5)), 64, 1))[0] for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] ^ masks[b]).sum() > 150, (a, b)


def test_flipped_clip_is_the_mirror_image_with_swapped_directions():
    spec = clip(obj("triangle", "orange", "left", x=0.75, y=0.3, size=0.3, distance=0.4),
                obj("star", "cyan", "spin", x=0.3, y=0.75, size=0.3, spin=50.0), phrasing=0)
    flipped = spec.flipped()
    np.testing.assert_array_equal(render_clip(flipped, 64, 8), render_clip(spec, 64, 8)[:, :, ::-1])
    assert "an orange triangle moves to the left" in spec.caption()
    assert "an orange triangle moves to the right" in flipped.caption()
    assert flipped.flipped() == spec
    xy = centroids(foreground(render_clip(dataclasses.replace(flipped, objects=flipped.objects[:1]), 64, 8)))
    assert np.all(np.diff(xy[:, 0]) > 0)
    answers = {(q.question, q.answer) for q in flipped.qa_pairs()}
    assert ("which way does the triangle move?", "right") in answers
    # Flipping sampled clips is exact too.
    rng = np.random.default_rng(4)
    for _ in range(20):
        s = sample_spec(rng, 0.5)
        np.testing.assert_array_equal(render_clip(s.flipped(), 48, 3), render_clip(s, 48, 3)[:, :, ::-1])


def test_reversed_clip_plays_the_frames_backwards_with_the_opposite_motion():
    spec = clip(obj("triangle", "orange", "left", x=0.75, y=0.3, size=0.3, distance=0.4),
                obj("star", "cyan", "recolour", x=0.3, y=0.75, size=0.3, to_colour="white"), phrasing=0)
    back = spec.reversed()
    ahead, behind = render_clip(spec, 64, 8), render_clip(back, 64, 8)
    # the same pixels in the reverse order, up to float rounding along an edge (a row of a triangle)
    assert ((ahead[::-1] != behind).any(-1).sum(axis=(1, 2)) <= 40).all()
    orange = (behind[..., 0] > 200) & (behind[..., 1] > 100) & (behind[..., 1] < 180) & (behind[..., 2] < 60)
    assert np.all(np.diff(centroids(orange)[:, 0]) > 0)  # the triangle now moves right
    assert back.caption() == "an orange triangle moves to the right while a white star turns cyan"
    assert back.reversed() == spec
    answers = {(q.question, q.answer) for q in back.qa_pairs()}
    assert ("which way does the triangle move?", "right") in answers
    assert ("what colour does the star turn?", "cyan") in answers
    size = {q.question: q.answer for q in clip(obj("square", "red", "grow")).reversed().qa_pairs()}
    assert size["does the square get bigger or smaller?"] == "smaller"
    # Sampled clips, every motion, mirrored ones included: the frames come back reversed.
    rng = np.random.default_rng(8)
    seen = set()
    for _ in range(60):
        s = sample_spec(rng, 0.5)
        s = s.flipped() if rng.random() < 0.5 else s
        seen |= {o.motion for o in s.objects}
        ahead, back = render_clip(s, 48, 6), render_clip(s.reversed(), 48, 6)
        assert ((ahead[::-1] != back).any(-1).sum(axis=(1, 2)) <= 30).all()
    assert seen == set(MOTIONS)


def test_twins_differ_from_the_clip_in_the_one_thing_their_kind_names():
    rng = np.random.default_rng(3)
    made = {kind: 0 for kind in TWIN_KINDS}
    for _ in range(200):
        spec = sample_spec(rng, 0.5)
        for kind in TWIN_KINDS:
            twin = twin_spec(spec, kind, rng)
            if twin is None:
                # only a clip that would look and read the same (no order to reverse, nothing moving)
                assert kind in ("reverse", "still")
                if kind == "reverse":
                    assert {o.motion for o in spec.objects} <= {"still", "spin"}
                continue
            made[kind] += 1
            twin.validate()
            assert twin.key != spec.key and twin.background == spec.background
            changed = [(a, b) for a, b in zip(spec.objects, twin.objects) if a != b]
            if kind == "reverse":
                assert [b.motion for _, b in changed] == [{"left": "right", "right": "left", "up": "down",
                                                          "down": "up", "grow": "shrink", "shrink": "grow"}
                                                         .get(a.motion, a.motion) for a, _ in changed]
                continue
            assert len(changed) == 1
            (a, b), = changed
            same = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) == getattr(b, f.name)}
            if kind == "shape":
                assert a.shape != b.shape and {"colour", "motion", "x", "y", "size"} <= same
                assert b.shape not in {o.shape for o in twin.objects if o is not b}
            elif kind == "colour":
                assert a.colour != b.colour and {"shape", "motion", "x", "y", "size", "to_colour"} <= same
            else:
                assert a.motion != "still" and b.motion == "still" and {"shape", "colour", "x", "y"} <= same
    assert all(n >= 100 for n in made.values()), made
    with pytest.raises(SynthError, match="twin kind"):
        twin_spec(spec, "upside-down", rng)


def test_render_times_match_frame_subsets_and_sizes_are_free():
    spec = sample_spec(np.random.default_rng(9))
    full = render_clip(spec, 64, 16)
    np.testing.assert_array_equal(render_clip(spec, 64, times=clip_times(16)[::5]), full[::5])
    assert render_clip(spec, 112, 4).shape == (4, 112, 112, 3)
    with pytest.raises(SynthError):
        render_clip(spec, 64, times=[0.5, 1.5])


# -- language -------------------------------------------------------------------------------------------------
def test_captions_name_the_attributes_in_three_phrasings():
    spec = clip(obj("circle", "red", "left", x=0.7, distance=0.4), obj("square", "blue", "still", x=0.2, size=0.3))
    captions = spec.captions()
    assert len(set(captions)) == 3
    for caption in captions:
        assert "red circle" in caption and "blue square" in caption
        assert "left" in caption
    assert spec.caption(0) == "a red circle moves to the left while a blue square stays still"
    reordered = dataclasses.replace(spec, objects=spec.objects[::-1], phrasing=2)
    assert reordered.key == spec.key
    assert clip(obj(colour="orange")).caption(0) == "an orange circle stays still"


def test_qa_answers_agree_with_the_spec_and_the_pixels():
    rng = np.random.default_rng(11)
    seen_types = set()
    for _ in range(200):
        spec = sample_spec(rng, 0.4)
        by_shape = {o.shape: o for o in spec.objects}
        for qa in spec.qa_pairs():
            seen_types.add(qa.answer_type)
            if qa.answer_type == "count":
                assert qa.answer == {1: "one", 2: "two"}[len(spec.objects)]
                continue
            words = qa.question.rstrip("?").split()
            named = [by_shape[w] for w in words if w in by_shape]
            if qa.answer_type == "shape":
                assert qa.answer in by_shape
                o = by_shape[qa.answer]
                assert len(spec.objects) == 1 or o.colour in words
            elif qa.answer_type == "colour":
                (o,) = named
                assert qa.answer == (o.to_colour if "turn" in words else o.colour)
            elif qa.answer_type == "direction":
                (o,) = named
                alone = dataclasses.replace(spec, objects=(o,))
                dx, dy = np.diff(centroids(foreground(render_clip(alone, 64, 4)))[[0, -1]], axis=0)[0]
                expected = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
                assert qa.answer == expected
            elif qa.answer_type == "size":
                (o,) = named
                area = foreground(render_clip(dataclasses.replace(spec, objects=(o,)), 64, 4)).sum(axis=(1, 2))
                assert qa.answer == ("bigger" if area[-1] > area[0] else "smaller")
            elif qa.answer_type == "change":
                (o,) = named
                assert qa.answer == {"left": "position", "right": "position", "up": "position", "down": "position",
                                     "grow": "size", "shrink": "size", "spin": "rotation", "still": "nothing",
                                     "recolour": "colour"}[o.motion]
            elif qa.answer_type == "which":
                assert len(spec.objects) == 2
                o = by_shape[qa.answer]
                other = [p for p in spec.objects if p is not o][0]
                assert o.motion != other.motion or o.to_colour != other.to_colour
            else:
                pytest.fail(f"unknown answer type {qa.answer_type}")
    assert seen_types == {"count", "shape", "colour", "direction", "size", "change", "which"}


def test_entities_come_from_the_vocabulary():
    vocabulary = entity_vocabulary()
    assert "red circle" in vocabulary and "star" in vocabulary and len(set(vocabulary)) == len(vocabulary)
    spec = clip(obj("square", "red", "recolour", to_colour="blue"))
    assert set(spec.entities()) == {"square", "red square", "blue square"}
    assert set(spec.entities()) <= set(vocabulary)


def test_invalid_specs_are_rejected():
    with pytest.raises(SynthError, match="circle"):
        clip(obj("circle", "red", "spin", spin=30.0))
    with pytest.raises(SynthError, match="different shapes"):
        clip(obj("circle", "red", x=0.2, size=0.2), obj("circle", "blue", x=0.8, size=0.2))
    with pytest.raises(SynthError, match="colour"):
        clip(obj(colour="pink"))
    with pytest.raises(SynthError, match="not a clip spec"):
        ClipSpec.from_dict({"objects": [{"shape": "circle"}]})


# -- splits ---------------------------------------------------------------------------------------------------
def test_split_sizes_and_distinct_held_out_captions():
    specs = sample_corpus(CorpusConfig(seed=1, videos=300, test_videos=100))
    assert {k: len(v) for k, v in specs.items()} == {"train": 170, "val": 30, "test": 100}
    assert len({s.caption() for s in specs["test"]}) == 100
    assert len({s.key for s in specs["test"]}) == 100
    assert len({s.key for s in specs["val"]}) == 30
    # Splits come from separate streams: growing the corpus keeps test, and train grows by appending.
    bigger = sample_corpus(CorpusConfig(seed=1, videos=400, test_videos=100, val_videos=30))
    assert bigger["test"] == specs["test"] and bigger["val"] == specs["val"]
    assert bigger["train"][:170] == specs["train"]
    assert sample_corpus(CorpusConfig(seed=2, videos=300, test_videos=100))["test"] != specs["test"]


@pytest.mark.parametrize("bad", [dict(size=63), dict(videos=0), dict(frames_per_video=1), dict(val_fraction=1.5),
                                 dict(videos=10, val_videos=5, test_videos=5), dict(two_object_prob=-0.1)])
def test_bad_corpus_configs_are_rejected(bad):
    with pytest.raises(SynthError):
        CorpusConfig(**{"seed": 0, "videos": 20, **bad}).validate()
