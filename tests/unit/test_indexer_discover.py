"""Discovery by extension and content, content ids, and the hash cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import indexer.discover as discover_mod
from indexer.discover import content_id, discover, extension, hash_files, sniff_container
from tests.video_factory import solid_frames, write_video


def test_sniff_signatures(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "a.mp4", 5, width=32, height=32)
    webm = write_video(tmp_path / "a.webm", 5, codec="vp9", width=32, height=32)
    avi = write_video(tmp_path / "a.avi", 5, codec="mpeg4", width=32, height=32)
    assert sniff_container(mp4.read_bytes()[:256]) == "isobmff"
    assert sniff_container(webm.read_bytes()[:256]) == "matroska"
    assert sniff_container(avi.read_bytes()[:256]) == "avi"
    assert sniff_container(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20) is None  # a still image
    assert sniff_container(b"hello world, this is text") is None
    assert sniff_container(b"") is None


def test_extension() -> None:
    assert extension("/a/b/Movie.MP4") == "mp4"
    assert extension("/a/b/noext") == ""
    assert extension("/a/.hidden") == ""
    assert extension("/a/archive.tar.gz") == "gz"


def test_discover_classifies_by_extension_and_content(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "sub").mkdir(parents=True)
    write_video(root / "a.mp4", 5, width=32, height=32)
    write_video(root / "sub" / "b.webm", 6, codec="vp9", width=32, height=32)
    shutil.copy(write_video(tmp_path / "c.mp4", 7, width=32, height=32), root / "c.weird")  # unknown extension
    shutil.copy(write_video(tmp_path / "d.avi", 8, codec="mpeg4", width=32, height=32), root / "sub" / "d")
    (root / "notes.txt").write_text("text")
    (root / "data.json").write_text("{}")
    (root / "fake.mp4").write_text("a text file named .mp4 is a candidate (and later a failure)")
    (root / "unknown.bin2").write_bytes(os.urandom(2048))  # unknown and not a video: skipped silently
    (root / ".DS_Store").write_bytes(b"\x00" * 10)
    (root / "._a.mp4").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / ".cache").mkdir()
    write_video(root / ".cache" / "e.mp4", 5, width=32, height=32)
    exclude = root / "data"
    exclude.mkdir()
    write_video(exclude / "f.mp4", 5, width=32, height=32)

    found = discover(root, exclude=[exclude])
    by_name = {Path(f.path).name: f.by for f in found.files}
    assert by_name == {"a.mp4": "extension", "b.webm": "extension", "c.weird": "signature", "d": "signature",
                       "fake.mp4": "extension"}
    assert found.skipped == 3  # notes.txt, data.json, unknown.bin2
    assert all(os.path.isabs(f.path) for f in found.files)
    a = next(f for f in found.files if f.path.endswith("a.mp4"))
    assert a.size == (root / "a.mp4").stat().st_size and a.mtime_ns == (root / "a.mp4").stat().st_mtime_ns


def test_probe_finds_video_without_a_signature(tmp_path: Path) -> None:
    """Unknown extension, no known signature: FFmpeg's probe decides; still images are not videos."""
    import av
    from PIL import Image

    ts = tmp_path / "clip.ts"
    with av.open(str(ts), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in solid_frames([(i * 20, 0, 0) for i in range(5)], 32, 32):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    root = tmp_path / "lib"
    root.mkdir()
    (root / "stream.dat").write_bytes(b"\x00" * 7 + ts.read_bytes())  # junk before the first sync byte
    assert sniff_container((root / "stream.dat").read_bytes()[:256]) is None
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "photo_png", format="PNG")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "photo_jpeg", format="JPEG")
    found = discover(root)
    assert [(Path(f.path).name, f.by) for f in found.files] == [("stream.dat", "probe")]
    assert found.skipped == 2


def test_content_id_follows_content_not_name(tmp_path: Path) -> None:
    a = write_video(tmp_path / "a.mp4", 5, width=32, height=32)
    b = tmp_path / "renamed.mp4"
    shutil.copy(a, b)
    c = write_video(tmp_path / "c.mp4", 6, width=32, height=32)
    assert content_id(str(a)) == content_id(str(b)) != content_id(str(c))
    assert len(content_id(str(a))) == 32
    import hashlib

    assert content_id(str(a)) == hashlib.sha256(a.read_bytes()).hexdigest()[:32]


