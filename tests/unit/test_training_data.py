"""Annotation reading, the resumable rank-sliced sampler, per-sample determinism, skipping bad files."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import VideoError, normalize_frames
from model.config import preset_config
from training.config import DataSection, LossSection
from training.data import (AnnotationError, EpochBatchSampler, QADataset, SyntheticQA, SyntheticVideoText,
                           VideoTextDataset, build_answer_vocab, collate, read_qa, read_video_text, swap_words)
from training import synth

CONFIG = preset_config("tiny", img_size=32, num_frames=2)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sampler_ranks_concatenate_to_the_one_process_batch_and_resume_mid_epoch():
    one = EpochBatchSampler(50, 8, seed=3)
    two = [EpochBatchSampler(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    per_epoch = 50 // 8
    stream = list(islice(one, 3 * per_epoch))  # endless: runs on across epochs
    together = [a + b for a, b in islice(zip(*two), 3 * per_epoch)]
    assert together == stream
    assert [batch[0][0] for batch in stream] == [e for e in range(3) for _ in range(per_epoch)]
    for epoch in range(3):
        flat = [i for batch in stream[epoch * per_epoch:(epoch + 1) * per_epoch] for _, i in batch]
        assert len(set(flat)) == len(flat) == per_epoch * 8  # no repeats inside an epoch
    assert stream[0] != stream[per_epoch]  # each epoch has its own order
    one.set_epoch(1, start_batch=4)
    assert list(islice(one, 5)) == stream[per_epoch + 4:per_epoch + 9]
    with pytest.raises(ValueError, match="global batch"):
        EpochBatchSampler(5, 4, seed=0, world_size=2)


def test_grouped_sampler_keeps_each_group_in_one_rank_batch():
    one = EpochBatchSampler(51, 8, seed=3, group=2)
    two = [EpochBatchSampler(51, 4, seed=3, rank=r, world_size=2, group=2) for r in range(2)]
    assert one.batches_per_epoch == 6
    stream = list(islice(one, 12))
    assert [a + b for a, b in islice(zip(*two), 12)] == stream
    for batches in (stream, [b for s in two for b in islice(s, 12)]):
        for batch in batches:
            ids = [i for _, i in batch]
            assert all(ids[k] % 2 == 0 and ids[k + 1] == ids[k] + 1 for k in range(0, len(ids), 2)), ids
    flat = [i for batch in stream[:6] for _, i in batch]
    assert len(set(flat)) == 48 and max(flat) < 50  # the lone item 50 is never drawn
    assert flat != sorted(flat)
    with pytest.raises(ValueError, match="whole groups"):
        EpochBatchSampler(50, 5, seed=0, group=2)


def test_synthetic_twins_are_pairs_of_clips_told_apart_by_one_thing():
    data = DataSection(source="synthetic", synth_epoch_clips=60, hflip_prob=0.5, synth_two_object_prob=0.0,
                       synth_twins=["reverse"])
    config = preset_config("tiny", img_size=64, num_frames=4)
    ds = SyntheticVideoText(config, data, LossSection(), seed=5)
    decode = ds.builder.tokenizer.decode
    way = {"left": -1, "right": 1}

    def x_motion(video: torch.Tensor) -> float:
        """How far the bright pixels' centroid moves along x from the first frame to the last."""
        bright = video.amax(1) > 0.5  # (T, H, W): the object, not the dark background
        xs = [torch.nonzero(m)[:, 1].float().mean().item() for m in bright]
        return xs[-1] - xs[0]

    pairs = 0
    for k in range(30):
        a, b = ds[(1, 2 * k)], ds[(1, 2 * k + 1)]
        assert torch.equal(ds[(1, 2 * k + 1)]["video"], b["video"])  # a function of (epoch, index)
        first, second = decode(a["input_ids"]).split(), decode(b["input_ids"]).split()
        moves = [next((way[w] for w in words if w in way), 0) for words in (first, second)]
        if moves[0]:
            # the same shape in the same colour moves the other way; each caption says how its pixels move
            assert first[:3] == second[:3] and moves[1] == -moves[0], (first, second)
            assert x_motion(a["video"]) * moves[0] > 3 and x_motion(b["video"]) * moves[1] > 3
            pairs += 1
    assert pairs >= 3
    # independent clips (no twins): neighbours are unrelated
    plain = SyntheticVideoText(config, DataSection(source="synthetic", synth_epoch_clips=40), LossSection(), seed=5)
    assert decode(plain[(1, 0)]["input_ids"]).split()[:3] != decode(plain[(1, 1)]["input_ids"]).split()[:3]


