"""Browser previews made at index time, on real files: which videos get one under each policy, what a preview
is (H.264/AAC MP4, <= 360 px high, the whole video, second t showing the indexer's second t), incremental
runs that remake nothing, failures and crashes that cost the preview only, and older data dirs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from sqlalchemy import inspect, select, text

import model
from indexer.cli import format_summary
from indexer.pipeline import run_index
from indexer.preview import (PreviewError, PreviewJob, browser_playable, make_preview, preview_size,
                             remove_temporaries)
from indexer.previewer import run_jobs
from indexer.settings import build_parser, settings_from
from store.layout import ROWS_DIR, DataDir
from store.tables import Failure, Video, add_missing_columns, create_engine_for, init_db
from tests.integration.test_indexer_support import ROOT, settings_for
from tests.integration.test_indexer_support import tiny_checkpoint  # noqa: F401
from tests.video_factory import read_frame_index, write_truncated, write_video

MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
FPS = 30


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("preview_sources")
    avi = write_video(d / "clip.avi", 3 * FPS, "mpeg4", width=96, height=64, audio="mp3")
    return {
        "avi": avi,  # MPEG-4 part 2 with MP3 audio in AVI: no browser plays it
        # HEVC 640x480 whose video starts 1 s after its audio (start_time != 0), AAC audio
        "hevc": write_video(d / "hevc.mp4", 2 * FPS, "hevc", width=640, height=480, audio="aac", start_s=1.0, gop=15),
        "h264": write_video(d / "clip.mp4", 2 * FPS, "h264", width=64, height=48),  # plays as it is
        "partial": write_truncated(write_video(d / "whole.avi", 4 * FPS, "mpeg4", width=64, height=48),
                                   d / "partial.avi", keep=0.5),
    }


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path) -> model.AlproModel:  # noqa: F811
    return model.load_pretrained(tiny_checkpoint)


def library(root: Path, sources: dict[str, Path], names: list[str], broken: bool = False) -> Path:
    root.mkdir(parents=True)
    for name in names:
        shutil.copy2(sources[name], root / sources[name].name)
    if broken:
        (root / "broken.avi").write_bytes(np.random.default_rng(1).integers(0, 256, 20000, np.uint8).tobytes())
    return root


def videos_by_name(data: Path) -> dict[str, Video]:
    datadir = DataDir(data)
    try:
        with datadir.session() as session:
            return {Path(v.path).name: v for v in session.scalars(select(Video))}
    finally:
        datadir.dispose()


def preview_files(data: Path) -> dict[str, int]:
    """Every file under previews/ (temporaries included) -> mtime_ns."""
    return {str(p.relative_to(data)): p.stat().st_mtime_ns for p in (data / "previews").rglob("*") if p.is_file()}


def decoded_indices(path: Path) -> list[tuple[float, int]]:
    """(time in s, frame index coded in the picture) of every frame of a file's video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = None
        out = []
        for frame in container.decode(stream):
            origin = frame.time if origin is None else origin
            out.append((frame.time - origin, read_frame_index(frame.to_ndarray(format="rgb24"))))
    return out


def describe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        return {"format": container.format.name, "video": video.codec_context.name, "width": video.codec_context.width,
                "height": video.codec_context.height, "fps": float(video.average_rate),
                "audio": audio.codec_context.name if audio else None,
                "channels": audio.codec_context.channels if audio else None,
                "duration": container.duration / av.time_base}


def assert_same_moments(preview: Path, fps: float = FPS) -> None:
    """Second t of the preview shows frame t * fps of the source (the indexer's frame index), within a frame."""
    frames = decoded_indices(preview)
    assert frames[0] == (0.0, 0)
    off = [(t, i) for t, i in frames if abs(i - t * fps) > 1.01]
    assert not off, off[:5]


# --- what plays, what a preview is ------------------------------------------------------------------------


def test_browser_playable(sources: dict[str, Path], tmp_path: Path) -> None:
    assert browser_playable(sources["h264"]) == (True, "h264 (no audio) in .mp4")
    assert not browser_playable(sources["avi"])[0]
    playable, reason = browser_playable(sources["hevc"])
    assert not playable and "hevc" in reason
    webm = write_video(tmp_path / "clip.webm", 10, "vp9", width=64, height=48, audio="libopus")
    assert browser_playable(webm) == (True, "vp9 (opus) in .webm")
    # the extension names the media type a browser is told: the same H.264 as .mkv or .webm does not play
    for name in ("clip.mkv", "renamed.webm"):
        shutil.copy(sources["h264"], tmp_path / name)
        assert not browser_playable(tmp_path / name)[0], name
    for codec, suffix in (("mpeg2", ".mpg"), ("wmv", ".wmv"), ("prores", ".mov")):
        assert not browser_playable(write_video(tmp_path / f"x{suffix}", 5, codec, width=64, height=48))[0], codec
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\0" * 5000)
    assert browser_playable(garbage)[0] is False


