"""Metadata on real databases: SQLite always, PostgreSQL when ALPRO_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from indexer import catalog
from store import history
from store.layout import DataDir
from indexer.discover import FoundFile
from store.tables import Failure, FileHash, IndexVersion, Segment, Video, create_engine_for, has_schema, init_db

POSTGRES_URL = os.environ.get("ALPRO_TEST_POSTGRES_URL")
INFO = {"num_frames": 300, "fps": 30.0, "duration_s": 10.0, "width": 320, "height": 240, "codec": "h264"}


def fresh_postgres_url(server_url: str) -> str:
    """A new, empty database on the server (or, without CREATEDB rights, the given one emptied)."""
    url = make_url(server_url)
    name = f"alpro_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return url.set(database=name).render_as_string(hide_password=False)
    except sa.exc.ProgrammingError:
        from store.tables import Base

        engine = sa.create_engine(url)
        Base.metadata.drop_all(engine)
        engine.dispose()
        return server_url
    finally:
        admin.dispose()


DATABASES = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.sqlite3'}"
    return fresh_postgres_url(POSTGRES_URL)


@pytest.fixture
def engine(database_url: str):
    engine = create_engine_for(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


def found(path: str, size: int = 100, mtime_ns: int = 1_700_000_000_123_456_789) -> FoundFile:
    return FoundFile(path, size, mtime_ns, "extension")


def add_video(session: Session, video_id: str, segments: int = 2, path: str = "/v/a.mp4") -> list[int]:
    return catalog.record_video(session, video_id=video_id, file=found(path), all_paths=[path], info=INFO,
                                starts=[float(i) for i in range(segments)],
                                ends=[float(i + 1) for i in range(segments)],
                                thumbnails=[f"thumbnails/{video_id}/{i}.jpg" for i in range(segments)],
                                fingerprint="fp1", key="key1")


def test_schema_round_trip(engine) -> None:
    assert has_schema(engine)
    with Session(engine) as session:
        ids = add_video(session, "a" * 32, segments=3)
    with Session(engine) as session:
        video = session.get(Video, "a" * 32)
        assert video.path == "/v/a.mp4" and video.size_bytes == 100 and video.num_frames == 300
        assert video.mtime == pytest.approx(1_700_000_000.123456789)
        assert video.checkpoint_fingerprint == "fp1" and video.pipeline_key == "key1"
        assert [s.index for s in video.segments] == [0, 1, 2]
        assert [s.id for s in video.segments] == ids
        assert video.segments[1].start_s == 1.0 and video.segments[1].end_s == 2.0
        assert video.segments[2].thumbnail == f"thumbnails/{'a' * 32}/2.jpg"
        assert video.indexed_at is not None


def test_segment_index_is_unique_per_video(engine) -> None:
    with Session(engine) as session:
        add_video(session, "b" * 32, segments=1)
    with Session(engine) as session:
        session.add(Segment(video_id="b" * 32, index=0, start_s=0.0, end_s=1.0))
        with pytest.raises(IntegrityError):
            session.commit()


def test_segment_ids_are_never_reused(engine) -> None:
    """An older index version may still hold a deleted id: a new segment must not take it."""
    with Session(engine) as session:
        first = add_video(session, "c" * 32, segments=3)
        catalog.delete_videos(session, ["c" * 32])
        second = add_video(session, "d" * 32, segments=2)
        assert min(second) > max(first)
        again = add_video(session, "d" * 32, segments=2)  # re-embedding a video gives new rows
        assert min(again) > max(second)
        assert session.scalar(select(sa.func.count()).select_from(Segment)) == 2


def test_deleting_a_video_deletes_its_segments(engine) -> None:
    with Session(engine) as session:
        add_video(session, "e" * 32, segments=2)
        add_video(session, "f" * 32, segments=2, path="/v/f.mp4")
    with Session(engine) as session:
        session.delete(session.get(Video, "e" * 32))  # ORM cascade
        session.commit()
        catalog.delete_videos(session, ["f" * 32])
        assert session.scalar(select(sa.func.count()).select_from(Segment)) == 0
        assert session.scalar(select(sa.func.count()).select_from(Video)) == 0


def test_failures_are_replaced_and_cleared_by_success(engine) -> None:
    path = "/v/broken.mp4"
    with Session(engine) as session:
        catalog.record_failure(session, found(path, size=5), "VideoDecodeError", "no video stream")
        catalog.record_failure(session, found(path, size=7), "VideoDecodeError", "empty file")
        rows = list(session.scalars(select(Failure)))
        assert [(r.path, r.reason, r.size_bytes) for r in rows] == [(path, "empty file", 7)]
        assert catalog.load_failures(session) == {path: (7, pytest.approx(1_700_000_000.123456789))}
        add_video(session, "1" * 32, path=path)  # fixed: indexed now
        assert list(session.scalars(select(Failure))) == []
        session.add(Failure(path="/x", reason="r", error_type="E", size_bytes=1, mtime=0.0))
        session.add(Failure(path="/x", reason="r", error_type="E", size_bytes=1, mtime=0.0))
        with pytest.raises(IntegrityError):
            session.commit()


def test_hash_cache(engine) -> None:
    files = [found("/v/a.mp4", 10, 1), found("/v/b.mp4", 20, 2)]
    with Session(engine) as session:
        catalog.save_hash_cache(session, files, {"/v/a.mp4": "id-a", "/v/b.mp4": "id-b"}, {})
        cached = catalog.load_hash_cache(session)
        assert cached == {"/v/a.mp4": (10, 1, "id-a"), "/v/b.mp4": (20, 2, "id-b")}
        changed = [found("/v/a.mp4", 11, 3)]
        catalog.save_hash_cache(session, changed, {"/v/a.mp4": "id-a2"}, cached, forget=["/v/b.mp4"])
        assert catalog.load_hash_cache(session) == {"/v/a.mp4": (11, 3, "id-a2")}
        assert session.scalar(select(sa.func.count()).select_from(FileHash)) == 1


def test_versions_and_state_queries(engine) -> None:
    from datetime import datetime, timezone

    with Session(engine) as session:
        add_video(session, "a" * 32, segments=2)
        add_video(session, "b" * 32, segments=1, path="/v/b.mp4")
        states = catalog.load_videos(session)
        assert {k: v.num_segments for k, v in states.items()} == {"a" * 32: 2, "b" * 32: 1}
        groups = catalog.segments_for_index(session, "key1")
        assert [(v.video_id, len(v.segment_ids)) for v in groups] == [("a" * 32, 2), ("b" * 32, 1)]
        assert groups[1].path == "/v/b.mp4" and len(groups[0].starts) == len(groups[0].thumbnails) == 2
        assert catalog.stale_video_ids(session, "key1") == []
        assert sorted(catalog.stale_video_ids(session, "other")) == ["a" * 32, "b" * 32]
        assert history.next_version(session) == 1
        history.record_version(session, version=1, created_at=datetime.now(timezone.utc), fingerprint="fp1",
                               num_videos=2, num_segments=3, index_type="flat", recall_at_10=1.0)
        assert history.next_version(session) == 2
        history.mark_versions_deleted(session, [1])
        assert session.get(IndexVersion, 1).status == "deleted"


def test_read_only_data_dir_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "absent"
    datadir = DataDir(root, None)
    assert datadir.current_version() is None
    with pytest.raises(OperationalError):
        with datadir.session() as session:
            session.execute(select(Video)).all()
    datadir.dispose()
    assert not root.exists()


def test_database_url_is_what_the_settings_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the environment is read by the settings layer only (settings.SharedSettings), never behind its back
    monkeypatch.setenv("ALPRO_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}")
    assert DataDir(tmp_path / "data").database_url == f"sqlite:///{tmp_path / 'data' / 'metadata.sqlite3'}"
    assert DataDir(tmp_path / "data", "sqlite:///x.db").database_url == "sqlite:///x.db"