def test_read_annotations(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"video": "v/1.mp4", "caption": "one"},
                                       {"video": "v/2.mp4", "caption": ["two", "deux"], "key": "k2"},
                                       {"image": "i/3.jpg", "caption": "three"}])
    records = read_video_text([tmp_path / "a.jsonl"], "/root")
    assert [r.path for r in records] == ["/root/v/1.mp4", "/root/v/2.mp4", "/root/i/3.jpg"]
    assert records[1].captions == ("two", "deux") and records[1].key == "k2" and records[0].key == "one"
    assert [r.is_image for r in records] == [False, False, True]
    write_jsonl(tmp_path / "q.jsonl", [{"video": "1.mp4", "question": "what?", "answer": "red",
                                        "answer_type": "colour"},
                                       {"video": "2.mp4", "question": "why?", "answer": "blue"}])
    qa = read_qa([tmp_path / "q.jsonl"], None)
    assert qa[0].answer_type == "colour" and qa[1].answer_type == "all"
    (tmp_path / "bad.jsonl").write_text('{"video": "x.mp4"}\n')
    with pytest.raises(AnnotationError, match="bad.jsonl:1"):
        read_video_text([tmp_path / "bad.jsonl"], None)


def test_answer_vocab_by_frequency_then_name():
    assert build_answer_vocab(["b", "a", "b", "c", "a", "b"]) == {"b": 0, "a": 1, "c": 2}
    assert build_answer_vocab(["b", "a", "b"], max_answers=1) == {"b": 0}


def test_swap_words_is_simultaneous_and_whole_word():
    mapping = {"left": "right", "right": "left"}
    assert swap_words("Left of the right box, leftover", mapping) == "Right of the left box, leftover"


def test_images_are_repeated_to_the_frame_count(tmp_path):
    Image.fromarray(np.full((20, 30, 3), (200, 10, 10), dtype=np.uint8)).save(tmp_path / "red.png")
    write_jsonl(tmp_path / "a.jsonl", [{"image": "red.png", "caption": "a red picture"}])
    ds = VideoTextDataset(read_video_text([tmp_path / "a.jsonl"], str(tmp_path)), CONFIG, DataSection(num_workers=0),
                          LossSection(), seed=0)
    item = ds[(0, 0)]
    assert item["video"].shape == (2, 3, 32, 32) and item["is_image"]
    expected = normalize_frames(torch.tensor([200, 10, 10], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32), CONFIG)
    assert torch.allclose(item["video"][1], expected, atol=1e-5)


def test_undecodable_records_are_skipped_and_reported(tmp_path):
    from tests.video_factory import write_video

    write_video(tmp_path / "good.mp4", 12, width=48, height=48)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    write_jsonl(tmp_path / "a.jsonl", [{"video": "broken.mp4", "caption": "broken"},
                                       {"video": "good.mp4", "caption": "good"}])
    ds = VideoTextDataset(read_video_text([tmp_path / "a.jsonl"], str(tmp_path)), CONFIG, DataSection(), LossSection(),
                          seed=0)
    item = ds[(0, 0)]
    assert item["index"] == 1 and item["skipped"] == [str(tmp_path / "broken.mp4")]
    batch = collate([item, ds[(0, 1)]])
    assert batch["skipped"] == [str(tmp_path / "broken.mp4")] and batch["video"].shape[0] == 2
    write_jsonl(tmp_path / "b.jsonl", [{"video": "broken.mp4", "caption": "broken"}])
    ds = VideoTextDataset(read_video_text([tmp_path / "b.jsonl"], str(tmp_path)), CONFIG, DataSection(max_skip=2),
                          LossSection(), seed=0)
    with pytest.raises(VideoError, match="cannot be decoded"):
        ds[(0, 0)]


def test_samples_are_a_function_of_seed_epoch_and_index():
    data = DataSection(source="synthetic", synth_epoch_clips=10, hflip_prob=0.5)
    ds = SyntheticVideoText(CONFIG, data, LossSection(), seed=1, mlm=True, pem=True)
    a, b, c = ds[(0, 3)], ds[(0, 3)], ds[(1, 3)]
    for key in ("video", "input_ids", "mlm_input_ids", "mlm_labels", "pem_video", "pem_mask"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["video"], c["video"])  # a fresh clip in the next epoch