def test_preview_size() -> None:
    assert preview_size(640, 480, None, 360) == (480, 360)
    assert preview_size(96, 64, None, 360) == (96, 64)  # never upscaled
    assert preview_size(720, 480, Fraction(32, 27), 360) == (640, 360)  # anamorphic DVD
    assert preview_size(101, 75, None, 360) == (100, 74)  # even sides, aspect kept


def test_fps_is_capped_and_time_kept(tmp_path: Path) -> None:
    src = write_video(tmp_path / "fast.mkv", 120, "mpeg4", width=64, height=48, fps=60)
    preview = make_preview(src, tmp_path / "fast.mp4")
    info = describe(preview.path)
    assert info["fps"] == 30 and preview.frames == 60 and abs(preview.duration_s - 2.0) < 1e-6
    assert_same_moments(preview.path, fps=60)  # preview frame j shows source frame 2j
    assert list(tmp_path.glob("*.tmp-*")) == []


def test_a_file_that_does_not_decode_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF" + bytes(4000))
    with pytest.raises(PreviewError):
        make_preview(bad, tmp_path / "bad.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.avi"]


# --- the indexer ------------------------------------------------------------------------------------------


def test_auto_previews_then_nothing_new(sources: dict[str, Path], tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                        tiny_model) -> None:
    videos = library(tmp_path / "videos", sources, ["avi", "hevc", "h264", "partial"], broken=True)
    data = tmp_path / "data"
    settings = settings_for(videos, data, tiny_checkpoint)
    first = run_index(settings, model=tiny_model)
    assert first.indexed == 4 and first.failed == 1
    assert first.previews_made == 3 and first.previews_failed == 0
    rows = videos_by_name(data)
    datadir = DataDir(data)
    for name in ("clip.avi", "hevc.mp4", "partial.avi"):
        video = rows[name]
        path = datadir.preview_path(video.id)
        assert path == data / "previews" / video.id[:2] / f"{video.id}.mp4"
        assert video.preview_bytes == path.stat().st_size and video.preview_error is None
        assert video.playable is False
        info = describe(path)
        assert (info["format"], info["video"]) == (MP4_FORMAT, "h264") and info["height"] <= 360
        if name != "partial.avi":
            assert abs(info["duration"] - video.duration_s) < 0.1, (name, info, video.duration_s)
            assert (info["audio"], info["channels"]) == ("aac", 2)
            assert_same_moments(path)
    assert describe(datadir.preview_path(rows["hevc.mp4"].id))[("width")] == 480  # 640x480 -> 480x360
    assert (rows["clip.avi"].container, rows["hevc.mp4"].container) == ("avi", MP4_FORMAT)
    assert describe(datadir.preview_path(rows["partial.avi"].id))["duration"] < 3.0  # what decodes of 4 s
    # the H.264 MP4 plays as it is
    plays = rows["clip.mp4"]
    assert (plays.playable, plays.preview_bytes, plays.container) == (True, None, MP4_FORMAT)
    assert not datadir.preview_path(plays.id).exists()
    # the corrupt file: a recorded failure, and no preview of anything but the three
    with datadir.session() as session:
        assert [Path(f.path).name for f in session.scalars(select(Failure))] == ["broken.avi"]
    made = preview_files(data)
    assert len(made) == 3 and not any(".tmp-" in p for p in made)
    # the published rows say which hits have a preview
    with datadir.open_index() as snapshot:
        flags = {(r.video_id, r.preview) for r in snapshot.segment_rows(snapshot.segment_ids())}
    assert flags == {(v.id, v.preview_bytes is not None) for v in rows.values()}
    datadir.dispose()
    assert f"previews: 3 made ({first.preview_bytes / 1e6:.1f} MB)" in format_summary(first)
    assert first.to_dict()["previews_made"] == 3 and first.timings["previews"] > 0

    second = run_index(settings, model=tiny_model)
    assert (second.previews_made, second.decoded, second.published) == (0, 0, False)
    assert second.index_version == first.index_version
    assert preview_files(data) == made  # nothing rewritten
    assert "previews:" not in format_summary(second)

    # asking for every video: the MP4 too, nothing embedded again, the others untouched
    third = run_index(settings_for(videos, data, tiny_checkpoint, previews="all"), model=tiny_model)
    assert (third.previews_made, third.decoded, third.indexed, third.published) == (1, 0, 0, True)
    after = preview_files(data)
    assert len(after) == 4 and {p: after[p] for p in made} == made
    datadir = DataDir(data)
    with datadir.open_index() as snapshot:
        assert all(r.preview for r in snapshot.segment_rows(snapshot.segment_ids()))
    datadir.dispose()

    # a video that leaves the index takes its preview along
    (videos / "clip.avi").unlink()
    run_index(settings_for(videos, data, tiny_checkpoint, prune=True), model=tiny_model)
    assert not DataDir(data).preview_path(rows["clip.avi"].id).exists() and len(preview_files(data)) == 3


