"""alpro-index end to end on real files: counts, failures, moments, thumbnails, search mechanics, refusal of
another checkpoint, exit codes and environment settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

import model
from store.layout import DataDir
from store.tables import Failure, IndexVersion, Video
from tests.integration.test_indexer_support import (BROKEN, GOOD, LONG_SEGMENTS, Library, make_library, main_json,
                                                    read_state, run_cli_json)
from tests.integration.test_indexer_support import library, library_template, other_checkpoint, tiny_checkpoint  # noqa: F401


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):  # noqa: F811
    """One real CLI run (two decoding processes) on a library of good and broken files."""
    base = tmp_path_factory.mktemp("indexed")
    lib = make_library(base / "videos")
    data = base / "data"
    proc, summary = run_cli_json(str(lib.root), "--data-dir", str(data), "--checkpoint", str(tiny_checkpoint),
                                 "--num-workers", "2", "--thumbnail-width", "64")
    return lib, data, proc, summary


def test_counts_and_failures(indexed) -> None:
    lib, data, proc, summary = indexed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["indexed"] == len(GOOD)
    assert summary["failed"] == len(BROKEN)
    assert summary["partial"] == 0  # whole files; the cut ones without an index do not open at all
    assert summary["found"] == len(GOOD) + len(BROKEN)
    assert summary["skipped"] == 2  # readme.txt and meta.json; .hidden.mp4 is not even looked at
    assert summary["unchanged"] == 0 and summary["removed"] == 0
    assert summary["segments"] == len(GOOD) - 1 + LONG_SEGMENTS
    # version 1 as soon as the videos are embedded, version 2 (the same FAISS index) once the previews of
    # what browsers cannot play (clip.avi; no_extension_video, an MP4 without a media type) are made
    assert summary["index_version"] == 2 and summary["published"] is True
    assert summary["previews_made"] == 2 and summary["previews_failed"] == 0
    for stage in ("decode", "encode", "write", "publish", "pipeline"):
        assert summary["timings"][stage] > 0, stage
    assert summary["videos_per_s"] > 0
    datadir = DataDir(data)
    with datadir.session() as session:
        paths = {v.path for v in session.scalars(select(Video))}
        failures = {Path(f.path).name: f for f in session.scalars(select(Failure))}
        versions = list(session.scalars(select(IndexVersion)))
    assert paths == {str(p) for p in lib.good.values()}
    with datadir.session() as session:
        assert {(v.partial, v.partial_reason) for v in session.scalars(select(Video))} == {(False, None)}
    assert set(failures) == set(BROKEN)
    assert failures["empty.mp4"].reason == "empty file"
    assert all(f.reason and f.error_type for f in failures.values())
    assert failures["notes.mp4"].size_bytes == lib.broken["notes.mp4"].stat().st_size
    assert [(v.version, v.status, v.num_segments) for v in versions] == [(1, "published", summary["segments"]),
                                                                          (2, "published", summary["segments"])]
    read_state(data)  # index ids and segment rows agree


def test_long_video_moments_and_thumbnails(indexed) -> None:
    lib, data, _, _ = indexed
    datadir = DataDir(data)
    with datadir.session() as session:
        video = session.scalars(select(Video).where(Video.path == str(lib.good["long.mp4"]))).one()
        segments = [(s.index, s.start_s, s.end_s, s.thumbnail) for s in video.segments]
        short = session.scalars(select(Video).where(Video.path == str(lib.good["clip.mp4"]))).one()
        short_segments = [(s.start_s, s.end_s) for s in short.segments]
    assert video.num_frames == 300 and video.fps == pytest.approx(10.0) and video.duration_s == pytest.approx(30.0)
    assert (video.width, video.height) == (80, 48)
    assert [s[0] for s in segments] == list(range(LONG_SEGMENTS))
    bounds = [b for s in segments for b in (s[1], s[2])]
    assert bounds == pytest.approx([0.0, 10.0, 10.0, 20.0, 20.0, 30.0])
    assert [b for s in short_segments for b in s] == pytest.approx([0.0, 40 / 30])
    for index, _, _, thumbnail in segments:
        assert thumbnail == f"thumbnails/{video.id}/{index}.jpg"
        path = datadir.thumbnail_path(video.id, index)
        assert path == data / thumbnail
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.size == (64, round(64 * 48 / 80))  # width 64, aspect kept


def test_search_finds_a_segment_by_its_own_embedding(indexed, tiny_checkpoint: Path) -> None:  # noqa: F811
    """Mechanics: a query equal to a segment's embedding, computed here with the model API, returns it first."""
    lib, data, _, _ = indexed
    net = model.load_pretrained(tiny_checkpoint)
    datadir = DataDir(data)
    with datadir.session() as session:
        rows = [(s.id, s.start_s, s.end_s, Path(v.path)) for v in session.scalars(select(Video))
                for s in v.segments]
    queries, expected = [], []
    for seg_id, start, end, path in rows:
        frames = model.load_video(path, net.config, window=(start, end))  # (T, 3, H, W)
        with torch.no_grad():
            queries.append(net.encode_video(frames[None])[0].numpy())
        expected.append(seg_id)
    with datadir.open_index() as snapshot:
        stored = snapshot.vectors(expected)
        scores, ids = snapshot.search(np.stack(queries), k=3)
    # the indexer sampled and normalised exactly as model.preprocess does
    np.testing.assert_allclose(stored, np.stack(queries), atol=1e-5)
    assert ids[:, 0].tolist() == expected
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(scores[:, 0] >= scores[:, 1])


