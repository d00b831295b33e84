"""Long videos joined from alpro-synth clips (training/long_videos.py, `alpro-synth --join`)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from training.long_videos import (SourceClip, choose_groups, kept_questions, load_split, make_long_videos,
                                  named_colour, named_shape, unique_colours, unique_shapes)
from training.synth import ClipSpec, CorpusConfig, ObjectSpec, SynthError, generate_corpus, main

JOIN = 3
# more pairs than the default so that questions naming a colour are kept (with this seed: all three kinds of
# them, and some left out because another part shows the colour)
CONFIG = CorpusConfig(seed=2, videos=16, test_videos=8, val_videos=0, size=32, frames_per_video=8, fps=8,
                      two_object_prob=0.6)


def decode(path: Path) -> np.ndarray:
    """All frames of a video file as RGB. # (T, H, W, 3) uint8"""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def part_colours(part: dict) -> set[str]:
    return {c for o in part["spec"]["objects"] for c in (o["colour"], o["to_colour"]) if c is not None}


def part_shapes(part: dict) -> set[str]:
    return {o["shape"] for o in part["spec"]["objects"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, CONFIG, workers=1)
    return root


@pytest.fixture(scope="module")
def joined(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("long")
    make_long_videos(out, corpus, join=JOIN, split="test", seed=1)
    return out


def test_each_long_video_lasts_join_clips_and_its_parts_tile_it(joined: Path) -> None:
    rows = read_jsonl(joined / "annotations" / "long.jsonl")
    clip_seconds = CONFIG.frames_per_video / CONFIG.fps
    assert len(rows) == CONFIG.test_videos // JOIN
    for row in rows:
        frames = decode(joined / row["video"])
        assert frames.shape == (JOIN * CONFIG.frames_per_video, CONFIG.size, CONFIG.size, 3)
        assert row["duration"] == pytest.approx(JOIN * clip_seconds)
        assert row["frames"] == len(frames) and row["fps"] == CONFIG.fps
        with av.open(str(joined / row["video"])) as container:
            stream = container.streams.video[0]
            assert float(stream.frames / stream.average_rate) == pytest.approx(JOIN * clip_seconds)
        parts = row["parts"]
        assert len(parts) == JOIN
        assert parts[0]["start"] == 0 and parts[-1]["end"] == pytest.approx(row["duration"])
        for a, b in zip(parts, parts[1:]):
            assert a["end"] == pytest.approx(b["start"])
        for part in parts:
            assert part["end"] - part["start"] == pytest.approx(clip_seconds)
    used = [p["clip"] for row in rows for p in row["parts"]]
    assert len(used) == len(set(used)), "a clip is used twice"


def test_part_frames_are_the_source_clip_frames(corpus: Path, joined: Path) -> None:
    row = read_jsonl(joined / "annotations" / "long.jsonl")[0]
    frames = decode(joined / row["video"]).astype(np.float64)
    n = CONFIG.frames_per_video
    for i, part in enumerate(row["parts"]):
        start = round(part["start"] * row["fps"])
        assert start == i * n
        own = decode(corpus / part["clip"]).astype(np.float64)
        error = np.abs(frames[start:start + n] - own).mean()
        assert error < 4.0, (i, part["clip"], error)  # both re-encoded from the same rendered frames
        for other in row["parts"]:
            if other["key"] != part["key"]:
                assert np.abs(frames[start:start + n] - decode(corpus / other["clip"])).mean() > error


@pytest.mark.parametrize("named", ["shape", "colour"])
def test_kept_questions_name_a_shape_or_colour_only_their_part_shows(corpus: Path, joined: Path, named: str) -> None:
    rows = {row["video"]: row for row in read_jsonl(joined / "annotations" / "long.jsonl")}
    questions = read_jsonl(joined / "annotations" / "qa_long.jsonl")
    assert {q["named"] for q in questions} == {"shape", "colour"}
    source_rows = read_jsonl(corpus / "annotations" / "qa_test.jsonl")
    source = {(q["video"], q["question"], q["answer"]) for q in source_rows}
    shown = part_shapes if named == "shape" else part_colours
    names = named_shape if named == "shape" else named_colour
    of_kind = [q for q in questions if q["named"] == named]
    assert of_kind, f"no question naming a {named} kept"
    for q in of_kind:
        row = rows[q["video"]]
        part = row["parts"][q["part"]]
        assert (q["clip"], q["question"], q["answer"]) in source
        assert q["clip"] == part["clip"]
        assert (q["start"], q["end"]) == (part["start"], part["end"])
        assert names(q["question"]) == q["entity"]
        assert q["shape"] == (q["entity"] if named == "shape" else None)
        holders = [i for i, p in enumerate(row["parts"]) if q["entity"] in shown(p)]
        assert holders == [q["part"]], q
    # and every question naming a shape / colour only its part shows is kept; some naming a colour are not
    left_out = 0
    for video, row in rows.items():
        kept = {(q["part"], q["question"]) for q in questions if q["video"] == video}
        for i, p in enumerate(row["parts"]):
            others = set().union(*(shown(r) for j, r in enumerate(row["parts"]) if j != i))
            for sq in (s for s in source_rows if s["video"] == p["clip"]):
                entity = names(sq["question"])
                if entity is not None and entity not in others:
                    assert (i, sq["question"]) in kept, sq
                elif entity is not None and named_shape(sq["question"]) is None:
                    left_out += 1
    if named == "colour":
        assert left_out, "the corpus should have a colour question that another part makes ambiguous"
    manifest = json.loads((joined / "long.json").read_text())
    assert manifest["questions_named"][named] == len(of_kind)


def test_named_shape_and_colour() -> None:
    assert named_shape("what colour is the star?") == "star"
    assert named_shape("which way does the cross move?") == "cross"
    assert named_shape("how many shapes are there?") is None
    assert named_shape("what shape is the red shape?") is None
    assert named_colour("what shape is the red shape?") == "red"
    assert named_colour("what shape is the shape that starts cyan?") == "cyan"
    assert named_colour("which shape turns purple?") == "purple"
    assert named_colour("what colour is the star?") is None
    assert named_colour("what colour does the star turn?") is None


def _clip(name: str, *objects: ObjectSpec) -> SourceClip:
    spec = ClipSpec(objects=objects)
    spec.validate()
    questions = tuple({"question": qa.question, "answer": qa.answer, "answer_type": qa.answer_type}
                      for qa in spec.qa_pairs())
    return SourceClip(video=name, caption="", key=spec.key, spec=spec, questions=questions)


def test_a_recolouring_shape_shows_both_its_colours() -> None:
    def obj(shape: str, colour: str, to: str | None = None) -> ObjectSpec:
        return ObjectSpec(shape=shape, colour=colour, motion="recolour" if to else "still", x=0.3, y=0.5, size=0.3,
                          to_colour=to)

    group = [_clip("a", obj("star", "red"), obj("circle", "blue", to="green")),
             _clip("b", obj("square", "green"), obj("cross", "yellow")),
             _clip("c", obj("triangle", "white"), obj("circle", "cyan", to="orange"))]
    assert unique_colours(group) == [frozenset({"red", "blue"}), frozenset({"yellow"}),
                                     frozenset({"white", "cyan", "orange"})]
    assert unique_shapes(group) == [frozenset({"star"}), frozenset({"square", "cross"}),
                                    frozenset({"triangle"})]
    kept = {(part, named, entity, qa["question"]) for part, named, entity, qa in kept_questions(group)}
    colour = {k for k in kept if k[1] == "colour"}
    assert colour == {(0, "colour", "red", "what shape is the red shape?"),
                      (0, "colour", "blue", "what shape is the shape that starts blue?"),
                      (1, "colour", "yellow", "what shape is the yellow shape?"),
                      (2, "colour", "white", "what shape is the white shape?"),
                      (2, "colour", "cyan", "what shape is the shape that starts cyan?"),
                      (2, "colour", "orange", "which shape turns orange?")}
    # "which shape turns green?" (a) and "what shape is the green shape?" (b): both parts show green
    assert not any(k[3] in ("which shape turns green?", "what shape is the green shape?") for k in kept)
    assert (0, "shape", "star", "what colour is the star?") in kept
    assert not any(k[2] == "circle" for k in kept)  # a and c both show a circle


def test_groups_share_few_shapes(corpus: Path) -> None:
    clips = load_split(corpus, "test")
    groups = choose_groups(clips, JOIN, seed=0)
    assert len(groups) == len(clips) // JOIN
    # 3 clips, 5 shapes: a grouping with no shared shape at all exists for most corpora; at least most clips
    # keep a shape of their own
    owned = sum(bool(u) for group in groups for u in unique_shapes(group))
    assert owned >= len(groups) * JOIN - 2
    with pytest.raises(SynthError):
        choose_groups(clips, JOIN, seed=0, count=len(clips))


def test_same_seed_same_files_other_seed_other_groups(corpus: Path, joined: Path, tmp_path: Path) -> None:
    make_long_videos(tmp_path / "again", corpus, join=JOIN, split="test", seed=1)
    for name in ("long.jsonl", "qa_long.jsonl"):
        assert (tmp_path / "again" / "annotations" / name).read_text() == (joined / "annotations" / name).read_text()
    other = [[c.video for c in g] for g in choose_groups(load_split(corpus, "test"), JOIN, seed=2)]
    first = [[p["clip"] for p in row["parts"]] for row in read_jsonl(joined / "annotations" / "long.jsonl")]
    assert other != first


def test_cli_join_needs_no_videos_flag(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main([str(out), "--join", str(JOIN), "--from", str(corpus), "--seed", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == CONFIG.test_videos // JOIN and summary["join"] == JOIN
    assert (out / "videos" / "long_000.mp4").is_file()
    assert main([str(out), "--join", str(JOIN), "--from", str(corpus)]) == 2  # not empty, no --overwrite
    assert main([str(out), "--join", str(JOIN), "--from", str(corpus), "--overwrite"]) == 0
    with pytest.raises(SystemExit):
        main([str(tmp_path / "corpus")])  # a corpus still needs --videos and --seed
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--join", "3"])  # --join without --from
