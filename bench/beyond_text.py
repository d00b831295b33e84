"""Search by example and by image, similar videos, zero-shot labels and grounded QA, measured (issue 22).

    python -m bench.beyond_text [--demo-dir demo-data] [--limit N] [--join 6] [--keep DIR] [--json out.json]
        [--corpus DIR] [--checkpoint DIR] [--qa-checkpoint DIR] [--eval FILE]

Against a real server on the demo's corpus and checkpoints (docs/beyond_text.md describes the routes; missing
ones: `DEMO_INSTALL=0 bash scripts/demo.sh --check`, the bench never trains). bench/live_library.py serves the
corpus with long videos of `--join` (6) held-out clips each, whose kept questions name a shape or a colour only
one part shows (training/long_videos.py), one segment per clip. Measured over HTTP, one request at a time
(rates are fractions, 0 to 1):
- example search: each held-out clip's stored segment, then a window of it the server decodes (the middle 75%),
  as `example`: own video first. Filtered to library/corpus/ (`path_prefix`): a long video repeats the clip;
- image search: the clip's middle frame as PNG: R@1, R@5 of its own video (same filter);
- similar: /videos/{id}/similar, the first 5 corpus videos (long videos skipped, how often the one holding the
  clip shows up is reported): the share that share a shape / a colour (start or end colour) with the clip;
  chance: the same share over every other corpus video, exact from the specs;
- classify: held-out single-shape clips, labels = the generator's colours, then its shapes: top-1 accuracy (a
  recolouring shape's end colour counts too), chance 1 / labels; beside it the retrieval model's text-to-video
  R@1 from the demo's eval.json;
- grounded QA: each kept question on its long video (`min_confidence` 0): the top answer's moment in the right
  part, its accuracy, the same question on the source clip alone; overall and `by_named` (the question names a
  shape or a colour: the retrieval model that ranks the segments tells colours apart far better than shapes);
  the abstention curve of the top answer's probability and the recommended `min_confidence`: the best answered
  accuracy among thresholds answering at least 80% of the questions (ties: the lower threshold).
One JSON object on stdout (and `--json FILE`), a short table on stderr. Exit status 1 when a section failed
(its entry holds {"error": ...}); the others are still measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench.live_library import ROOT, BenchError, Client, Clip, middle_frame_png, resolve_inputs, serve_library

logger = logging.getLogger("bench.beyond_text")

K = 5
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_COVERAGE = 0.8  # the recommended min_confidence keeps at least this share of questions answered
WINDOW = (0.125, 0.875)  # the decoded example window, as fractions of the clip (0.25..1.75 s of a 2 s clip)
EXAMPLE_TARGET = 0.95


# -- the measures ---------------------------------------------------------------------------------------------
def rate(hits: Sequence[bool]) -> Optional[float]:
    return round(sum(hits) / len(hits), 4) if hits else None


def colours_of(spec: Any) -> set[str]:
    return {c for o in spec.objects for c in (o.colour, o.to_colour) if c is not None}


def shapes_of(spec: Any) -> set[str]:
    return {o.shape for o in spec.objects}


def measure_example_search(client: Client, clips: Sequence[Clip], names: dict[str, str], specs: dict[str, Any],
                           corpus_root: str) -> dict[str, Any]:
    """Own video first for the stored segment and for a decoded window of each clip as the example; and how
    often the first result is at least a clip of the same description (caption key: same shapes, colours and
    motions, other positions and sizes)."""
    filters = {"path_prefix": corpus_root}
    out: dict[str, Any] = {"queries": len(clips), "target": EXAMPLE_TARGET, "k": K,
                           "searched": "the corpus videos (path_prefix filter; the long videos repeat the clips)"}
    for kind in ("segment", "window"):
        first, top, same, sources = [], [], [], {}
        for clip in clips:
            if kind == "segment":
                segments = client.request("GET", f"/videos/{clip.video_id}", "video")["segments"]
                start, end = float(segments[0]["start"]), float(segments[0]["end"])
            else:
                start, end = WINDOW[0] * clip.duration, WINDOW[1] * clip.duration
            body = {"example": {"video_id": clip.video_id, "start": start, "end": end}, "top_k": K,
                    "filters": filters}
            result = client.request("POST", "/search", f"search_example_{kind}", body)
            ranked = [names.get(r["video_id"]) for r in result["results"]]
            first.append(bool(ranked) and ranked[0] == clip.name)
            top.append(clip.name in ranked)
            same.append(bool(ranked) and ranked[0] in specs and specs[ranked[0]].key == clip.spec.key)
            source = str(result.get("example_source"))
            sources[source] = sources.get(source, 0) + 1
        out[kind] = {"own_first": rate(first), f"own_in_top{K}": rate(top), "first_same_description": rate(same),
                     "example_source": sources}
    out["window"]["fraction"] = list(WINDOW)
    return out


def measure_image_search(client: Client, clips: Sequence[Clip], names: dict[str, str], corpus: Path,
                         corpus_root: str) -> dict[str, Any]:
    r1, r5 = [], []
    for clip in clips:
        body = {"image": middle_frame_png(corpus / clip.video), "top_k": K, "filters": {"path_prefix": corpus_root}}
        result = client.request("POST", "/search", "search_image", body)
        ranked = [names.get(r["video_id"]) for r in result["results"]]
        r1.append(bool(ranked) and ranked[0] == clip.name)
        r5.append(clip.name in ranked[:K])
    return {"queries": len(clips), "r1": rate(r1), "r5": rate(r5), "chance_r1": round(1 / len(names), 4),
            "frame": "the middle frame, PNG", "searched": "the corpus videos (path_prefix filter)"}


def measure_similar(client: Client, clips: Sequence[Clip], names: dict[str, str], specs: dict[str, Any],
                    long_names: set[str], holder: dict[str, str]) -> dict[str, Any]:
    """Precision@K of sharing a shape / a colour with the clip, over corpus results; chance from the specs."""
    shape_hits, colour_hits, shape_chance, colour_chance, copy_seen, short = [], [], [], [], [], 0
    for clip in clips:
        # ask for enough that K corpus videos remain after the long videos are skipped
        result = client.request("GET", f"/videos/{clip.video_id}/similar", "similar",
                                params={"top_k": K + len(long_names)})
        ranked = [names.get(r["video_id"]) for r in result["results"]]
        copy_seen.append(holder.get(clip.name) in ranked[:K])
        corpus_hits = [n for n in ranked if n in specs and n != clip.name][:K]
        short += len(corpus_hits) < K
        q_shapes, q_colours = shapes_of(clip.spec), colours_of(clip.spec)
        shape_hits += [bool(shapes_of(specs[n]) & q_shapes) for n in corpus_hits]
        colour_hits += [bool(colours_of(specs[n]) & q_colours) for n in corpus_hits]
        others = [s for n, s in specs.items() if n != clip.name]
        shape_chance.append(sum(bool(shapes_of(s) & q_shapes) for s in others) / len(others))
        colour_chance.append(sum(bool(colours_of(s) & q_colours) for s in others) / len(others))
    return {"queries": len(clips), "k": K, "shape_precision": rate(shape_hits),
            "shape_chance": round(statistics.mean(shape_chance), 4) if clips else None,
            "colour_precision": rate(colour_hits),
            "colour_chance": round(statistics.mean(colour_chance), 4) if clips else None,
            "long_copy_in_top": rate(copy_seen), "fewer_than_k": short,
            "judged": "corpus results only (long videos skipped); colour = start or end colour"}


def measure_classify(client: Client, clips: Sequence[Clip], eval_json: Optional[Path]) -> dict[str, Any]:
    from training.synth import COLOURS, SHAPES

    single = [c for c in clips if len(c.spec.objects) == 1]
    out: dict[str, Any] = {"clips": len(single), "judged": "held-out single-shape clips; a recolouring shape's "
                           "start or end colour is right"}
    for attribute, labels in (("colour", list(COLOURS)), ("shape", list(SHAPES))):
        right, probability = [], []
        for clip in single:
            obj = clip.spec.objects[0]
            truth = colours_of(clip.spec) if attribute == "colour" else {obj.shape}
            result = client.request("POST", "/classify", "classify", {"video_id": clip.video_id, "labels": labels})
            top = result["labels"][0]
            right.append(top["label"] in truth)
            probability.append(float(top["probability"]))
        out[attribute] = {"labels": len(labels), "accuracy": rate(right), "chance": round(1 / len(labels), 4),
                          "mean_top_probability": round(statistics.mean(probability), 4) if probability else None}
    out["retrieval_t2v_r1"] = None
    if eval_json is not None and eval_json.is_file():
        e = json.loads(eval_json.read_text())
        r1 = e.get("t2v", {}).get("r1", e.get("r1"))
        out["retrieval_t2v_r1"] = round(r1 / 100, 4) if r1 is not None else None
        out["retrieval_eval"] = {"file": str(eval_json), "videos": e.get("videos"),
                                 "note": "caption -> video R@1 among the held-out videos (alpro-eval retrieval)"}
    return out


def abstention_curve(rows: Sequence[tuple[float, bool]]) -> list[dict[str, Any]]:
    """Per threshold: the share answered (top probability >= t) and the accuracy of those answered."""
    curve = []
    for t in THRESHOLDS:
        answered = [ok for score, ok in rows if score >= t]
        curve.append({"threshold": t, "coverage": rate([score >= t for score, _ in rows]),
                      "answered": len(answered), "accuracy": rate(answered)})
    return curve


def recommend(curve: Sequence[dict[str, Any]]) -> Optional[float]:
    """The threshold with the best answered accuracy among those keeping coverage >= MIN_COVERAGE (ties: the
    lower threshold); None when none does."""
    fit = [c for c in curve if c["coverage"] is not None and c["coverage"] >= MIN_COVERAGE
           and c["accuracy"] is not None]
    if not fit:
        return None
    return max(fit, key=lambda c: (c["accuracy"], -c["threshold"]))["threshold"]


def per_type(rows: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    groups: dict[str, list[bool]] = {}
    for kind, ok in rows:
        groups.setdefault(kind, []).append(ok)
    return {kind: {"questions": len(v), "accuracy": rate(v)} for kind, v in sorted(groups.items())}


def overlaps(moment: dict[str, Any], q: dict[str, Any]) -> bool:
    """Whether a moment ({start, end}, seconds) overlaps the question's part (touching ends do not count)."""
    return min(moment["end"], q["end"]) - max(moment["start"], q["start"]) > 1e-3