def test_search_pads_with_minus_one(indexed) -> None:
    _, data, _, summary = indexed
    with DataDir(data).open_index() as snapshot:
        query = np.zeros((1, snapshot.manifest.dim), np.float32)
        query[0, 0] = 1.0
        scores, ids = snapshot.search(query, k=summary["segments"] + 2)
    assert (ids[0, -2:] == -1).all() and np.isneginf(scores[0, -2:]).all()
    assert (ids[0, :-2] >= 0).all()


def test_manifest_records_checkpoint_and_preprocessing(indexed, tiny_checkpoint: Path) -> None:  # noqa: F811
    _, data, _, _ = indexed
    net = model.load_pretrained(tiny_checkpoint)
    manifest = DataDir(data).read_manifest()
    assert manifest.checkpoint_fingerprint == model.checkpoint_fingerprint(net)
    assert manifest.checkpoint == str(tiny_checkpoint)
    assert manifest.preprocess["num_frames"] == net.config.num_frames
    assert manifest.preprocess["img_size"] == net.config.img_size
    assert manifest.preprocess["mean"] == list(net.config.preprocess.mean)
    assert manifest.index_type == "flat" and manifest.metric == "ip" and manifest.recall_at_10 == 1.0
    assert manifest.dim == net.config.embed_dim and manifest.segment_seconds == 10.0
    manifest.check_model(model.checkpoint_fingerprint(net), net.config.to_dict())


def test_other_checkpoint_is_refused_unless_reindex(library: Library, tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                                   other_checkpoint: Path, capsys) -> None:  # noqa: F811
    data = tmp_path / "data"
    common = [str(library.root), "--data-dir", str(data), "--num-workers", "0"]
    code, _, _ = main_json([*common, "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 0
    before = read_state(data)

    code, summary, err = main_json([*common, "--checkpoint", str(other_checkpoint)], capsys)
    assert code == 2 and summary is None
    assert "--reindex" in err and "checkpoint" in err
    after = read_state(data)
    assert after.version == before.version and after.segments == before.segments

    code, summary, err = main_json([*common, "--checkpoint", str(other_checkpoint), "--reindex"], capsys)
    assert code == 0, err[-3000:]
    assert summary["indexed"] == len(GOOD) and summary["decoded"] == len(GOOD) + len(BROKEN)
    new = read_state(data)
    assert new.version == before.version + 1
    assert new.segments.keys() == before.segments.keys()
    manifest = DataDir(data).read_manifest()
    assert manifest.checkpoint_fingerprint == model.checkpoint_fingerprint(model.load_pretrained(other_checkpoint))
    # other random weights: the vectors really were re-embedded
    key = next(iter(new.vectors))
    assert not np.allclose(new.vectors[key], before.vectors[key], atol=1e-3)
    # only the new checkpoint's cache is kept
    assert len([p for p in (data / "cache").iterdir() if p.is_dir()]) == 1


def test_nothing_indexable_fails_and_environment_settings(tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                                          capsys, monkeypatch) -> None:
    lib = make_library(tmp_path / "videos")
    for path in lib.good.values():
        path.unlink()
    env = {"ALPRO_DATA_DIR": str(tmp_path / "data"), "ALPRO_CHECKPOINT": str(tiny_checkpoint),
           "ALPRO_VIDEOS_DIR": str(lib.root), "ALPRO_NUM_WORKERS": "0"}
    code, summary, err = main_json([], capsys, monkeypatch, env)
    assert code == 1
    assert summary["failed"] == len(BROKEN) and summary["indexed"] == 0
    assert "nothing could be indexed" in err
    assert (tmp_path / "data" / "metadata.sqlite3").is_file()  # the environment named the data dir

    shutil.rmtree(lib.root / "broken")
    code, _, err = main_json([], capsys)
    assert code == 1 and "no video files found" in err

    code, _, err = main_json([str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err


def test_official_checkpoint_with_bert_config(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:  # noqa: F811
    """An official-format .pt indexes with --bert-config and --vision-num-heads."""
    import json

    from model.checkpoint import official_bert_config, save_official_checkpoint

    net = model.load_pretrained(tiny_checkpoint)
    pt = save_official_checkpoint(net, tmp_path / "model_step_best.pt")
    bert = tmp_path / "model_config.json"
    bert.write_text(json.dumps(official_bert_config(net.config)))
    videos = tmp_path / "videos"
    videos.mkdir()
    from tests.video_factory import write_video

    write_video(videos / "a.mp4", 20, width=64, height=48)
    args = [str(videos), "--data-dir", str(tmp_path / "data"), "--checkpoint", str(pt), "--num-workers", "0"]
    code, _, err = main_json(args, capsys)
    assert code == 2 and "--bert-config" in err
    code, summary, err = main_json([*args, "--bert-config", str(bert), "--vision-num-heads",
                                    str(net.config.vision.num_heads)], capsys)
    assert code == 0, err
    assert summary["indexed"] == 1
    manifest = DataDir(tmp_path / "data").read_manifest()
    assert manifest.checkpoint == str(pt)
    loaded = model.load_official_checkpoint(pt, bert, vision_num_heads=net.config.vision.num_heads)
    assert manifest.checkpoint_fingerprint == model.checkpoint_fingerprint(loaded)


def test_second_indexer_on_the_same_data_dir_is_refused(library: Library, tmp_path: Path,  # noqa: F811
                                                         tiny_checkpoint: Path, capsys) -> None:  # noqa: F811
    from indexer.lock import DataDirLock

    data = tmp_path / "data"
    with DataDirLock(data / "indexer.lock"):
        code, summary, err = main_json([str(library.root), "--data-dir", str(data), "--checkpoint",
                                        str(tiny_checkpoint)], capsys)
    assert code == 3 and summary is None and "indexer" in err
    assert not (data / "index" / "CURRENT").exists()
