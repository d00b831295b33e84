"""bench.beyond_text runs end to end on the tiny trained corpus and checkpoints (its figures on the demo data
are in docs/beyond_text.md). Tiny models: only the harness and the JSON's shape and ranges are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import beyond_text
from bench.beyond_text import QAOutcome
from bench.live_library import BenchError, resolve_inputs
from tests.trained import TinyCorpus, TrainedCheckpoint

RATES = {
    "example_search": [("segment", "own_first"), ("segment", "own_in_top5"), ("segment", "first_same_description"),
                       ("window", "own_first"), ("window", "own_in_top5"), ("window", "first_same_description")],
    "image_search": [("r1",), ("r5",), ("chance_r1",)],
    "similar": [("shape_precision",), ("shape_chance",), ("colour_precision",), ("colour_chance",),
                ("long_copy_in_top",)],
    "classify": [("colour", "accuracy"), ("colour", "chance"), ("shape", "accuracy"), ("shape", "chance")],
    "qa": [("grounded_rate",), ("right_part",), ("right_part_chance",), ("part_examined",), ("part_ranked_first",),
           ("part_examined_chance",), ("accuracy",), ("clip_accuracy",)],
}


def at(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def test_beyond_text_bench_reports_every_figure(tmp_path: Path, trained_corpus: TinyCorpus,
                                                trained_retrieval_checkpoint: TrainedCheckpoint,
                                                trained_qa_checkpoint: TrainedCheckpoint) -> None:
    out = tmp_path / "beyond.json"
    limit = 4
    results = beyond_text.main([
        "--demo-dir", str(tmp_path / "no-demo"), "--corpus", str(trained_corpus.root),
        "--checkpoint", str(trained_retrieval_checkpoint.path), "--qa-checkpoint", str(trained_qa_checkpoint.path),
        "--limit", str(limit), "--keep", str(tmp_path / "work"), "--json", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(results))
    for section in ("library", "checkpoints", *RATES, "latency", "seconds"):
        assert section in written, section
        assert "error" not in written[section], written[section]

    library = written["library"]
    assert library["corpus_videos"] == len(trained_corpus.videos)
    assert library["long_videos"] == len(trained_corpus.test) // 6
    assert library["segment_seconds"] == 1.0  # 8 frames at 8 fps
    assert library["segments"] == library["corpus_videos"] + 6 * library["long_videos"]
    assert library["held_out_clips"] == limit and library["long_questions"] == limit
    assert sum(library["long_questions_named"].values()) == limit

    for section, paths in RATES.items():
        for path in paths:
            value = at(written[section], path)
            assert value is not None and 0.0 <= value <= 1.0, (section, path, value)
    example = written["example_search"]
    assert example["segment"]["example_source"] == {"index": limit}
    assert example["window"]["example_source"] == {"decoded": limit}
    assert written["classify"]["colour"]["chance"] == 1 / 8 and written["classify"]["shape"]["chance"] == 1 / 5
    assert written["classify"]["retrieval_t2v_r1"] is None  # no eval.json for the tiny corpus

    qa = written["qa"]
    assert qa["questions"] == limit
    assert qa["grounded_rate"] == 1.0  # a long video is six segments
    assert [c["threshold"] for c in qa["abstention"]] == list(beyond_text.THRESHOLDS)
    coverage = [c["coverage"] for c in qa["abstention"]]
    assert coverage == sorted(coverage, reverse=True) and all(0 <= c <= 1 for c in coverage)
    assert qa["recommended_min_confidence"] is None or qa["recommended_min_confidence"] in beyond_text.THRESHOLDS
    assert set(qa["by_named"]) == {"shape", "colour"}
    for kind, split in qa["by_named"].items():
        assert split["questions"] == library["long_questions_named"][kind]
        assert split["right_part_chance"] == qa["right_part_chance"]
        for key in ("right_part", "part_ranked_first", "part_examined", "accuracy", "clip_accuracy"):
            assert (split[key] is None) == (split["questions"] == 0), (kind, key)
            assert split[key] is None or 0.0 <= split[key] <= 1.0, (kind, key)
    assert set(written["latency"]) >= {"search_example_segment", "search_example_window", "search_image", "similar",
                                       "classify", "qa_long", "qa_clip"}
    assert (tmp_path / "work" / "long" / "annotations" / "qa_long.jsonl").is_file()


def test_recommended_threshold_keeps_coverage() -> None:
    rows = [(0.95, True)] * 6 + [(0.6, True)] * 2 + [(0.4, False)] * 1 + [(0.2, False)] * 1
    curve = beyond_text.abstention_curve(rows)
    by_t = {c["threshold"]: c for c in curve}
    assert by_t[0.1]["coverage"] == 1.0 and by_t[0.1]["accuracy"] == 0.8
    assert by_t[0.3]["coverage"] == 0.9 and by_t[0.5]["coverage"] == 0.8 and by_t[0.5]["accuracy"] == 1.0
    assert beyond_text.recommend(curve) == 0.5  # 0.7 would answer only 60%


def test_grounding_splits_by_what_the_question_names() -> None:
    def outcome(named: str, part: bool, correct: bool) -> QAOutcome:
        return QAOutcome(named=named, answer_type="shape", grounded=True, examined=3, part_examined=part,
                         part_ranked_first=part, right_part=part, correct=correct, score=0.5,
                         clip_correct=True, clip_score=0.9)

    outcomes = [outcome("shape", False, False)] * 3 + [outcome("shape", True, True)] + [outcome("colour", True, True)]
    overall = beyond_text.grounding(outcomes, parts=6)
    assert overall["questions"] == 5 and overall["right_part"] == 0.4 and overall["accuracy_when_right_part"] == 1.0
    assert overall["right_part_chance"] == round(1 / 6, 4) and overall["part_examined_chance"] == 0.5
    shape = beyond_text.grounding([o for o in outcomes if o.named == "shape"], parts=6)
    assert shape["right_part"] == 0.25 and shape["part_ranked_first"] == 0.25 and shape["clip_accuracy"] == 1.0
    empty = beyond_text.grounding([], parts=6)
    assert empty["questions"] == 0 and empty["right_part"] is None and empty["part_examined_chance"] is None


def test_missing_inputs_name_the_files(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="corpus.json"):
        resolve_inputs(tmp_path / "no-demo")