@dataclass(frozen=True)
class QAOutcome:
    """One long-video question, asked on its long video and on its source clip."""

    named: str  # what the question names that only its part shows: "shape" or "colour"
    answer_type: str
    grounded: bool  # the server answered from segments
    examined: int  # segments whose answers were mixed
    part_examined: bool  # the question's part among them
    part_ranked_first: bool  # the question's part the most similar segment
    right_part: bool  # the top answer's moment overlaps the part
    correct: bool  # the top answer is the right one
    score: float  # the top answer's probability (0 when none)
    clip_correct: bool  # the same, asking the source clip alone
    clip_score: float


def ask(client: Client, q: dict[str, Any], ids: dict[str, str], long_dir: str, corpus_dir: str) -> QAOutcome:
    """The question on its long video (min_confidence 0), then on its source clip."""
    long_id = ids[f"{long_dir}/{Path(q['video']).name}"]
    clip_id = ids[f"{corpus_dir}/{Path(q['clip']).name}"]
    result = client.request("POST", "/qa", "qa_long", {"video_id": long_id, "question": q["question"],
                                                       "min_confidence": 0.0})
    # where it looked (segments by question similarity, best first) and where its top answer comes from
    at = [overlaps(m, q) for m in result.get("moments") or []]
    top = result["answers"][0] if result["answers"] else None
    clip = client.request("POST", "/qa", "qa_clip", {"video_id": clip_id, "question": q["question"],
                                                     "min_confidence": 0.0})
    clip_top = clip["answers"][0] if clip["answers"] else None
    return QAOutcome(
        named=q["named"], answer_type=q["answer_type"], grounded=bool(result.get("grounded")), examined=len(at),
        part_examined=any(at), part_ranked_first=bool(at) and at[0],
        right_part=top is not None and top.get("moment") is not None and overlaps(top["moment"], q),
        correct=top is not None and top["answer"] == q["answer"], score=float(top["score"]) if top else 0.0,
        clip_correct=clip_top is not None and clip_top["answer"] == q["answer"],
        clip_score=float(clip_top["score"]) if clip_top else 0.0)