def test_synthetic_flip_relabels_left_and_right():
    data = DataSection(source="synthetic", synth_epoch_clips=400, hflip_prob=1.0, synth_two_object_prob=0.0)
    ds = SyntheticVideoText(preset_config("tiny", img_size=64, num_frames=2), data, LossSection(), seed=2)
    tokenizer_decode = ds.builder.tokenizer.decode
    found = 0
    for i in range(400):
        rng = np.random.default_rng([2, 0, i, 0])
        spec = synth.sample_spec(rng, 0.0)
        if spec.objects[0].motion not in ("left", "right"):
            continue
        caption = tokenizer_decode(ds[(0, i)]["input_ids"])
        assert spec.flipped().caption() == caption and spec.caption() != caption
        found += 1
        if found == 3:
            break
    assert found == 3


def test_synthetic_qa_balances_question_types_and_labels_answers():
    answers = {a: i for i, a in enumerate(sorted({"one", "two", *synth.COLOURS, *synth.SHAPES}))}
    ds = SyntheticQA(answers, CONFIG, DataSection(source="synthetic", synth_epoch_clips=700), seed=0)
    items = [ds[(0, i)] for i in range(700)]
    types = [it["answer_type"] for it in items]
    for t in synth.ANSWER_TYPES:
        assert abs(types.count(t) / len(types) - 1 / len(synth.ANSWER_TYPES)) < 0.05, t
    for it in items:
        if it["answer_type"] in ("colour", "shape", "count"):
            assert it["answer"] >= 0
        if it["answer_type"] == "direction":
            assert it["answer"] == -100  # not in this vocabulary: ignored by the loss


def test_synthetic_qa_asks_several_questions_about_the_same_clip(monkeypatch):
    answers = {a: i for i, a in enumerate(sorted({"one", "two", "position", "size", "rotation", "nothing", "colour",
                                                  "left", "right", "up", "down", "bigger", "smaller",
                                                  *synth.COLOURS, *synth.SHAPES}))}
    data = DataSection(source="synthetic", synth_epoch_clips=60, synth_qa_per_clip=4, synth_two_object_prob=0.5)
    ds = SyntheticQA(answers, CONFIG, data, seed=0)
    one = SyntheticQA(answers, CONFIG, DataSection(source="synthetic", synth_epoch_clips=60,
                                                   synth_two_object_prob=0.5), seed=0)
    sampled: list = []
    real_sample = synth.sample_spec
    monkeypatch.setattr(synth, "sample_spec", lambda *a, **k: sampled.append(real_sample(*a, **k)) or sampled[-1])
    tokenizer = ds.builder.tokenizer
    types_asked = set()
    for i in range(60):
        item = ds[(0, i)]
        spec = sampled[-1]  # the clip the item shows (no flips here)
        assert item["input_ids"].shape[0] == item["attention_mask"].shape[0] == item["answer"].shape[0] == 4
        truth = {}  # question tokens -> (answer index, type) of this clip
        for qa in spec.qa_pairs():
            ids, _ = tokenizer([qa.question])
            truth[tuple(ids[0].tolist())] = (answers[qa.answer], qa.answer_type)
        for ids, answer in zip(item["input_ids"], item["answer"]):
            expected, answer_type = truth[tuple(ids.tolist())]
            assert int(answer) == expected
            types_asked.add(answer_type)
        single = one[(0, i)]  # the first question and the video are those of one question per clip
        assert torch.equal(single["video"], item["video"]) and torch.equal(single["input_ids"], item["input_ids"][0])
    assert types_asked == set(synth.ANSWER_TYPES)
    batch = collate([ds[(0, i)] for i in range(3)])
    assert batch["input_ids"].shape[:2] == (3, 4) and batch["answer"].shape == (3, 4)


def test_qa_dataset_flips_answers(tmp_path):
    from tests.video_factory import write_video

    write_video(tmp_path / "v.mp4", 8, width=32, height=32)
    write_jsonl(tmp_path / "q.jsonl", [{"video": "v.mp4", "question": "which way does it move?", "answer": "left"}])
    answers = {"left": 0, "right": 1}
    ds = QADataset(read_qa([tmp_path / "q.jsonl"], str(tmp_path)), answers, CONFIG, DataSection(hflip_prob=1.0), 0)
    assert ds[(0, 0)]["answer"] == 1
    ds = QADataset(read_qa([tmp_path / "q.jsonl"], str(tmp_path)), answers, CONFIG, DataSection(hflip_prob=0.0), 0)
    assert ds[(0, 0)]["answer"] == 0


