"""Relevance of a library video to a caption, judged from the video's alpro-synth spec.

Many videos of a synthetic library fit one caption ("a red circle moves to the left"), so "the caption's own
video came first" is not what a user judges. A result is relevant when its video has every attribute the
caption names. The attributes are the ones `training.synth` puts into captions, per shape: its shape, its
start colour, its motion (a direction, grow / shrink, spin, still, recolour) and, for a recolour, the colour
it turns. The generator's captions name every shape of a clip, one clause each, so a caption also fixes how
many shapes the clip has.

    caption_attributes("a red circle moves to the left")   # what a caption names (generator vocabulary)
    stated_attributes(spec)                                # what the caption of `spec` names
    satisfies(spec, attributes)                            # whether a clip has all of them
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from training.synth import COLOURS, PAIR_JOINS, PHRASES, SHAPES, SPLITS, ClipSpec, ObjectSpec, SynthError


class CaptionError(ValueError):
    """A caption uses words outside the generator's vocabulary."""


@dataclass(frozen=True)
class ShapeAttributes:
    """What a caption names about one shape; None where it names nothing."""

    shape: str | None = None  # one of SHAPES
    colour: str | None = None  # colour at the start, one of COLOURS
    motion: str | None = None  # one of MOTIONS
    to_colour: str | None = None  # the colour a recolouring shape turns

    def fits(self, obj: ObjectSpec) -> bool:
        """Whether `obj` has every attribute named here."""
        return all(want is None or want == have for want, have in
                   ((self.shape, obj.shape), (self.colour, obj.colour), (self.motion, obj.motion),
                    (self.to_colour, obj.to_colour)))


Attributes = tuple[ShapeAttributes, ...]  # one entry per shape the caption names

_ARTICLES = ("a", "an", "the")
_CLAUSE_SPLIT = re.compile("|".join(sorted({re.escape(j) for j in PAIR_JOINS}, key=len, reverse=True)))


def _verb_phrases() -> dict[str, tuple[str, str | None]]:
    """Every verb phrase the generator writes -> (motion, to_colour), from its own phrase table."""
    table: dict[str, tuple[str, str | None]] = {}
    for motion, phrasings in PHRASES.items():
        for phrasing in phrasings:
            for to in (COLOURS if "{to}" in phrasing else (None,)):
                table[phrasing.format(to=to)] = (motion, to)
    return table


_VERB_PHRASES = _verb_phrases()


def stated_attributes(spec: ClipSpec) -> Attributes:
    """The attributes every caption of `spec` names (any phrasing), in the order of its objects."""
    return tuple(ShapeAttributes(o.shape, o.colour, o.motion, o.to_colour) for o in spec.objects)


def _clause_attributes(clause: str) -> ShapeAttributes:
    words = clause.split()
    if words and words[0] in _ARTICLES:
        words = words[1:]
    colour = None
    if words and words[0] in COLOURS:
        colour, words = words[0], words[1:]
    if not words or words[0] not in SHAPES:
        raise CaptionError(f"{clause!r} does not name a shape ({', '.join(SHAPES)}) after an optional colour")
    shape, rest = words[0], " ".join(words[1:])
    if not rest:
        return ShapeAttributes(shape=shape, colour=colour)
    if rest not in _VERB_PHRASES:
        raise CaptionError(f"{clause!r}: {rest!r} is not one of the generator's motion phrases")
    motion, to_colour = _VERB_PHRASES[rest]
    return ShapeAttributes(shape=shape, colour=colour, motion=motion, to_colour=to_colour)


def caption_attributes(caption: str) -> Attributes:
    """The attributes a caption names, one entry per clause ("[a] [colour] shape [motion phrase]", clauses
    joined as the generator joins them); raises CaptionError for words outside the generator's vocabulary."""
    text = " ".join(caption.lower().replace(",", " ").split()).rstrip(".").strip()
    if not text:
        raise CaptionError("empty caption")
    return tuple(_clause_attributes(clause.strip()) for clause in _CLAUSE_SPLIT.split(text))


def satisfies(spec: ClipSpec, attributes: Attributes) -> bool:
    """Whether the clip has exactly as many shapes as `attributes` names, each with its named attributes."""
    if len(attributes) != len(spec.objects):
        return False
    return any(all(a.fits(o) for a, o in zip(attributes, order))
               for order in itertools.permutations(spec.objects))


def is_relevant(caption: str, spec: ClipSpec) -> bool:
    """Whether the clip described by `spec` is a right answer to a search for `caption`."""
    return satisfies(spec, caption_attributes(caption))


def load_library_specs(corpus: Path) -> dict[str, ClipSpec]:
    """File name -> spec of every video of an alpro-synth corpus, from its annotations."""
    specs: dict[str, ClipSpec] = {}
    for split in SPLITS:
        path = Path(corpus) / "annotations" / f"{split}.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SynthError(f"cannot read the corpus annotations {path}: {e}") from e
        for line in filter(str.strip, lines):
            row = json.loads(line)
            specs[Path(row["video"]).name] = ClipSpec.from_dict(row["spec"])
    return specs


@dataclass(frozen=True)
class SearchScores:
    """How well ranked results answer captions (rates in [0, 1])."""

    queries: int  # captions searched
    k: int  # results judged per caption
    own_first: int  # captions whose own video came first
    first_relevant: int  # captions whose first result is relevant
    precision: float  # mean share of relevant videos among the top k
    precision_ceiling: float  # the best possible precision: some captions fit fewer than k library videos
    # mean share of the relevant videos the top k could hold that it holds: relevant among the top k over
    # min(k, videos the caption fits); 1.0 is possible for every caption
    attainable_precision: float = 0.0

    @property
    def own_first_rate(self) -> float:
        return self.own_first / self.queries if self.queries else 0.0

    @property
    def first_relevant_rate(self) -> float:
        return self.first_relevant / self.queries if self.queries else 0.0


def score_searches(searches: Sequence[tuple[str, str, Sequence[str]]], library: Mapping[str, ClipSpec],
                   k: int = 5) -> SearchScores:
    """Score (caption, its own video's name, ranked result names) triples; a result whose name is not in
    `library` counts as not relevant."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    own_first = first_relevant = 0
    precision = ceiling = attainable = 0.0
    for caption, own, names in searches:
        attributes = caption_attributes(caption)
        top = list(names[:k])
        relevant = [name in library and satisfies(library[name], attributes) for name in top]
        own_first += bool(top) and top[0] == own
        first_relevant += bool(relevant) and relevant[0]
        precision += sum(relevant) / k
        can_hold = min(k, sum(satisfies(spec, attributes) for spec in library.values()))
        ceiling += can_hold / k
        attainable += sum(relevant) / can_hold if can_hold else 0.0
    n = len(searches)
    return SearchScores(queries=n, k=k, own_first=own_first, first_relevant=first_relevant,
                        precision=precision / n if n else 0.0, precision_ceiling=ceiling / n if n else 0.0,
                        attainable_precision=attainable / n if n else 0.0)