def grounding(outcomes: Sequence[QAOutcome], parts: int) -> dict[str, Any]:
    """Where it looked, where its answer came from and how right it was, next to the chance of a random pick
    among `parts` segments."""
    examined = [o.examined for o in outcomes]
    mean_examined = round(statistics.mean(examined), 2) if examined else None
    return {
        "questions": len(outcomes),
        "mean_segments_examined": mean_examined,
        "right_part": rate([o.right_part for o in outcomes]),
        "right_part_chance": round(1 / parts, 4),
        "part_examined": rate([o.part_examined for o in outcomes]),
        # chance that the part is among the examined segments when they are picked at random
        "part_examined_chance": round(min(1.0, mean_examined / parts), 4) if mean_examined is not None else None,
        "part_ranked_first": rate([o.part_ranked_first for o in outcomes]),
        "accuracy": rate([o.correct for o in outcomes]),
        "accuracy_when_right_part": rate([o.correct for o in outcomes if o.right_part]),
        "clip_accuracy": rate([o.clip_correct for o in outcomes]),
    }


def measure_qa(client: Client, questions: Sequence[dict[str, Any]], ids: dict[str, str], long_dir: str,
               corpus_dir: str, parts: int) -> dict[str, Any]:
    from training.long_videos import NAMED_KINDS

    outcomes = [ask(client, q, ids, long_dir, corpus_dir) for q in questions]
    curve = abstention_curve([(o.score, o.correct) for o in outcomes])
    overall = grounding(outcomes, parts)
    return {
        "questions": overall.pop("questions"),
        "grounded_rate": rate([o.grounded for o in outcomes]),
        **overall,
        "by_named": {kind: grounding([o for o in outcomes if o.named == kind], parts) for kind in NAMED_KINDS},
        "per_type": per_type([(o.answer_type, o.correct) for o in outcomes]),
        "clip_per_type": per_type([(o.answer_type, o.clip_correct) for o in outcomes]),
        "abstention": curve,
        "clip_abstention": abstention_curve([(o.clip_score, o.clip_correct) for o in outcomes]),
        "recommended_min_confidence": recommend(curve),
        "rule": f"the threshold with the best answered accuracy among those answering >= {MIN_COVERAGE:.0%} of "
                "the long-video questions (ties: the lower)",
    }


