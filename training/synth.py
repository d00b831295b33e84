"""`alpro-synth`: a synthetic video-language corpus of coloured shapes that move, change or interact.

The corpus is the product demo's data and the training tests' data. It is built to be learnable by a small
TimeSformer (16-px patches, 64-112 px frames, 4-8 frames) trained from scratch on a CPU in minutes: one or
two large shapes in well-separated colours on a dark background, with a motion that is obvious over the
clip, and captions / QA pairs generated from exactly those attributes. Layout of a corpus directory:

    videos/{split}_{index:06d}.mp4       H.264 (libx264, yuv420p), `size` x `size`, `frames_per_video` frames
    annotations/{train,val,test}.jsonl   {"video", "caption", "key", "spec"}, one clip per line
    annotations/qa_{split}.jsonl         {"video", "question", "answer", "answer_type"}, one pair per line
    annotations/ans2label.json           {answer: index} over the train split's answers
    annotations/entities.txt             entity vocabulary for ALPRO's prompter (PEM) prompts
    corpus.json                          seed, counts, settings and generator version

Everything is a pure function of the seed: specs are sampled from numpy Generators, rendering draws no
random numbers, and the same `render_clip` feeds the files and on-the-fly training, so a trainer can draw
fresh clips every epoch (`sample_spec`) or re-render any annotated clip (`ClipSpec.from_dict(line["spec"])`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

# Bump whenever the same seed and settings would give different annotations or pixels.
GENERATOR_VERSION = "2"
SPLITS = ("train", "val", "test")

# Well separated in RGB and in YUV after 4:2:0 subsampling; none is close to the dark backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 210),
    "orange": (255, 140, 0),
    "white": (240, 240, 240),
    "cyan": (0, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "spin", "still", "recolour")
TRANSLATIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MIRRORED_MOTION = {"left": "right", "right": "left"}
REVERSED_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
TWIN_KINDS = ("reverse", "shape", "colour", "still")
# Degrees after which the shape looks the same again; a spin covers SPIN_FRACTION of it so it never
# comes back to its start pose (a circle has no visible rotation and never spins).
SYMMETRY_DEGREES = {"square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0}
SPIN_FRACTION = 0.8
GROW_FROM = 0.5  # a growing shape starts at this fraction of its full size (a shrinking one ends there)
BOUND_RADIUS = 0.6  # every shape outline fits in a circle of radius BOUND_RADIUS * size around its centre
POSITION_GRID = 1024  # positions are multiples of 1/1024 so mirroring (x -> 1 - x) is exact in floats
SINGLE_SIZE = (0.46, 0.54)  # shape size (fraction of the frame side) when it is alone
PAIR_SIZE = (0.30, 0.36)  # shape size when two share the frame
GROW_SIZE_FACTOR = 1.25  # growing / shrinking shapes are this much larger at full size, so never tiny
TRAVEL = (0.22, 0.26)  # distance a translating shape covers over the clip, fraction of the frame side
EDGE_GAP = 0.03  # minimum clearance between a shape's bounding circle and the frame edge
PAIR_GAP = 0.03  # minimum clearance between the outlines' bounding circles of two shapes, at every instant
BACKGROUND_MAX = 40  # backgrounds are greys in [0, BACKGROUND_MAX]

# Verb phrases per motion, one per caption phrasing: finite, gerund, finite. `{to}` is the end colour.
PHRASES: dict[str, tuple[str, str, str]] = {
    "left": ("moves to the left", "moving left", "slides to the left"),
    "right": ("moves to the right", "moving right", "slides to the right"),
    "up": ("moves up", "moving upward", "rises"),
    "down": ("moves down", "moving downward", "falls"),
    "grow": ("grows", "getting bigger", "expands"),
    "shrink": ("shrinks", "getting smaller", "contracts"),
    "spin": ("spins", "rotating", "spins around"),
    "still": ("stays still", "not moving", "stays in place"),
    "recolour": ("turns {to}", "changing to {to}", "changes colour to {to}"),
}
NUM_PHRASINGS = 3
PAIR_JOINS = (" while ", " and ", " and ")
COUNT_WORDS = {1: "one", 2: "two"}
CHANGE_ANSWERS = {"left": "position", "right": "position", "up": "position", "down": "position",
                  "grow": "size", "shrink": "size", "spin": "rotation", "still": "nothing", "recolour": "colour"}
ANSWER_TYPES = ("colour", "shape", "count", "direction", "size", "change", "which")


class SynthError(ValueError):
    """A corpus setting or clip spec is invalid."""


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of `shape` around (0, 0), image axes (y down), within radius 2 * BOUND_RADIUS. # (N, 2)"""
    if shape == "circle":
        a = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "square":
        h = 0.85
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])  # apex up
        return 1.2 * np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.2, 0.55)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if shape == "cross":
        w, l = 0.33, 1.0
        return np.array([[-w, -l], [w, -l], [w, -w], [l, -w], [l, w], [w, w], [w, l], [-w, l], [-w, w],
                         [-l, w], [-l, -w], [-w, -w]])
    raise SynthError(f"unknown shape {shape!r}; expected one of {SHAPES}")


