"""Incremental runs on real files: nothing decoded for unchanged videos, renames keep ids, --prune removes,
changed content is re-embedded, fixed failures are indexed, token features round-trip, PostgreSQL works."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

import indexer.reader
import model
from store.layout import DataDir
from indexer.embedder import Embedder
from indexer.pipeline import run_index
from store.tables import Failure, Segment, Video
from tests.integration.test_indexer_support import GOOD, Library, read_state, settings_for
from tests.integration.test_indexer_support import library, library_template, tiny_checkpoint  # noqa: F401
from tests.video_factory import write_video


class Counters:
    """Counts decoder opens and model calls made in this process (num_workers=0 decodes here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[str] = []
        self.encoded = 0
        real_open, real_decode, real_encode = indexer.reader.open_video, indexer.reader.decode_clips, Embedder.encode

        def open_video(path, *args, **kwargs):
            self.opened.append(str(path))
            return real_open(path, *args, **kwargs)

        def decode_clips(path, *args, **kwargs):
            self.opened.append(str(path))
            return real_decode(path, *args, **kwargs)

        def encode(embedder, clips):
            self.encoded += int(clips.shape[0])
            return real_encode(embedder, clips)

        monkeypatch.setattr(indexer.reader, "open_video", open_video)
        monkeypatch.setattr(indexer.reader, "decode_clips", decode_clips)
        monkeypatch.setattr(Embedder, "encode", encode)

    def reset(self) -> None:
        self.opened.clear()
        self.encoded = 0


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path) -> model.AlproModel:  # noqa: F811
    return model.load_pretrained(tiny_checkpoint)


def ids_by_path(data: Path) -> dict[str, str]:
    datadir = DataDir(data)
    with datadir.session() as session:
        out = {v.path: v.id for v in session.scalars(select(Video))}
    datadir.dispose()
    return out


def test_second_run_decodes_nothing_and_renames_keep_ids(library: Library, tmp_path: Path,  # noqa: F811
                                                         tiny_checkpoint: Path, tiny_model,  # noqa: F811
                                                         monkeypatch) -> None:
    counters = Counters(monkeypatch)
    data = tmp_path / "data"
    settings = settings_for(library.root, data, tiny_checkpoint)
    first = run_index(settings, model=tiny_model)
    assert first.indexed == len(GOOD)
    assert {str(p) for p in library.good.values()} <= set(counters.opened)
    assert counters.encoded == first.segments
    state1 = read_state(data)

    counters.reset()
    second = run_index(settings, model=tiny_model)
    assert counters.opened == [] and counters.encoded == 0
    assert (second.unchanged, second.indexed, second.decoded, second.published) == (len(GOOD), 0, 0, False)
    assert second.failed == first.failed  # unchanged broken files are not retried
    assert second.index_version == first.index_version
    state2 = read_state(data)
    assert (state2.version, state2.segments) == (state1.version, state1.segments)

    # rename and move a file: same id, same segment rows, nothing decoded
    old = library.good["clip.mp4"]
    ids_before = ids_by_path(data)
    moved = library.root / "moved" / "renamed.mp4"
    moved.parent.mkdir()
    old.rename(moved)
    counters.reset()
    third = run_index(settings, model=tiny_model)
    assert counters.opened == [] and counters.encoded == 0
    assert third.renamed == 1 and third.unchanged == len(GOOD) and third.missing == 0
    ids_after = ids_by_path(data)
    assert ids_after[str(moved)] == ids_before[str(old)] and str(old) not in ids_after
    state3 = read_state(data)
    assert state3.segments == state1.segments  # same (video, index) keys and thumbnails
    datadir = DataDir(data)
    with datadir.session() as session:
        seg_ids = sorted(s.id for s in session.scalars(select(Segment)))
    datadir.dispose()
    snapshot = DataDir(data).open_index()
    assert seg_ids == sorted(snapshot.segment_ids().tolist())
    # the version's copy of the rows follows the rename: a new version, a delta of the renamed video's vectors
    # (its ids again, with the new path) over the base it had, which is not rebuilt
    assert third.published and third.index_version == second.index_version + 1
    before = DataDir(data).read_manifest(second.index_version)
    assert snapshot.manifest.parts[:-1] == before.parts  # one more part, the same base
    renamed_segments = [s for s in seg_ids if snapshot.locate([s])[0][0] == ids_after[str(moved)]]
    assert snapshot.manifest.delta_vectors - before.delta_vectors == len(renamed_segments)
    assert snapshot.manifest.tombstones == 0  # the same ids, served from the newer part
    rows = {r.segment_id: r for r in snapshot.segment_rows(seg_ids)}
    assert {r.path for r in rows.values() if r.video_id == ids_after[str(moved)]} == {str(moved)}
    assert str(old) not in {r.path for r in rows.values()}
    datadir = DataDir(data)
    with datadir.session() as session:
        db_rows = {s.id: (s.video_id, s.index, s.start_s, s.end_s, s.thumbnail is not None, s.video.path)
                   for s in session.scalars(select(Segment))}
    datadir.dispose()
    assert db_rows == {i: (r.video_id, r.index, r.start_s, r.end_s, r.has_thumbnail, r.path) for i, r in rows.items()}