def test_synthetic_qa_pool_clips_recur_with_the_same_pixels_and_their_own_questions():
    answers = {a: i for i, a in enumerate(sorted({"one", "two", "position", "size", "rotation", "nothing", "colour",
                                                  "left", "right", "up", "down", "bigger", "smaller",
                                                  *synth.COLOURS, *synth.SHAPES}))}
    data = DataSection(source="synthetic", synth_epoch_clips=60, synth_pool_clips=6, hflip_prob=0.5,
                       synth_two_object_prob=0.5)
    ds = SyntheticQA(answers, CONFIG, data, seed=0)
    bare = SyntheticQA(answers, CONFIG, data, seed=0, pool_videos=False)
    tokenizer = ds.builder.tokenizer
    seen: dict[int, torch.Tensor] = {}
    mirrored = set()
    for i in range(60):
        item, light = ds[(0, i)], bare[(0, i)]
        clip = item["clip"]
        assert 0 <= clip < 6 and light["clip"] == clip
        # without pixels the same question about the same clip
        assert "video" not in light and torch.equal(light["input_ids"], item["input_ids"])
        assert light["answer"] == item["answer"]
        spec, video = ds.pool_clip(clip)
        assert torch.equal(item["video"], video) and torch.equal(bare.pool_video(clip), video)
        if clip in seen:
            assert torch.equal(seen[clip], video)
        seen[clip] = video
        truth = {tuple(tokenizer([qa.question])[0][0].tolist()): answers[qa.answer] for qa in spec.qa_pairs()}
        assert truth[tuple(item["input_ids"].tolist())] == item["answer"]
        if spec.mirrored:
            mirrored.add(clip)
    assert len(seen) == 6 and 0 < len(mirrored) < 6  # flips are part of a pool clip, drawn once
    assert not torch.equal(SyntheticQA(answers, CONFIG, data, seed=1).pool_video(0), ds.pool_video(0))
    fresh = SyntheticQA(answers, CONFIG, DataSection(source="synthetic", synth_epoch_clips=4), seed=0)[(0, 0)]
    assert fresh["clip"] == -1 and "video" in fresh
    with pytest.raises(IndexError):
        ds.pool_clip(6)


def test_colourless_captions_name_no_starting_colour_and_carry_the_keys_of_every_clip_they_fit():
    from training import synth

    data = DataSection(source="synthetic", synth_epoch_clips=80, synth_colourless_captions=0.5)
    ds = SyntheticVideoText(preset_config("tiny", img_size=64, num_frames=2), data, LossSection(), seed=4)
    decode = ds.builder.tokenizer.decode
    colourless = 0
    for i in range(80):
        item = ds[(0, i)]
        words = decode(item["input_ids"]).split()
        shape_at = [j for j, w in enumerate(words) if w in synth.SHAPES]
        assert shape_at, words
        before_shape = {words[j - 1] for j in shape_at}  # "a red circle" or "a circle"
        if item["text_colourless"]:
            colourless += 1
            assert before_shape <= {"a", "an"}, words
            assert item["text_key"] == item["colourless_key"] != item["key"]
        else:
            assert before_shape <= set(synth.COLOURS), words
            assert item["text_key"] == item["key"] != item["colourless_key"]
    assert 20 <= colourless <= 60
    # limited to the first epochs: from epoch 2 on every caption names its colours again
    early = SyntheticVideoText(preset_config("tiny", img_size=64, num_frames=2),
                               DataSection(source="synthetic", synth_epoch_clips=40, synth_colourless_captions=1.0,
                                           synth_colourless_epochs=2), LossSection(), seed=4)
    assert all(early[(epoch, i)]["text_colourless"] for epoch in (0, 1) for i in range(10))
    assert not any(early[(epoch, i)]["text_colourless"] for epoch in (2, 5) for i in range(10))
    # off (the default): no extra keys, the reference's batch
    plain = SyntheticVideoText(preset_config("tiny", img_size=64, num_frames=2),
                               DataSection(source="synthetic", synth_epoch_clips=8), LossSection(), seed=4)[(0, 0)]
    assert "text_key" not in plain and "colourless_key" not in plain and isinstance(plain["key"], int)