def test_off_then_auto_previews_without_reembedding(sources: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                    tiny_checkpoint: Path, tiny_model) -> None:  # noqa: F811
    videos = library(tmp_path / "videos", sources, ["avi", "h264"])
    data = tmp_path / "data"
    off = run_index(settings_for(videos, data, tiny_checkpoint, previews="off"), model=tiny_model)
    assert off.indexed == 2 and off.previews_made == 0
    assert not (data / "previews").exists()
    rows = videos_by_name(data)
    assert {(v.container, v.playable, v.preview_bytes) for v in rows.values()} == {("", None, None)}  # not probed

    # as a data dir indexed before previews existed: the next run under auto makes the missing one only
    auto = run_index(settings_for(videos, data, tiny_checkpoint), model=tiny_model)
    assert (auto.previews_made, auto.decoded, auto.indexed, auto.published) == (1, 0, 0, True)
    assert auto.index_version == off.index_version + 1  # same vectors, rows with the preview flag
    rows = videos_by_name(data)
    assert rows["clip.avi"].preview_bytes > 0 and rows["clip.mp4"].preview_bytes is None
    assert rows["clip.mp4"].playable is True

    # a preview deleted by hand is made again (and forgotten under off)
    DataDir(data).preview_path(rows["clip.avi"].id).unlink()
    again = run_index(settings_for(videos, data, tiny_checkpoint), model=tiny_model)
    assert again.previews_made == 1 and DataDir(data).preview_path(rows["clip.avi"].id).is_file()