def test_missing_files_are_kept_until_prune(library: Library, tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                            tiny_model, monkeypatch) -> None:
    counters = Counters(monkeypatch)
    data = tmp_path / "data"
    run_index(settings_for(library.root, data, tiny_checkpoint), model=tiny_model)
    gone = library.good["long.mp4"]
    gone_id = ids_by_path(data)[str(gone)]
    gone.unlink()

    counters.reset()
    kept = run_index(settings_for(library.root, data, tiny_checkpoint), model=tiny_model)
    assert kept.missing == 1 and kept.removed == 0 and counters.opened == []
    assert gone_id in read_state(data).videos

    pruned = run_index(settings_for(library.root, data, tiny_checkpoint, prune=True), model=tiny_model)
    assert pruned.removed == 1 and pruned.missing == 0 and pruned.published
    state = read_state(data)
    assert gone_id not in state.videos and all(key[0] != gone_id for key in state.vectors)
    assert not (data / "thumbnails" / gone_id).exists()
    assert not list((data / "cache").rglob(f"{gone_id}*"))


def test_changed_file_is_reembedded_and_fixed_failure_indexed(library: Library, tmp_path: Path,  # noqa: F811
                                                              tiny_checkpoint: Path, tiny_model, monkeypatch) -> None:  # noqa: F811
    counters = Counters(monkeypatch)
    data = tmp_path / "data"
    settings = settings_for(library.root, data, tiny_checkpoint)
    run_index(settings, model=tiny_model)
    changed = library.good["clip.avi"]
    old_id = ids_by_path(data)[str(changed)]
    write_video(changed, 33, codec="mpeg4", width=96, height=64)  # new content, same path
    fixed = library.broken["notes.mp4"]
    write_video(fixed, 17, codec="h264", width=64, height=48)  # the text file is now a real video

    counters.reset()
    summary = run_index(settings, model=tiny_model)
    assert sorted(set(counters.opened)) == sorted([str(changed), str(fixed)])
    assert summary.indexed == 2 and summary.removed == 1  # the old content of clip.avi is replaced
    ids = ids_by_path(data)
    assert ids[str(changed)] != old_id and old_id not in read_state(data).videos
    assert str(fixed) in ids
    datadir = DataDir(data)
    with datadir.session() as session:
        failed_paths = {f.path for f in session.scalars(select(Failure))}
    datadir.dispose()
    assert str(fixed) not in failed_paths and len(failed_paths) == len(library.broken) - 1


def test_token_features_round_trip(library: Library, tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                   tiny_model) -> None:
    data = tmp_path / "data"
    run_index(settings_for(library.root, data, tiny_checkpoint), model=tiny_model)
    # asking for tokens later re-embeds (the cache holds none yet) and publishes a version with them
    summary = run_index(settings_for(library.root, data, tiny_checkpoint, store_tokens=True), model=tiny_model)
    assert summary.indexed == len(GOOD) and summary.published
    datadir = DataDir(data)
    with datadir.session() as session:
        long_video = session.scalars(select(Video).where(Video.path == str(library.good["long.mp4"]))).one()
        segments = [(s.id, s.start_s, s.end_s) for s in long_video.segments]
    with datadir.open_index() as snapshot:
        assert snapshot.manifest.has_tokens
        tokens = snapshot.tokens([s[0] for s in segments])
    cfg = tiny_model.config
    assert tokens.dtype == np.float16
    assert tokens.shape == (len(segments), 1 + cfg.vision.num_patches, cfg.vision.embed_dim)
    assert snapshot.manifest.token_shape == tokens.shape[1:]
    for row, (_, start, end) in enumerate(segments):
        frames = model.load_video(library.good["long.mp4"], cfg, window=(start, end))
        with torch.no_grad():
            expected = tiny_model.video_tokens(frames[None])[0].numpy()
        np.testing.assert_allclose(tokens[row].astype(np.float32), expected, atol=2e-3, rtol=2e-3)
    # versions share the cached token files instead of copying them (in the part that holds the video)
    held = [data / "index" / part / "tokens" / f"{long_video.id}.npy" for part in snapshot.manifest.parts]
    assert [os.stat(path).st_nlink >= 2 for path in held if path.exists()] == [True]


POSTGRES_URL = os.environ.get("ALPRO_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL, reason="set ALPRO_TEST_POSTGRES_URL to run against PostgreSQL")
def test_full_run_on_postgresql(library: Library, tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                tiny_model) -> None:
    from tests.unit.test_indexer_store import fresh_postgres_url

    url = fresh_postgres_url(POSTGRES_URL)
    data = tmp_path / "data"
    settings = settings_for(library.root, data, tiny_checkpoint, database_url=url)
    first = run_index(settings, model=tiny_model)
    assert first.indexed == len(GOOD) and not (data / "metadata.sqlite3").exists()
    second = run_index(settings, model=tiny_model)
    assert second.unchanged == len(GOOD) and second.decoded == 0
    datadir = DataDir(data, url)
    with datadir.session() as session:
        assert session.query(Video).count() == len(GOOD)
    with datadir.open_index() as snapshot:
        assert snapshot.num_vectors == first.segments
    datadir.dispose()