_POLYGONS = {shape: _unit_polygon(shape) for shape in SHAPES}


def _quantize(value: float) -> float:
    return round(value * POSITION_GRID) / POSITION_GRID


@dataclass(frozen=True)
class ObjectSpec:
    """One shape and what it does over the clip; coordinates are fractions of the frame side."""

    shape: str  # one of SHAPES
    colour: str  # colour at the start, one of COLOURS
    motion: str  # one of MOTIONS, as seen in the rendered frames (after any mirroring)
    x: float  # centre at the start, 0 = left edge; rounded to a multiple of 1/POSITION_GRID
    y: float  # centre at the start, 0 = top edge; rounded to a multiple of 1/POSITION_GRID
    size: float  # full size: the shape's nominal diameter
    distance: float = 0.0  # path length of a translation (left/right/up/down), else 0
    spin: float = 0.0  # signed degrees turned over the clip (spin), else 0; positive = clockwise on screen
    angle: float = 0.0  # orientation at the start, degrees clockwise
    to_colour: str | None = None  # colour from the middle of the clip on (recolour), else None

    def __post_init__(self) -> None:
        # Snap to the grid so that mirroring twice gives back exactly the same spec.
        object.__setattr__(self, "x", _quantize(self.x))
        object.__setattr__(self, "y", _quantize(self.y))

    def validate(self) -> None:
        if self.shape not in SHAPES:
            raise SynthError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        for name in (self.colour, self.to_colour):
            if name is not None and name not in COLOURS:
                raise SynthError(f"unknown colour {name!r}; expected one of {tuple(COLOURS)}")
        if self.motion not in MOTIONS:
            raise SynthError(f"unknown motion {self.motion!r}; expected one of {MOTIONS}")
        if (self.motion == "recolour") != (self.to_colour is not None) or self.to_colour == self.colour:
            raise SynthError(f"motion {self.motion!r} does not fit to_colour {self.to_colour!r}")
        if self.motion == "spin" and self.shape == "circle":
            raise SynthError("a spinning circle looks the same as a still one")

    def mirrored(self) -> ObjectSpec:
        """The same object seen in a horizontally flipped frame."""
        return dataclasses.replace(self, x=1.0 - self.x, angle=-self.angle, spin=-self.spin,
                                   motion=MIRRORED_MOTION.get(self.motion, self.motion))

    def reversed(self) -> ObjectSpec:
        """The same object with the clip played backwards: it ends where it started, right -> left,
        grow -> shrink, the end colour first: `state_at(t)` of the result is `state_at(1 - t)` here, up to
        float rounding (a pixel at an edge, now and then) and a recolour at t = 0.5 itself, which no frame
        time of a file with an even frame count hits."""
        dx, dy = TRANSLATIONS.get(self.motion, (0, 0))
        return dataclasses.replace(
            self, x=self.x + dx * self.distance, y=self.y + dy * self.distance,
            motion=REVERSED_MOTION.get(self.motion, self.motion),
            angle=self.angle + self.spin, spin=-self.spin, colour=self.to_colour or self.colour,
            to_colour=self.colour if self.to_colour is not None else None)

    def state_at(self, t: float) -> tuple[float, float, float, float, str]:
        """(x, y, scale, angle, colour name) at clip time t in [0, 1]."""
        dx, dy = TRANSLATIONS.get(self.motion, (0, 0))
        x = self.x + dx * self.distance * t
        y = self.y + dy * self.distance * t
        scale = {"grow": GROW_FROM + (1 - GROW_FROM) * t, "shrink": 1 - (1 - GROW_FROM) * t}.get(self.motion, 1.0)
        angle = self.angle + self.spin * t
        colour = self.to_colour if self.to_colour is not None and t >= 0.5 else self.colour
        return x, y, scale, angle, colour

    def noun_phrase(self, colour: bool = True) -> str:
        """"a red circle"; without `colour`, "a circle" (the colour it may turn to stays in the verb phrase)."""
        words = f"{self.colour} {self.shape}" if colour else self.shape
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

    def verb_phrase(self, phrasing: int = 0) -> str:
        return PHRASES[self.motion][phrasing].format(to=self.to_colour)


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    answer_type: str  # one of ANSWER_TYPES


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip's pixels, caption and QA pairs (size and frame count aside)."""

    objects: tuple[ObjectSpec, ...]  # one or two shapes with distinct shapes and colours
    background: int = 0  # grey level of the background
    phrasing: int = 0  # which caption phrasing `caption()` uses, in [0, NUM_PHRASINGS)
    # Rendered as the mirror image of `mirrored()` objects. Keeps `flipped()` pixel-exact: rasterising the
    # mirrored geometry directly could differ from the mirrored raster by a pixel at an edge.
    mirrored: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))

    def validate(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise SynthError(f"a clip has 1 or 2 objects, got {len(self.objects)}")
        for obj in self.objects:
            obj.validate()
        if len(self.objects) == 2:
            a, b = self.objects
            colours_a = {a.colour, a.to_colour} - {None}
            if a.shape == b.shape or colours_a & {b.colour, b.to_colour}:
                raise SynthError("two objects need different shapes and colours so questions can name them")
        if not 0 <= self.phrasing < NUM_PHRASINGS:
            raise SynthError(f"phrasing {self.phrasing} not in [0, {NUM_PHRASINGS})")
        if not 0 <= self.background <= 255:
            raise SynthError(f"background grey {self.background} not in [0, 255]")

    def flipped(self) -> ClipSpec:
        """The horizontally flipped clip: its frames are `render_clip(self)[:, :, ::-1]`, left <-> right."""
        return dataclasses.replace(self, objects=tuple(o.mirrored() for o in self.objects),
                                   mirrored=not self.mirrored)

    def reversed(self) -> ClipSpec:
        """The clip played backwards (see `ObjectSpec.reversed`)."""
        return dataclasses.replace(self, objects=tuple(o.reversed() for o in self.objects))

    # -- language ---------------------------------------------------------------------------------------
    def caption(self, phrasing: int | None = None, colours: bool = True) -> str:
        """The caption in phrasing `phrasing` (default: the spec's own); without `colours` it leaves out each
        shape's colour at the start ("a circle moves to the left"), a caption that fits more clips."""
        p = self.phrasing if phrasing is None else phrasing
        clauses = [f"{o.noun_phrase(colours)} {o.verb_phrase(p)}" for o in self.objects]
        return PAIR_JOINS[p].join(clauses)

    def captions(self) -> list[str]:
        """Every phrasing of the caption, the spec's own first."""
        order = [self.phrasing] + [p for p in range(NUM_PHRASINGS) if p != self.phrasing]
        return [self.caption(p) for p in order]

    @property
    def key(self) -> str:
        """Canonical description: equal keys <=> clips a viewer cannot tell apart by their captions."""
        return " | ".join(sorted(f"{o.noun_phrase()} {o.verb_phrase(0)}" for o in self.objects))

    @property
    def colourless_key(self) -> str:
        """The key of the caption without colours: equal for every clip that caption fits."""
        return " | ".join(sorted(f"{o.noun_phrase(False)} {o.verb_phrase(0)}" for o in self.objects))

    def entities(self) -> list[str]:
        """Entities (see `entity_vocabulary`) visible in the clip."""
        found: list[str] = []
        for o in self.objects:
            found.append(o.shape)
            found += [f"{c} {o.shape}" for c in (o.colour, o.to_colour) if c is not None]
        return found

    def qa_pairs(self) -> list[QAPair]:
        """Every question this clip answers, in a fixed order."""
        pairs = [QAPair("how many shapes are there?", COUNT_WORDS[len(self.objects)], "count")]
        single = len(self.objects) == 1
        for i, o in enumerate(self.objects):
            other = None if single else self.objects[1 - i]
            if o.to_colour is None:
                pairs.append(QAPair(f"what colour is the {o.shape}?", o.colour, "colour"))
                by_colour = f"the {o.colour} shape"
            else:
                pairs.append(QAPair(f"what colour is the {o.shape} at the start?", o.colour, "colour"))
                pairs.append(QAPair(f"what colour does the {o.shape} turn?", o.to_colour, "colour"))
                by_colour = f"the shape that starts {o.colour}"
            pairs.append(QAPair("what shape is shown?" if single else f"what shape is {by_colour}?",
                                o.shape, "shape"))
            if o.motion in TRANSLATIONS:
                pairs.append(QAPair(f"which way does the {o.shape} move?", o.motion, "direction"))
            if o.motion in ("grow", "shrink"):
                pairs.append(QAPair(f"does the {o.shape} get bigger or smaller?",
                                    "bigger" if o.motion == "grow" else "smaller", "size"))
            pairs.append(QAPair(f"what changes about the {o.shape}?", CHANGE_ANSWERS[o.motion], "change"))
            if other is not None and other.verb_phrase() != o.verb_phrase():
                pairs.append(QAPair(f"which shape {o.verb_phrase()}?", o.shape, "which"))
        return pairs

    # -- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClipSpec:
        try:
            objects = tuple(ObjectSpec(**o) for o in data["objects"])
            spec = cls(objects=objects, **{k: v for k, v in data.items() if k != "objects"})
        except (KeyError, TypeError) as e:
            raise SynthError(f"not a clip spec: {e}") from e
        spec.validate()
        return spec


def entity_vocabulary() -> list[str]:
    """Entity prompts for ALPRO's PEM ("A video of a {entity}"): shapes, then every colour + shape."""
    return list(SHAPES) + [f"{c} {s}" for s in SHAPES for c in COLOURS]


# -- sampling -----------------------------------------------------------------------------------------------
def _sample_object(rng: np.random.Generator, size_range: tuple[float, float], shape: str,
                   colour: str, taken_colours: set[str]) -> ObjectSpec:
    motions = [m for m in MOTIONS if not (m == "spin" and shape == "circle")]
    motion = motions[rng.integers(len(motions))]
    size = rng.uniform(*size_range)
    size = _quantize(size * GROW_SIZE_FACTOR if motion in ("grow", "shrink") else size)
    radius = BOUND_RADIUS * size + EDGE_GAP
    dx, dy = TRANSLATIONS.get(motion, (0, 0))
    distance = _quantize(rng.uniform(*TRAVEL)) if motion in TRANSLATIONS else 0.0
    # Start anywhere that keeps the whole path inside the frame.
    lo_x, hi_x = radius + max(0.0, -dx * distance), 1 - radius - max(0.0, dx * distance)
    lo_y, hi_y = radius + max(0.0, -dy * distance), 1 - radius - max(0.0, dy * distance)
    assert lo_x <= hi_x and lo_y <= hi_y, "sizes and travel leave no room in the frame"
    x, y = _quantize(rng.uniform(lo_x, hi_x)), _quantize(rng.uniform(lo_y, hi_y))
    spin = 0.0
    if motion == "spin":
        spin = float(SPIN_FRACTION * SYMMETRY_DEGREES[shape] * (1 if rng.integers(2) else -1))
    to_colour = None
    if motion == "recolour":
        options = [c for c in COLOURS if c != colour and c not in taken_colours]
        to_colour = options[rng.integers(len(options))]
    return ObjectSpec(shape=shape, colour=colour, motion=motion, x=x, y=y, size=size, distance=distance,
                      spin=spin, to_colour=to_colour)


def _apart(a: ObjectSpec, b: ObjectSpec, steps: int = 17) -> bool:
    """Whether the two shapes' bounding circles stay PAIR_GAP apart over the whole clip."""
    for t in np.linspace(0.0, 1.0, steps):
        ax, ay, a_scale, _, _ = a.state_at(float(t))
        bx, by, b_scale, _, _ = b.state_at(float(t))
        reach = BOUND_RADIUS * (a.size * a_scale + b.size * b_scale) + PAIR_GAP
        if math.hypot(ax - bx, ay - by) < reach:
            return False
    return True


def sample_spec(rng: np.random.Generator, two_object_prob: float = 0.3) -> ClipSpec:
    """A random clip: one shape, or two with different shapes and colours that never touch."""
    colour_names = list(COLOURS)
    two = rng.random() < two_object_prob
    background = int(rng.integers(BACKGROUND_MAX + 1))
    phrasing = int(rng.integers(NUM_PHRASINGS))
    if not two:
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = colour_names[rng.integers(len(colour_names))]
        obj = _sample_object(rng, SINGLE_SIZE, shape, colour, set())
        return ClipSpec(objects=(obj,), background=background, phrasing=phrasing)
    while True:
        shapes = rng.choice(len(SHAPES), size=2, replace=False)
        colours = rng.choice(len(colour_names), size=2, replace=False)
        first = _sample_object(rng, PAIR_SIZE, SHAPES[shapes[0]], colour_names[colours[0]],
                               {colour_names[colours[1]]})
        taken = {first.colour, first.to_colour} - {None}
        for _ in range(20):
            second = _sample_object(rng, PAIR_SIZE, SHAPES[shapes[1]], colour_names[colours[1]], taken)
            if _apart(first, second):
                return ClipSpec(objects=(first, second), background=background, phrasing=phrasing)


def sample_distinct_specs(rng: np.random.Generator, n: int, two_object_prob: float = 0.3,
                          max_tries_per_clip: int = 1000) -> list[ClipSpec]:
    """`n` specs with pairwise different keys (so their captions all describe different clips)."""
    specs: list[ClipSpec] = []
    seen: set[str] = set()
    tries = 0
    while len(specs) < n:
        spec = sample_spec(rng, two_object_prob)
        tries += 1
        if spec.key not in seen:
            seen.add(spec.key)
            specs.append(spec)
        elif tries > max_tries_per_clip * n:
            raise SynthError(f"could not find {n} distinct captions (found {len(specs)}); "
                             "lower the split size or raise two_object_prob")
    return specs


def twin_spec(spec: ClipSpec, kind: str, rng: np.random.Generator) -> ClipSpec | None:
    """A clip that differs from `spec` in one thing only, with a different caption, or None if `kind` cannot
    change this clip. Kinds (TWIN_KINDS): "reverse" plays it backwards (direction, bigger/smaller, start and
    end colour swap); "shape" / "colour" give one shape another shape / start colour; "still" stops one
    moving shape where it starts. Placed beside `spec` in a batch, the twin is the contrastive losses'
    hardest negative: told apart only by what the kind changed."""
    if kind not in TWIN_KINDS:
        raise SynthError(f"unknown twin kind {kind!r}; expected one of {TWIN_KINDS}")
    if kind == "reverse":
        twin = spec.reversed()
    else:
        i = int(rng.integers(len(spec.objects)))
        obj, others = spec.objects[i], [o for j, o in enumerate(spec.objects) if j != i]
        if kind == "shape":
            taken = {o.shape for o in others} | {obj.shape} | ({"circle"} if obj.motion == "spin" else set())
            options = [s for s in SHAPES if s not in taken]
            shape = options[int(rng.integers(len(options)))]
            spin = math.copysign(SPIN_FRACTION * SYMMETRY_DEGREES[shape], obj.spin) if obj.motion == "spin" else 0.0
            new = dataclasses.replace(obj, shape=shape, spin=spin)
        elif kind == "colour":
            taken = {c for o in spec.objects for c in (o.colour, o.to_colour) if c is not None}
            options = [c for c in COLOURS if c not in taken]
            new = dataclasses.replace(obj, colour=options[int(rng.integers(len(options)))])
        else:  # still
            if obj.motion == "still":
                return None
            new = dataclasses.replace(obj, motion="still", distance=0.0, spin=0.0, to_colour=None)
            if others and not _apart(new, others[0]):
                return None
        objects = list(spec.objects)
        objects[i] = new
        twin = dataclasses.replace(spec, objects=tuple(objects))
    if twin.key == spec.key:  # e.g. a still or spinning shape played backwards
        return None
    twin.validate()
    return twin


# -- rendering ----------------------------------------------------------------------------------------------
def clip_times(num_frames: int) -> np.ndarray:
    """Clip times in [0, 1] of `num_frames` evenly spaced frames, first and last included."""
    if num_frames < 1:
        raise SynthError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def _draw_frame(objects: Sequence[ObjectSpec], background: int, size: int, t: float) -> np.ndarray:
    image = Image.new("RGB", (size, size), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x, y, scale, angle, colour = obj.state_at(t)
        a = math.radians(angle)
        rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        points = _POLYGONS[obj.shape] @ rotation * (obj.size * scale * size / 2) + (x * size, y * size)
        draw.polygon([tuple(p) for p in points.tolist()], fill=COLOURS[colour])
    return np.asarray(image)


def render_clip(spec: ClipSpec, size: int = 128, num_frames: int = 16,
                times: Sequence[float] | None = None) -> np.ndarray:
    """RGB frames of the clip at `times` (default: `clip_times(num_frames)`). # (T, H, W, 3) uint8

    Deterministic: the files of a corpus hold these frames (up to H.264 loss) at `clip_times(frames)`.
    """
    if size < 8:
        raise SynthError(f"size must be >= 8 pixels, got {size}")
    ts = clip_times(num_frames) if times is None else np.asarray(times, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0 or ts.min() < 0 or ts.max() > 1:
        raise SynthError(f"times must be a non-empty 1-D sequence in [0, 1], got {times!r}")
    objects = [o.mirrored() for o in spec.objects] if spec.mirrored else list(spec.objects)
    frames = np.stack([_draw_frame(objects, spec.background, size, float(t)) for t in ts])  # (T, H, W, 3)
    if spec.mirrored:
        frames = np.ascontiguousarray(frames[:, :, ::-1])
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """Encode RGB frames # (T, H, W, 3) uint8 to an H.264 yuv420p mp4 (one thread: deterministic bytes)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise SynthError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        # mbtree off: with it, the x264 that PyAV 18 bundles encodes the same frames differently from one process
        # to the next (bytes and pixels), so a corpus was not reproducible
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "medium",
                                                                    "x264-params": "mbtree=0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = Fraction(1, fps)
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# -- corpus -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusConfig:
    """What `generate_corpus` writes; `corpus.json` records it."""

    seed: int  # everything is a function of this
    videos: int  # clips over all splits
    size: int = 128  # frame side in pixels (even: yuv420p)
    frames_per_video: int = 16  # frames in each file
    fps: int = 8  # frames per second of the files (16 frames = 2 s)
    val_fraction: float = 0.1  # share of `videos` in val unless val_videos is set
    test_fraction: float = 0.1  # share of `videos` in test unless test_videos is set
    val_videos: int | None = None  # exact val size
    test_videos: int | None = None  # exact test size
    two_object_prob: float = 0.3  # probability that a clip has a second shape
    crf: int = 18  # x264 quality (lower = larger, closer to the rendered pixels)

    def split_sizes(self) -> dict[str, int]:
        val = self.val_videos if self.val_videos is not None else int(self.videos * self.val_fraction + 0.5)
        test = self.test_videos if self.test_videos is not None else int(self.videos * self.test_fraction + 0.5)
        return {"train": self.videos - val - test, "val": val, "test": test}

    def validate(self) -> None:
        if self.videos < 1:
            raise SynthError(f"videos must be >= 1, got {self.videos}")
        if self.size < 16 or self.size % 2:
            raise SynthError(f"size must be an even number >= 16 (yuv420p), got {self.size}")
        if self.frames_per_video < 2:
            raise SynthError(f"frames_per_video must be >= 2, got {self.frames_per_video}")
        if self.fps < 1:
            raise SynthError(f"fps must be >= 1, got {self.fps}")
        for name in ("val_fraction", "test_fraction", "two_object_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SynthError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        sizes = self.split_sizes()
        if min(sizes.values()) < 0 or sizes["train"] < 1:
            raise SynthError(f"splits {sizes} leave no train clips out of {self.videos}")
        if not 0 <= self.crf <= 51:
            raise SynthError(f"crf must be in [0, 51], got {self.crf}")


def sample_corpus(config: CorpusConfig) -> dict[str, list[ClipSpec]]:
    """Specs per split. Val and test keys are distinct within their split; each split has its own stream,
    so a split does not change when another one is resized, and train for N clips is a prefix of train for
    more."""
    config.validate()
    sizes = config.split_sizes()
    streams = dict(zip(("test", "val", "train"), np.random.SeedSequence(config.seed).spawn(3)))
    specs: dict[str, list[ClipSpec]] = {}
    for split in SPLITS:
        rng = np.random.default_rng(streams[split])
        if split == "train":
            specs[split] = [sample_spec(rng, config.two_object_prob) for _ in range(sizes[split])]
        else:
            specs[split] = sample_distinct_specs(rng, sizes[split], config.two_object_prob)
    return specs


def _render_and_write(job: tuple[str, dict[str, Any], int, int, int, int]) -> None:
    path, spec_dict, size, frames, fps, crf = job
    spec = ClipSpec.from_dict(spec_dict)
    write_video(Path(path), render_clip(spec, size, frames), fps, crf)


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            count += 1
    return count


@dataclass
class CorpusSummary:
    out: Path
    manifest: dict[str, Any]  # the content of corpus.json
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), **self.manifest, "seconds": self.seconds}


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def prepare_output(out: Path, marker: str, overwrite: bool, what: str) -> None:
    """Make OUT/videos and OUT/annotations; an OUT that is not empty is replaced only with `overwrite` and only
    when it holds `marker` (what this generator writes), so that nothing else is ever deleted."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SynthError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace {what} there")
        if not (out / marker).exists():
            raise SynthError(f"{out} is not empty and holds no {marker}; refusing to delete anything there")
        shutil.rmtree(out / "videos", ignore_errors=True)
        shutil.rmtree(out / "annotations", ignore_errors=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)


def generate_corpus(out: Path, config: CorpusConfig, workers: int | None = None,
                    overwrite: bool = False) -> CorpusSummary:
    """Write the corpus described by `config` to `out` (see the module docstring for the layout)."""
    config.validate()
    out = Path(out)
    prepare_output(out, "corpus.json", overwrite, "a corpus")
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    specs = sample_corpus(config)
    seconds["sample"] = time.perf_counter() - start

    start = time.perf_counter()
    jobs, names = [], {}
    for split in SPLITS:
        for index, spec in enumerate(specs[split]):
            name = f"videos/{split}_{index:06d}.mp4"
            names[(split, index)] = name
            jobs.append((str(out / name), spec.to_dict(), config.size, config.frames_per_video, config.fps,
                         config.crf))
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(jobs) < 4 * workers:
        for job in jobs:
            _render_and_write(job)
    else:
        # spawn, not fork: the caller may hold torch / OpenMP threads, which do not survive a fork.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_render_and_write, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    seconds["render_encode"] = time.perf_counter() - start

    start = time.perf_counter()
    annotations = out / "annotations"
    qa_counts: dict[str, int] = {}
    answers: set[str] = set()
    for split in SPLITS:
        rows, qa_rows = [], []
        for index, spec in enumerate(specs[split]):
            video = names[(split, index)]
            # Train keeps every phrasing for caption augmentation; val/test keep one caption per clip.
            caption: str | list[str] = spec.captions() if split == "train" else spec.caption()
            rows.append({"video": video, "caption": caption, "key": spec.key, "spec": spec.to_dict()})
            for qa in spec.qa_pairs():
                qa_rows.append({"video": video, "question": qa.question, "answer": qa.answer,
                                "answer_type": qa.answer_type})
                if split == "train":
                    answers.add(qa.answer)
        _write_jsonl(annotations / f"{split}.jsonl", rows)
        qa_counts[split] = _write_jsonl(annotations / f"qa_{split}.jsonl", qa_rows)
    ans2label = {answer: index for index, answer in enumerate(sorted(answers))}
    (annotations / "ans2label.json").write_text(json.dumps(ans2label, indent=1) + "\n")
    (annotations / "entities.txt").write_text("\n".join(entity_vocabulary()) + "\n")
    manifest = {
        "generator": "alpro-synth",
        "version": GENERATOR_VERSION,
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "videos": {split: len(specs[split]) for split in SPLITS},
        "qa_pairs": qa_counts,
        "answers": len(ans2label),
        "distinct_captions": {split: len({s.key for s in specs[split]}) for split in SPLITS},
        "video_format": {"codec": "libx264", "pix_fmt": "yuv420p", "width": config.size, "height": config.size,
                         "frames": config.frames_per_video, "fps": config.fps},
        "attributes": {"colours": {k: list(v) for k, v in COLOURS.items()}, "shapes": list(SHAPES),
                       "motions": list(MOTIONS)},
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n")
    seconds["annotate"] = time.perf_counter() - start
    logger.info("wrote %d clips to %s in %.1f s", config.videos, out, sum(seconds.values()))
    return CorpusSummary(out=out, manifest=manifest, seconds={k: round(v, 3) for k, v in seconds.items()})


# -- CLI ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpro-synth", description="Write a synthetic video-text corpus "
                                     "of coloured shapes (videos, captions, QA pairs, train/val/test split).")
    parser.add_argument("out", type=Path, help="corpus directory to write")
    parser.add_argument("--videos", type=int, help="clips over all splits (required unless --join)")
    parser.add_argument("--seed", type=int, help="random seed; same seed, same corpus (required unless --join; "
                        "with --join it picks the groups, default 0)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels, even (default 128)")
    parser.add_argument("--frames-per-video", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--fps", type=int, default=8, help="frames per second (default 8)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of clips in val (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of clips in test (default 0.1)")
    parser.add_argument("--val-videos", type=int, help="exact number of val clips (overrides --val-fraction)")
    parser.add_argument("--test-videos", type=int, help="exact number of test clips (overrides --test-fraction)")
    parser.add_argument("--two-object-prob", type=float, default=0.3,
                        help="probability of a second shape per clip (default 0.3)")
    parser.add_argument("--crf", type=int, default=18, help="x264 constant rate factor (default 18)")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPUs, max 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace the corpus already in OUT")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    joined = parser.add_argument_group("long videos", "instead of a corpus, write long videos that join clips of "
                                       "an existing corpus end to end (training/long_videos.py)")
    joined.add_argument("--join", type=int, metavar="N", help="clips per long video (e.g. 6); needs --from")
    joined.add_argument("--from", dest="source", type=Path, metavar="CORPUS", help="the alpro-synth corpus to join")
    joined.add_argument("--split", default="test", help="the corpus split whose clips are joined (default test)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.join is not None or args.source is not None:
        if args.join is None or args.source is None:
            parser.error("--join and --from go together")
        return _main_join(args)
    missing = [flag for flag, value in (("--videos", args.videos), ("--seed", args.seed)) if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    config = CorpusConfig(seed=args.seed, videos=args.videos, size=args.size, frames_per_video=args.frames_per_video,
                          fps=args.fps, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                          val_videos=args.val_videos, test_videos=args.test_videos,
                          two_object_prob=args.two_object_prob, crf=args.crf)
    try:
        summary = generate_corpus(args.out, config, workers=args.workers, overwrite=args.overwrite)
    except SynthError as e:
        print(f"alpro-synth: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        m = summary.manifest
        v, qa = m["videos"], m["qa_pairs"]
        print(f"wrote {sum(v.values())} videos ({v['train']} train / {v['val']} val / {v['test']} test), "
              f"{sum(qa.values())} QA pairs, {m['answers']} answers to {summary.out} "
              f"in {sum(summary.seconds.values()):.1f} s")
    return 0


def _main_join(args: argparse.Namespace) -> int:
    from training.long_videos import make_long_videos  # it imports this module

    try:
        summary = make_long_videos(args.out, args.source, join=args.join, split=args.split,
                                   seed=0 if args.seed is None else args.seed, overwrite=args.overwrite)
    except SynthError as e:
        print(f"alpro-synth: error: {e}", file=sys.stderr)
        return 2
    m = summary.manifest
    print(json.dumps(summary.to_json()) if args.json else
          f"wrote {m['videos']} long videos of {m['join']} {m['split']} clips ({m['questions']} questions that "
          f"name a shape or colour only one part shows) to {summary.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
