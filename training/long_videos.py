"""Long videos made of alpro-synth clips joined end to end, with questions that only one part answers.

For grounded QA (docs/beyond_text.md, "POST /qa: grounded answers"): a question about a long video is
answered right only where the model looks at the right moment. Each long video joins `join` clips of one
split of an alpro-synth corpus; the clips of a group are chosen so that as few shapes as possible recur within
it. Only the source clips' questions that one part alone answers are kept:
- those that name a shape no other clip of the group shows ("what colour is the star?"), `named` "shape";
- those that name a colour no other clip of the group shows ("what shape is the red shape?", "what shape is the
  shape that starts red?", "which shape turns red?"), `named` "colour". A clip shows a colour when one of its
  objects starts or ends with it (a recolouring object shows both).
The grouping looks at shapes only (the retrieval model is weak at shapes, so their questions are the ones to
test); the colour questions are those the grouping happens to leave answerable by one part. Layout written to OUT:

    videos/long_{index:03d}.mp4        the clips' frames one after another (re-rendered from their specs, so
                                       one H.264 generation, like the corpus files), same size and fps
    annotations/long.jsonl             {"video", "fps", "frames", "duration", "parts": [{"clip", "start", "end",
                                       "caption", "key", "spec"}]}, one long video per line; times in seconds
    annotations/qa_long.jsonl          {"video", "question", "answer", "answer_type", "named", "entity", "shape",
                                       "part", "start", "end", "clip"}, one kept question per line: `named` is
                                       "shape" or "colour", `entity` the shape or colour word the question
                                       names; `shape` is that shape for "shape" questions, else null
    long.json                          source corpus, split, join, seed, counts (questions per `named`)

`clip` is the source clip's path relative to the source corpus (its `video` field there). Everything is a
pure function of the source corpus, `join` and `seed`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from training.synth import COLOURS, SHAPES, SPLITS, ClipSpec, SynthError, prepare_output, render_clip, write_video

logger = logging.getLogger(__name__)

LONG_VERSION = "2"  # bump when the same inputs would give other files (2: colour questions, `named`, `entity`)
DEFAULT_JOIN = 6
GROUPING_TRIES = 64  # random orders tried by `choose_groups`; the best one is kept
NAMED_KINDS = ("shape", "colour")  # what a kept question names that only its part shows
_SHAPE_WORDS = re.compile(r"\b(" + "|".join(SHAPES) + r")\b")
_COLOUR_WORDS = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


@dataclass(frozen=True)
class SourceClip:
    """One annotated clip of the source corpus."""

    video: str  # path relative to the corpus root, as in its annotations
    caption: str  # the clip's (first) caption
    key: str  # canonical description (ClipSpec.key)
    spec: ClipSpec
    questions: tuple[dict[str, str], ...]  # {"question", "answer", "answer_type"} of qa_{split}.jsonl

    @property
    def shapes(self) -> frozenset[str]:
        return frozenset(o.shape for o in self.spec.objects)

    @property
    def colours(self) -> frozenset[str]:
        """Every colour an object starts or ends with."""
        return frozenset(c for o in self.spec.objects for c in (o.colour, o.to_colour) if c is not None)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise SynthError(f"cannot read {path}: {e}") from e


def load_split(corpus: Path, split: str) -> list[SourceClip]:
    """The clips of one split of an alpro-synth corpus with their questions, in annotation order."""
    if split not in SPLITS:
        raise SynthError(f"unknown split {split!r}; expected one of {SPLITS}")
    annotations = Path(corpus) / "annotations"
    questions: dict[str, list[dict[str, str]]] = {}
    for row in _read_jsonl(annotations / f"qa_{split}.jsonl"):
        questions.setdefault(row["video"], []).append(
            {k: row[k] for k in ("question", "answer", "answer_type")})
    clips = []
    for row in _read_jsonl(annotations / f"{split}.jsonl"):
        caption = row["caption"] if isinstance(row["caption"], str) else row["caption"][0]
        spec = ClipSpec.from_dict(row["spec"])
        clips.append(SourceClip(video=row["video"], caption=caption, key=row.get("key", spec.key), spec=spec,
                                questions=tuple(questions.get(row["video"], ()))))
    return clips


def named_shape(question: str) -> str | None:
    """The one shape a question names ("what colour is the star?" -> "star"), else None."""
    found = set(_SHAPE_WORDS.findall(question.lower()))
    return found.pop() if len(found) == 1 else None


def named_colour(question: str) -> str | None:
    """The one colour a question names ("which shape turns red?" -> "red"), else None."""
    found = set(_COLOUR_WORDS.findall(question.lower()))
    return found.pop() if len(found) == 1 else None


def _unique(held: Sequence[frozenset[str]]) -> list[frozenset[str]]:
    counts: dict[str, int] = {}
    for values in held:
        for value in values:
            counts[value] = counts.get(value, 0) + 1
    return [frozenset(v for v in values if counts[v] == 1) for values in held]


def unique_shapes(group: Sequence[SourceClip]) -> list[frozenset[str]]:
    """Per clip of a group, its shapes that no other clip of the group shows."""
    return _unique([clip.shapes for clip in group])


def unique_colours(group: Sequence[SourceClip]) -> list[frozenset[str]]:
    """Per clip of a group, its colours (start or end) that no other clip of the group shows."""
    return _unique([clip.colours for clip in group])


def _grouping_score(groups: Sequence[Sequence[SourceClip]]) -> int:
    return sum(len(u) for group in groups for u in unique_shapes(group))


def _greedy_groups(order: Sequence[SourceClip], join: int, count: int) -> list[list[SourceClip]]:
    """Groups filled in turn, each next clip the remaining one sharing the fewest shapes with the group
    (ties: the earliest in `order`)."""
    pool = list(order)
    groups = []
    for _ in range(count):
        group = [pool.pop(0)]
        while len(group) < join:
            taken: dict[str, int] = {}
            for clip in group:
                for shape in clip.shapes:
                    taken[shape] = taken.get(shape, 0) + 1
            best = min(range(len(pool)), key=lambda i: (sum(taken.get(s, 0) for s in pool[i].shapes), i))
            group.append(pool.pop(best))
        groups.append(group)
    return groups


def choose_groups(clips: Sequence[SourceClip], join: int, seed: int,
                  count: int | None = None) -> list[list[SourceClip]]:
    """`count` (default: as many as fit) groups of `join` distinct clips, few shapes shared within a group.

    Greedy over GROUPING_TRIES random orders; the grouping with the most (clip, shape unique in its group)
    pairs wins. Five shapes cannot all differ among six clips, so "where possible" means: as few shared as
    this search finds."""
    if join < 1:
        raise SynthError(f"join must be >= 1, got {join}")
    most = len(clips) // join
    count = most if count is None else count
    if count < 1 or count > most:
        raise SynthError(f"{len(clips)} clips make at most {most} long videos of {join}; asked for {count}")
    rng = np.random.default_rng(seed)
    best, best_score = None, -1
    for _ in range(GROUPING_TRIES):
        order = [clips[i] for i in rng.permutation(len(clips))]
        groups = _greedy_groups(order, join, count)
        _improve_by_swaps(groups, [c for c in order if not any(c is m for g in groups for m in g)])
        score = _grouping_score(groups)
        if score > best_score:
            best, best_score = groups, score
    assert best is not None
    # the fill and the swaps put the shared shapes at the same positions; a shuffle spreads the answering parts
    return [[group[i] for i in rng.permutation(len(group))] for group in best]


def _improve_by_swaps(groups: list[list[SourceClip]], spare: list[SourceClip]) -> None:
    """Swap clips between groups (or with a clip no group uses) while a swap adds unique shapes; in place.

    The greedy fill leaves its last groups the leftovers; a first-improvement pass mends most of that."""
    def score(group: Sequence[SourceClip]) -> int:
        return sum(len(u) for u in unique_shapes(group))

    improved = True
    while improved:
        improved = False
        for g, group in enumerate(groups):
            for i in range(len(group)):
                others = [(h, j) for h in range(g + 1, len(groups)) for j in range(len(groups[h]))]
                others += [(-1, j) for j in range(len(spare))]
                for h, j in others:
                    other = spare if h < 0 else groups[h]
                    before = score(group) + (0 if h < 0 else score(other))
                    group[i], other[j] = other[j], group[i]
                    if score(group) + (0 if h < 0 else score(other)) > before:
                        improved = True
                    else:
                        group[i], other[j] = other[j], group[i]


def kept_questions(group: Sequence[SourceClip]) -> list[tuple[int, str, str, dict[str, str]]]:
    """(part index, named, entity, question row) for every question of the group's clips that names one shape
    (named "shape") or else one colour (named "colour") only its own clip shows; in part, then source order."""
    kept = []
    for part, (clip, shapes, colours) in enumerate(zip(group, unique_shapes(group), unique_colours(group))):
        for qa in clip.questions:
            shape, colour = named_shape(qa["question"]), named_colour(qa["question"])
            if shape is not None and shape in shapes:
                kept.append((part, "shape", shape, qa))
            elif colour is not None and colour in colours:
                kept.append((part, "colour", colour, qa))
    return kept


@dataclass
class LongSummary:
    out: Path
    manifest: dict[str, Any]  # the content of long.json

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), **self.manifest}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def make_long_videos(out: Path, corpus: Path, join: int = DEFAULT_JOIN, split: str = "test", seed: int = 0,
                     count: int | None = None, overwrite: bool = False) -> LongSummary:
    """Join `join` clips of `corpus`'s `split` into each long video under `out` (see the module docstring)."""
    out, corpus = Path(out), Path(corpus)
    try:
        source = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
        config = source["config"]
        size, frames, fps, crf = (int(config[k]) for k in ("size", "frames_per_video", "fps", "crf"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SynthError(f"{corpus} is not an alpro-synth corpus (corpus.json): {e}") from e
    prepare_output(out, "long.json", overwrite, "long videos")

    groups = choose_groups(load_split(corpus, split), join, seed, count)
    clip_seconds = frames / fps
    long_rows, qa_rows = [], []
    for index, group in enumerate(groups):
        name = f"videos/long_{index:03d}.mp4"
        # the same frames as the clip files hold (up to H.264 loss): render_clip is what made them
        parts = [render_clip(clip.spec, size, frames) for clip in group]  # each (T, H, W, 3)
        write_video(out / name, np.concatenate(parts), fps, crf)  # (join * T, H, W, 3)
        long_rows.append({"video": name, "fps": fps, "frames": frames * len(group),
                          "duration": clip_seconds * len(group),
                          "parts": [{"clip": clip.video, "start": i * clip_seconds, "end": (i + 1) * clip_seconds,
                                     "caption": clip.caption, "key": clip.key, "spec": clip.spec.to_dict()}
                                    for i, clip in enumerate(group)]})
        for part, named, entity, qa in kept_questions(group):
            qa_rows.append({"video": name, **qa, "named": named, "entity": entity,
                            "shape": entity if named == "shape" else None, "part": part,
                            "start": part * clip_seconds, "end": (part + 1) * clip_seconds,
                            "clip": group[part].video})
    _write_jsonl(out / "annotations" / "long.jsonl", long_rows)
    _write_jsonl(out / "annotations" / "qa_long.jsonl", qa_rows)
    manifest = {"generator": "alpro-synth --join", "version": LONG_VERSION, "source": str(corpus),
                "source_version": source.get("version"), "source_seed": source.get("seed"), "split": split,
                "join": join, "seed": seed, "videos": len(long_rows), "questions": len(qa_rows),
                "questions_named": {kind: sum(q["named"] == kind for q in qa_rows) for kind in NAMED_KINDS},
                "clip_seconds": clip_seconds,
                "video_format": {"width": size, "height": size, "fps": fps, "frames": frames * join}}
    (out / "long.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %d long videos (%d questions) to %s", len(long_rows), len(qa_rows), out)
    return LongSummary(out=out, manifest=manifest)
