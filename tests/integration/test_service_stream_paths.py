"""/videos/{id}/stream serves only the file the indexer indexed: inside a library root it recorded, with the
size and mtime it recorded. Real videos, the real indexer, the real server over HTTP."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from sqlalchemy import select, text, update

httpx = pytest.importorskip("httpx")

from store.layout import DataDir  # noqa: E402
from indexer.discover import content_id  # noqa: E402
from indexer.pipeline import run_index  # noqa: E402
from indexer.settings import IndexSettings  # noqa: E402
from store.tables import Video  # noqa: E402
from model import create_model  # noqa: E402
from tests.integration.test_service_support import index_videos, make_videos, run_server  # noqa: E402
from tests.pg_server import backend_settings  # noqa: E402

SECRET = b"root-only secret: must never leave the server\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return create_model("tiny").save_pretrained(tmp_path_factory.mktemp("stream_paths") / "retrieval")


def settings(data: Path):
    from service.settings import Settings

    return Settings(data_dir=data, qa_checkpoint=None, index_poll_s=0.1, decode_workers=1, **backend_settings(data))


def reindex(videos: Path, data: Path, checkpoint: Path):
    """alpro-index again over the same folder (publishes only if something changed)."""
    summary = run_index(IndexSettings(videos_dir=videos, data_dir=data, checkpoint=checkpoint, segment_seconds=1.0,
                                      num_workers=0, progress=False, **backend_settings(data)))
    assert summary.failed == 0, summary.to_dict()
    return summary


def db_paths(data: Path) -> dict[str, str]:
    with DataDir(data, backend_settings(data).get("database_url")).session() as session:
        return dict(session.execute(select(Video.id, Video.path)).all())


def db_roots(data: Path) -> list[str]:
    with DataDir(data, backend_settings(data).get("database_url")).session() as session:
        return list(session.scalars(text("SELECT path FROM library_roots ORDER BY path")))


def assert_refused_without_leaking(r: httpx.Response, *hidden: Path) -> None:
    assert r.status_code == 404, r.text
    assert SECRET not in r.content
    body = r.json()
    assert body["error"] == "video_outside_library"
    for path in hidden:
        assert str(path) not in body["message"] and path.name not in body["message"]


def test_stream_refuses_a_symlink_out_of_the_library(checkpoint, tmp_path):
    """(a) a library file replaced by a symlink out of the library, or a DB row pointing out: 404, no bytes."""
    lib = tmp_path / "lib"
    red, blue, green = make_videos(lib, ("red", "blue", "green"))
    data = tmp_path / "data"
    index_videos(lib, data, checkpoint)
    ids = {p.stem: content_id(str(p)) for p in (red, blue, green)}

    # a sibling whose name starts with the library's: a string-prefix check would let it through
    outside = tmp_path / "lib_outside"
    outside.mkdir()
    secret = outside / "hostname"
    secret.write_bytes(SECRET)
    red.unlink()
    red.symlink_to(secret)
    # the same bytes, size and mtime as indexed, only no longer inside the library: only the root check sees it
    moved = outside / "blue.mp4"
    os.replace(blue, moved)
    blue.symlink_to(moved)
    # a row pointing straight out of the library (a tampered or foreign database), same size and mtime
    stolen = outside / "green.mp4"
    shutil.copy2(green, stolen)
    with DataDir(data, backend_settings(data).get("database_url")).session() as session:
        session.execute(update(Video).where(Video.id == ids["green"]).values(path=str(stolen)))
        session.commit()

    with run_server(settings(data)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        for name, hidden in (("red", secret), ("blue", moved), ("green", stolen)):
            r = c.get(f"/videos/{ids[name]}/stream")
            assert_refused_without_leaking(r, hidden)
            r = c.get(f"/videos/{ids[name]}/stream", headers={"Range": "bytes=0-9"})
            assert_refused_without_leaking(r, hidden)
            assert c.head(f"/videos/{ids[name]}/stream").status_code == 404
        # the thumbnails live in the data dir: still served
        assert c.get(f"/videos/{ids['red']}/thumbnail").status_code == 200


def test_discovery_does_not_index_a_symlink_out_of_the_library(checkpoint, tmp_path):
    """(b) a link to a video outside is not indexed; a link to a file inside the library is (and streams)."""
    outside = tmp_path / "elsewhere"
    (foreign,) = make_videos(outside, ("yellow",))
    lib = tmp_path / "lib"
    (red,) = make_videos(lib, ("red",))
    (lib / "foreign.mp4").symlink_to(foreign)
    (lib / "foreign_dir").symlink_to(outside, target_is_directory=True)
    (hidden,) = make_videos(lib / ".store", ("blue",))  # hidden: reached only through the link
    (lib / "blue.mp4").symlink_to(Path(".store") / "blue.mp4")
    data = tmp_path / "data"
    index_videos(lib, data, checkpoint)

    paths = db_paths(data)
    assert sorted(paths.values()) == [str(lib / "blue.mp4"), str(red)]
    assert content_id(str(foreign)) not in paths
    with run_server(settings(data)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.get(f"/videos/{content_id(str(hidden))}/stream")
        assert r.status_code == 200 and r.content == hidden.read_bytes()


def test_changed_file_is_409_until_reindexed(checkpoint, tmp_path):
    """(c) replaced content or a new mtime since indexing: 409 saying so; alpro-index picks it up; then 200."""
    lib = tmp_path / "lib"
    red, blue = make_videos(lib, ("red", "blue"))
    data = tmp_path / "data"
    index_videos(lib, data, checkpoint)
    old_red, blue_id = content_id(str(red)), content_id(str(blue))
    indexed = red.stat()

    # red's file now holds other content (written beside it, then renamed over it, as editors and rsync do)
    (yellow,) = make_videos(tmp_path / "new", ("yellow",), seconds=3.0)
    os.replace(yellow, red)
    os.utime(red, ns=(indexed.st_atime_ns, indexed.st_mtime_ns + 5_000_000_000))
    new_red = content_id(str(red))
    assert new_red != old_red and red.stat().st_size != indexed.st_size
    # blue: the same bytes, touched
    st = blue.stat()
    os.utime(blue, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))

    with run_server(settings(data)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        for video_id in (old_red, blue_id):
            r = c.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=0-99"})
            assert r.status_code == 409, r.text
            body = r.json()
            assert body["error"] == "video_file_changed"
            assert "changed since it was indexed" in body["message"] and "alpro-index" in body["message"]
            assert str(lib) not in body["message"]
            assert c.head(f"/videos/{video_id}/stream").status_code == 409

        summary = reindex(lib, data, checkpoint)
        assert summary.indexed == 1 and summary.unchanged == 1 and summary.removed == 1, summary.to_dict()
        assert c.get(f"/videos/{old_red}/stream").status_code == 404  # that content is gone from the index
        for video_id, path in ((new_red, red), (blue_id, blue)):
            data_bytes = path.read_bytes()
            r = c.get(f"/videos/{video_id}/stream")
            assert r.status_code == 200 and r.content == data_bytes
            r = c.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=100-199"})
            assert r.status_code == 206 and r.content == data_bytes[100:200]

    # touched again, nothing else: a run that changes no content still records the new mtime
    st = blue.stat()
    os.utime(blue, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    reindex(lib, data, checkpoint)
    with run_server(settings(data)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get(f"/videos/{blue_id}/stream").status_code == 200


def test_stream_with_range_from_a_library_reached_through_a_symlink(checkpoint, tmp_path):
    """(d) the normal case: whole file, Range (206), HEAD; the library's folder is itself a symlink."""
    real = tmp_path / "disk" / "videos"
    (green,) = make_videos(real, ("green",))
    lib = tmp_path / "videos"
    lib.symlink_to(real, target_is_directory=True)
    data = tmp_path / "data"
    index_videos(lib, data, checkpoint)
    video_id = content_id(str(green))
    assert db_paths(data) == {video_id: str(lib / "green.mp4")}  # paths as the folder was given
    data_bytes = green.read_bytes()
    with run_server(settings(data)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        full = c.get(f"/videos/{video_id}/stream")
        assert full.status_code == 200 and full.content == data_bytes
        assert full.headers["content-type"] == "video/mp4" and full.headers["accept-ranges"] == "bytes"
        part = c.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data_bytes[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(data_bytes)}"
        tail = c.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == data_bytes[-50:]
        beyond = c.get(f"/videos/{video_id}/stream", headers={"Range": f"bytes={len(data_bytes) + 10}-"})
        assert beyond.status_code == 416
        head = c.head(f"/videos/{video_id}/stream")
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data_bytes)
    assert db_roots(data) == [str(real.resolve())]  # the root resolved


def test_database_from_before_library_roots(checkpoint, tmp_path):
    """A database without the library_roots table: the service keeps working and streams nothing it cannot
    place (404 that says to run alpro-index); the next alpro-index run adds the table and the root."""
    lib = tmp_path / "lib"
    (red,) = make_videos(lib, ("red",))
    data = tmp_path / "data"
    index_videos(lib, data, checkpoint)
    with DataDir(data, backend_settings(data).get("database_url")).session() as session:
        session.execute(text("DROP TABLE IF EXISTS library_roots"))
        session.commit()
    video_id = content_id(str(red))
    with run_server(settings(data)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/stats").status_code == 200
        assert c.get(f"/videos/{video_id}").status_code == 200
        r = c.get(f"/videos/{video_id}/stream")
        assert r.status_code == 404 and r.json()["error"] == "video_outside_library"
        assert "alpro-index" in r.json()["message"]
        reindex(lib, data, checkpoint)
        assert db_roots(data) == [str(lib.resolve())]
        r = c.get(f"/videos/{video_id}/stream")
        assert r.status_code == 200 and r.content == red.read_bytes()