def test_hash_cache_skips_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    write_video(root / "a.mp4", 5, width=32, height=32)
    write_video(root / "b.mp4", 6, width=32, height=32)
    files = discover(root).files
    first = hash_files(files, {})
    assert first.hashed == 2
    cached = {f.path: (f.size, f.mtime_ns, first.ids[f.path]) for f in files}
    calls: list[str] = []
    real = discover_mod.content_id
    monkeypatch.setattr(discover_mod, "content_id", lambda p: calls.append(p) or real(p))
    second = hash_files(files, cached)
    assert calls == [] and second.ids == first.ids and second.hashed == 0
    os.utime(root / "b.mp4", ns=(1, 1))  # touched: hashed again
    third = hash_files(discover(root).files, cached)
    assert calls == [str(root / "b.mp4")] and third.ids == first.ids


def test_unreadable_file_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    bad = write_video(root / "a.mp4", 5, width=32, height=32)
    good = write_video(root / "b.mp4", 6, width=32, height=32)
    real = discover_mod.content_id

    def content_id_denied(path: str) -> str:
        if path == str(bad):  # what open() raises on a file without read permission (tests run as root here)
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(discover_mod, "content_id", content_id_denied)
    result = hash_files(discover(root).files, {})
    assert [(f.path, kind) for f, kind, _ in result.failures] == [(str(bad), "PermissionError")]
    assert "Permission denied" in result.failures[0][2]
    assert list(result.ids) == [str(good)]


def test_symlinks_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    """A file link is followed only when it resolves inside the root (and outside the excluded folders);
    folder links are never followed, so a link cycle cannot loop."""
    outside = tmp_path / "lib_outside"  # shares the root's name as a string prefix
    outside.mkdir()
    foreign = write_video(outside / "foreign.mp4", 5, width=32, height=32)
    root = tmp_path / "lib"
    (root / "sub").mkdir(parents=True)
    a = write_video(root / "a.mp4", 5, width=32, height=32)
    (root / ".store").mkdir()
    stored = write_video(root / ".store" / "b.mp4", 6, width=32, height=32)
    exclude = root / "data"
    exclude.mkdir()
    write_video(exclude / "f.mp4", 7, width=32, height=32)

    (root / "out.mp4").symlink_to(foreign)  # absolute link out
    (root / "sub" / "rel_out.mp4").symlink_to(Path("..") / ".." / "lib_outside" / "foreign.mp4")
    (root / "hop.mp4").symlink_to(root / "sub" / "rel_out.mp4")  # inside, but the chain ends outside
    (root / "out_unknown").symlink_to(foreign)  # a link out with no video extension: not even read
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    (root / "to_data.mp4").symlink_to(exclude / "f.mp4")
    (root / "b.mp4").symlink_to(Path(".store") / "b.mp4")  # inside -> inside: followed
    (root / "sub" / "a_again.mp4").symlink_to(a)

    found = discover(root, exclude=[exclude])
    assert sorted(f.path for f in found.files) == [str(root / "a.mp4"), str(root / "b.mp4"),
                                                   str(root / "sub" / "a_again.mp4")]
    b = next(f for f in found.files if f.path.endswith("b.mp4"))
    assert b.size == stored.stat().st_size and b.mtime_ns == stored.stat().st_mtime_ns  # the target's
    assert sorted(found.outside) == sorted(str(root / n) for n in ("hop.mp4", "out.mp4", "out_unknown",
                                                                    "sub/rel_out.mp4", "to_data.mp4"))
    assert found.unreadable == []


def test_a_root_reached_through_a_symlink_keeps_its_paths(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "videos"
    real.mkdir(parents=True)
    write_video(real / "a.mp4", 5, width=32, height=32)
    (real / "b.mp4").symlink_to(real / "a.mp4")  # absolute, through the real folder: still inside
    link = tmp_path / "videos"
    link.symlink_to(real, target_is_directory=True)
    found = discover(link)
    assert [f.path for f in found.files] == [str(link / "a.mp4"), str(link / "b.mp4")]
    assert found.outside == []