def test_failed_preview_costs_the_preview_only(sources: dict[str, Path], tmp_path: Path,  # noqa: F811
                                               tiny_checkpoint: Path, tiny_model, monkeypatch) -> None:  # noqa: F811
    import indexer.preview

    videos = library(tmp_path / "videos", sources, ["avi"])
    data = tmp_path / "data"

    def broken(self, out):
        raise av.error.InvalidDataError(-1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(indexer.preview._Transcoder, "run", broken)
    summary = run_index(settings_for(videos, data, tiny_checkpoint), model=tiny_model)
    assert summary.indexed == 1 and summary.failed == 0 and summary.previews_failed == 1
    (video,) = videos_by_name(data).values()
    assert video.preview_bytes is None and "Invalid data" in video.preview_error
    assert preview_files(data) == {}
    monkeypatch.undo()
    # not retried unless asked
    assert run_index(settings_for(videos, data, tiny_checkpoint), model=tiny_model).previews_made == 0
    retried = run_index(settings_for(videos, data, tiny_checkpoint, retry_failed=True), model=tiny_model)
    assert retried.previews_made == 1 and retried.previews_failed == 0
    (video,) = videos_by_name(data).values()
    assert video.preview_bytes > 0 and video.preview_error is None


def test_killed_mid_preview_leaves_no_half_file(sources: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "previews" / "ab" / "abcd.mp4"
    target.parent.mkdir(parents=True)
    # a transcoder slowed down to 20 frames a second, SIGKILLed once its temporary file exists
    script = textwrap.dedent(f"""
        import time, indexer.preview as p
        real = p._Transcoder._put_video
        def slow(self, frame):
            time.sleep(0.05)
            return real(self, frame)
        p._Transcoder._put_video = slow
        p.make_preview({str(sources['avi'])!r}, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not list(target.parent.glob("*.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # never a half file under the final name
    assert len(list(target.parent.glob("abcd.mp4.tmp-*"))) == 1
    assert remove_temporaries(tmp_path / "previews") == 1  # what the next run does first
    assert list(target.parent.iterdir()) == []


CRASHING_WORK = '''
import os
from indexer.preview import PreviewOutcome

def work(job):
    if job.video_id == "crash":
        os._exit(3)
    return PreviewOutcome(job.video_id, "avi", False, 123)
'''


def test_a_dying_worker_costs_its_own_preview_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "crashing_work.py").write_text(CRASHING_WORK)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this process's sys.path
    import crashing_work

    jobs = [PreviewJob(video_id, f"/v/{video_id}.avi", f"/p/{video_id}.mp4", "auto", 360)
            for video_id in ("a", "crash", "b", "c")]
    outcomes = {o.video_id: o for o in run_jobs(jobs, 2, crashing_work.work)}
    assert set(outcomes) == {"a", "crash", "b", "c"}
    assert outcomes["crash"].error and outcomes["crash"].preview_bytes is None
    assert all(outcomes[v].preview_bytes == 123 and outcomes[v].error is None for v in "abc")


# --- settings, the CLI, older data dirs -------------------------------------------------------------------


def test_settings(tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    base = [str(tmp_path), "--data-dir", str(tmp_path / "d"), "--checkpoint", str(tiny_checkpoint)]
    parse = lambda *extra: settings_from(build_parser().parse_args([*base, *extra]))  # noqa: E731
    assert (parse().previews, parse().preview_height) == ("auto", 360)
    monkeypatch.setenv("ALPRO_PREVIEWS", "all")
    monkeypatch.setenv("ALPRO_PREVIEW_HEIGHT", "")  # empty: unset
    assert (parse().previews, parse().preview_height) == ("all", 360)
    assert parse("--previews", "off", "--preview-height", "240").previews == "off"
    assert parse("--preview-height", "240").preview_height == 240
    monkeypatch.setenv("ALPRO_PREVIEWS", "sometimes")
    with pytest.raises(ValueError, match="ALPRO_PREVIEWS"):
        parse()


def test_cli_with_worker_processes_and_an_older_data_dir(sources: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                         tiny_checkpoint: Path, capsys) -> None:  # noqa: F811
    from tests.integration.test_indexer_support import main_json

    videos = library(tmp_path / "videos", sources, ["avi", "h264"])
    data = tmp_path / "data"
    common = [str(videos), "--data-dir", str(data), "--checkpoint", str(tiny_checkpoint), "--num-workers", "1",
              "--previews", "off"]
    code, summary, err = main_json(common, capsys)
    assert code == 0 and summary["previews_made"] == 0, err[-3000:]
    # as made before previews existed: no preview columns in the database, no preview column in the version
    url = f"sqlite:///{data / 'metadata.sqlite3'}"
    engine = create_engine_for(url)
    with engine.begin() as conn:
        for column in ("container", "playable", "preview_bytes", "preview_error"):
            conn.execute(text(f"ALTER TABLE videos DROP COLUMN {column}"))
    for part in DataDir(data).read_manifest(summary["index_version"]).parts:
        (data / "index" / part / ROWS_DIR / "preview.npy").unlink()
    with DataDir(data).open_index() as snapshot:  # an older version reads as "no previews"
        assert not any(r.preview for r in snapshot.segment_rows(snapshot.segment_ids()))

    code, summary, err = main_json(common[:-1] + ["all", "--preview-height", "32"], capsys)
    assert code == 0 and summary["previews_made"] == 2 and summary["preview_bytes"] > 0, err[-3000:]
    assert summary["decoded"] == 0 and summary["published"]
    assert {"container", "playable", "preview_bytes", "preview_error"} <= {
        c["name"] for c in inspect(engine).get_columns("videos")}
    engine.dispose()
    rows = videos_by_name(data)
    assert all(describe(DataDir(data).preview_path(v.id))["height"] == 32 for v in rows.values())
    with DataDir(data).open_index() as snapshot:
        assert all(r.preview for r in snapshot.segment_rows(snapshot.segment_ids()))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_older_database_gains_the_preview_columns(tmp_path: Path, backend: str) -> None:
    from tests.postgres_server import PrivatePostgres, postgres_bindir

    server = None
    if backend == "postgresql":
        if postgres_bindir() is None:
            pytest.skip("needs PostgreSQL's binaries (CI installs them)")
        server = PrivatePostgres()
    url = server.url if server else f"sqlite:///{tmp_path / 'metadata.sqlite3'}"
    try:
        engine = create_engine_for(url)
        init_db(engine)
        columns = ("container", "playable", "preview_bytes", "preview_error")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO videos (id, path, size_bytes, mtime, duration_s, fps, width, height, "
                              "num_frames, indexed_at, checkpoint_fingerprint, pipeline_key, codec) VALUES "
                              "('a', '/v/a.avi', 1, 1, 1, 1, 1, 1, 1, '2024-01-01', 'f', 'k', 'mpeg4')"))
            for column in columns:
                conn.execute(text(f"ALTER TABLE videos DROP COLUMN {column}"))
        assert sorted(add_missing_columns(engine)) == sorted(f"videos.{c}" for c in columns)
        with engine.connect() as conn:  # the old row: not probed, no preview
            assert conn.execute(text(f"SELECT {', '.join(columns)} FROM videos")).one() == ("", None, None, None)
        assert add_missing_columns(engine) == []
        engine.dispose()
    finally:
        if server is not None:
            server.close()