# -- the run --------------------------------------------------------------------------------------------------
def run_section(results: dict[str, Any], name: str, seconds: dict[str, float], fn: Callable[[], dict[str, Any]]
                ) -> None:
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failing route must not hide the other figures
        logger.exception("%s failed", name)
        results[name] = {"error": f"{type(e).__name__}: {e}"}
    seconds[name] = round(time.perf_counter() - start, 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from training.long_videos import NAMED_KINDS
    from training.relevance import load_library_specs

    inputs = resolve_inputs(args.demo_dir, args.corpus, args.checkpoint, args.qa_checkpoint, args.eval)
    with serve_library(inputs, args.join, args.seed, keep=args.keep, port=args.port) as live:
        client, ids, corpus, clip_seconds = live.client, live.ids, live.corpus, live.clip_seconds
        seconds = dict(live.seconds)
        names = {video_id: Path(rel).name for rel, video_id in ids.items()}
        specs = load_library_specs(corpus)
        clips, questions = live.held_out(args.limit), live.long_questions(args.limit)
        holder = live.holders()
        long_names = set(holder.values())

        results: dict[str, Any] = {
            "library": {"corpus_videos": sum(1 for r in ids if r.startswith("corpus/")),
                        "long_videos": sum(1 for r in ids if r.startswith("long/")),
                        "segments": live.index_summary.get("segments"), "segment_seconds": clip_seconds,
                        "join": args.join, "long_video_seconds": clip_seconds * args.join,
                        "held_out_clips": len(clips), "long_questions": len(questions),
                        "long_questions_named": {kind: sum(q["named"] == kind for q in questions)
                                                 for kind in NAMED_KINDS},
                        "data_dir": "one data dir: the corpus and the long videos, indexed together"},
            "checkpoints": {"retrieval": str(inputs.checkpoint), "qa": str(inputs.qa_checkpoint)},
        }
        run_section(results, "example_search", seconds,
                    lambda: measure_example_search(client, clips, names, specs, live.corpus_root))
        run_section(results, "image_search", seconds,
                    lambda: measure_image_search(client, clips, {i: n for i, n in names.items() if n in specs},
                                                 corpus, live.corpus_root))
        run_section(results, "similar", seconds,
                    lambda: measure_similar(client, clips, names, specs, long_names, holder))
        run_section(results, "classify", seconds, lambda: measure_classify(client, clips, inputs.eval_json))
        run_section(results, "qa", seconds,
                    lambda: measure_qa(client, questions, ids, "long", "corpus", parts=args.join))
        results["latency"] = client.latency()
        results["seconds"] = seconds
        results["cpus"] = os.cpu_count()
        return results


def _pct(value: Optional[float]) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def table(r: dict[str, Any]) -> str:
    """The headline figures, for people."""
    lines = [f"library: {r['library']['corpus_videos']} corpus videos + {r['library']['long_videos']} long videos "
             f"({r['library']['join']} clips each); {r['library']['held_out_clips']} held-out clips, "
             f"{r['library']['long_questions']} long-video questions"]
    e = r.get("example_search", {})
    if "error" in e:
        lines.append(f"example search   ERROR {e['error']}")
    else:
        lines.append(f"example search   own first: segment {_pct(e['segment']['own_first'])}  decoded window "
                     f"{_pct(e['window']['own_first'])}  (target {e['target']:.0%})")
    i = r.get("image_search", {})
    lines.append(f"image search     ERROR {i['error']}" if "error" in i else
                 f"image search     R@1 {_pct(i['r1'])}  R@5 {_pct(i['r5'])}  (chance R@1 {_pct(i['chance_r1'])})")
    s = r.get("similar", {})
    lines.append(f"similar          ERROR {s['error']}" if "error" in s else
                 f"similar P@{s['k']}      shape {_pct(s['shape_precision'])} (chance {_pct(s['shape_chance'])})  "
                 f"colour {_pct(s['colour_precision'])} (chance {_pct(s['colour_chance'])})")
    c = r.get("classify", {})
    if "error" in c:
        lines.append(f"classify         ERROR {c['error']}")
    else:
        lines.append(f"classify top-1   colour {_pct(c['colour']['accuracy'])} (chance {_pct(c['colour']['chance'])})  "
                     f"shape {_pct(c['shape']['accuracy'])} (chance {_pct(c['shape']['chance'])})  "
                     f"[{c['clips']} clips; retrieval t2v R@1 {_pct(c['retrieval_t2v_r1'])}]")
    q = r.get("qa", {})
    if "error" in q:
        lines.append(f"grounded QA      ERROR {q['error']}")
    else:
        lines.append(f"grounded QA      right part {_pct(q['right_part'])} (chance {_pct(q['right_part_chance'])})  "
                     f"accuracy {_pct(q['accuracy'])}  on the source clip {_pct(q['clip_accuracy'])}")
        lines.append(f"  where it looks  part ranked first {_pct(q['part_ranked_first'])}  part among the "
                     f"{q['mean_segments_examined']:g} examined {_pct(q['part_examined'])} (chance "
                     f"{_pct(q['part_examined_chance'])})  accuracy when at the right part "
                     f"{_pct(q['accuracy_when_right_part'])}")
        for kind, k in q["by_named"].items():
            lines.append(f"  named a {kind:<6} {k['questions']:3d} questions: right part {_pct(k['right_part'])}  "
                         f"part ranked first {_pct(k['part_ranked_first'])}  examined {_pct(k['part_examined'])}  "
                         f"accuracy {_pct(k['accuracy'])}  on the source clip {_pct(k['clip_accuracy'])}")
        lines.append("abstention       " + "  ".join(
            f"t={c['threshold']:.1f}: {_pct(c['coverage']).strip()} answered, {_pct(c['accuracy']).strip()} right"
            for c in q["abstention"] if c["threshold"] in (0.3, 0.5, 0.7, 0.9)))
        lines.append(f"recommended min_confidence: {q['recommended_min_confidence']} ({q['rule']})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, default=ROOT / "demo-data",
                        help="where scripts/demo.sh put the corpus, checkpoints and eval.json (default demo-data)")
    parser.add_argument("--corpus", type=Path, help="alpro-synth corpus (default DEMO_DIR/corpus)")
    parser.add_argument("--checkpoint", type=Path, help="retrieval checkpoint (default DEMO_DIR/runs/retrieval/final)")
    parser.add_argument("--qa-checkpoint", type=Path, help="QA checkpoint (default DEMO_DIR/runs/qa/final)")
    parser.add_argument("--eval", type=Path, help="alpro-eval retrieval JSON (default DEMO_DIR/eval.json)")
    parser.add_argument("--limit", type=int, help="held-out clips and long-video questions used (default all)")
    parser.add_argument("--join", type=int, default=6, help="clips per long video (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the long videos' grouping (default 0)")
    parser.add_argument("--port", type=int, help="the server's port (default: a free one)")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (long videos, library, data dir, server "
                        "log); a second run reuses what is there")
    parser.add_argument("--json", type=Path, help="also write the JSON object to this file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be >= 1")
    try:
        results = run(args)
    except BenchError as e:
        raise SystemExit(f"bench.beyond_text: {e}") from e
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(table(results), file=sys.stderr)
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if any(isinstance(v, dict) and "error" in v for v in outcome.values()) else 0)
