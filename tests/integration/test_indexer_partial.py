"""Files that decode only in part (truncated, garbage in the middle): the indexer embeds only the span that
decodes, never a repeated last frame, records the video as partial with the reason, counts it in the run
summary, and the service shows it in /videos/{id} and /stats. Old databases gain the columns on open."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import inspect, select, text

import model
from indexer.cli import format_summary
from store.layout import DataDir
from indexer.pipeline import RunSummary
from store.tables import Video, create_engine_for, init_db
from model.decode import decord_available
from tests.integration.test_decode import corrupt_frames, cut_before_frame
from tests.integration.test_indexer_support import main_json, read_state
from tests.integration.test_indexer_support import tiny_checkpoint  # noqa: F401
from tests.postgres_server import PrivatePostgres, postgres_bindir
from tests.video_factory import write_truncated, write_video

FPS, FRAMES = 10, 100  # the source: 10 s
CUT = 50  # the truncated copy keeps the data of frames [0, 50): 5.0 s
GARBAGE = (50, 60)  # the corrupted copy has garbage over the data of these frames (5.0 s to 6.0 s)
SEGMENT_S = 2.0
DECODERS = ["pyav", pytest.param("decord", marks=pytest.mark.skipif(not decord_available(),
                                                                     reason="decord not installed")), "auto"]
REASON = re.compile(r"^decodable to (\d+\.\d) s of (\d+\.\d) s: (.+)$")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("partial_sources")
    # key frames every second, the index at the front (as streamed files have it)
    whole = write_video(d / "whole.mp4", FRAMES, width=96, height=64, fps=FPS, faststart=True, gop=FPS)
    return {
        "whole": whole,
        "truncated": cut_before_frame(whole, d / "truncated.mp4", CUT),
        "corrupted": corrupt_frames(whole, d / "corrupted.mp4", *GARBAGE),
        # a cut in the middle of a frame's data: what keeping the first 60 % of the bytes gives
        "cut": write_truncated(whole, d / "cut.mp4", keep=0.6),
    }


def library(root: Path, sources: dict[str, Path], names) -> Path:
    root.mkdir(parents=True)
    for name in names:
        shutil.copy2(sources[name], root / sources[name].name)
    return root


def videos_by_name(data: Path) -> dict[str, Video]:
    datadir = DataDir(data)
    try:
        with datadir.session() as session:
            rows = list(session.scalars(select(Video)))
            for row in rows:
                row.bounds = [b for s in row.segments for b in (s.start_s, s.end_s)]  # start, end, start, ...
                session.expunge(row)
        return {Path(v.path).stem: v for v in rows}
    finally:
        datadir.dispose()


def decodable_s(video: Video) -> float:
    match = REASON.match(video.partial_reason or "")
    assert match, video.partial_reason
    assert float(match.group(2)) == pytest.approx(FRAMES / FPS)
    return float(match.group(1))


@pytest.mark.parametrize("decoder", DECODERS)
def test_partial_files_index_only_their_decodable_span(sources, tmp_path: Path, tiny_checkpoint: Path,  # noqa: F811
                                                      decoder: str, capsys) -> None:
    # decord cannot open a file cut inside a frame's data (it reads every packet on open): a failure there
    names = ["whole", "truncated", "corrupted"] + (["cut"] if decoder != "decord" else [])
    videos = library(tmp_path / "videos", sources, names)
    data = tmp_path / "data"
    code, summary, err = main_json([str(videos), "--data-dir", str(data), "--checkpoint", str(tiny_checkpoint),
                                    "--num-workers", "0", "--segment-seconds", str(SEGMENT_S),
                                    "--thumbnail-width", "32", "--decoder", decoder], capsys)
    assert code == 0, err[-3000:]
    assert summary["failed"] == 0, summary["failures"]  # partial files are indexed, not failures
    assert summary["indexed"] == len(names)
    rows = videos_by_name(data)

    # segments: the whole file's cover it; the others' only the span that decodes
    whole, truncated, corrupted = rows["whole"], rows["truncated"], rows["corrupted"]
    assert whole.bounds == pytest.approx([0.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 10.0])
    # the windows of the whole length, the one past the cut dropped, the one across it ending at the cut
    assert truncated.bounds == pytest.approx([0.0, 2.0, 2.0, 4.0, 4.0, CUT / FPS])
    assert max(corrupted.bounds) <= GARBAGE[1] / FPS
    if "cut" in rows:
        assert max(rows["cut"].bounds) < FRAMES / FPS - 1

    # recorded as partial, with the reason
    assert whole.partial is False and whole.partial_reason is None
    assert truncated.partial is True
    assert decodable_s(truncated) == pytest.approx(CUT / FPS)
    assert truncated.partial_reason.endswith("stream ends early")
    assert truncated.duration_s == pytest.approx(FRAMES / FPS)  # what the container says

    assert corrupted.partial is True
    span = decodable_s(corrupted)
    assert 0 < span <= GARBAGE[1] / FPS
    if decoder != "decord":  # PyAV (auto falls back to it) reads on to the garbage
        assert span >= GARBAGE[0] / FPS - 1.0
    # decord decodes ahead in a thread, so its error can surface some frames (even windows) before the
    # garbage, varying from run to run: it reports how far its reads got
    assert corrupted.bounds[-1] == pytest.approx(span, abs=0.05)
    assert all(start < span for start in corrupted.bounds[::2])
    assert not corrupted.partial_reason.endswith("stream ends early")  # the decoder's own message

    if "cut" in rows:
        cut = rows["cut"]
        assert cut.partial is True and 0 < decodable_s(cut) < FRAMES / FPS - 1
        assert cut.bounds[-1] == pytest.approx(decodable_s(cut), abs=0.05)

    # the run summary counts them
    assert summary["partial"] == len(names) - 1
    assert f"partial {len(names) - 1}" in format_summary(RunSummary(**summary))

    # every segment of the truncated file was embedded from its own window's real frames, none repeated from
    # before the cut into a later window
    net = model.load_pretrained(tiny_checkpoint)
    state = read_state(data)
    for index, (start, end) in enumerate(zip(truncated.bounds[::2], truncated.bounds[1::2])):
        clip = model.load_video(videos / "truncated.mp4", net.config, window=(start, end),
                                backend=None if decoder == "auto" else decoder)
        with torch.no_grad():
            expected = net.encode_video(clip[None])[0].numpy()
        np.testing.assert_allclose(state.vectors[(truncated.id, index)], expected, atol=1e-5)
    assert len([k for k in state.vectors if k[0] == truncated.id]) == 3


def test_service_shows_partial_videos(sources, tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:  # noqa: F811
    httpx = pytest.importorskip("httpx")
    from service.settings import Settings
    from tests.integration.test_service_support import run_server

    videos = library(tmp_path / "videos", sources, ["whole", "truncated"])
    data = tmp_path / "data"
    code, summary, err = main_json([str(videos), "--data-dir", str(data), "--checkpoint", str(tiny_checkpoint),
                                    "--num-workers", "0", "--segment-seconds", str(SEGMENT_S)], capsys)
    assert code == 0 and summary["partial"] == 1, err[-3000:]
    ids = {name: video.id for name, video in videos_by_name(data).items()}
    with run_server(Settings(data_dir=data, index_poll_s=0.1)) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        detail = client.get(f"/videos/{ids['truncated']}").json()
        assert detail["partial"] is True
        assert detail["partial_reason"] == "decodable to 5.0 s of 10.0 s: stream ends early"
        assert detail["segments"][-1]["end"] == pytest.approx(5.0)
        whole = client.get(f"/videos/{ids['whole']}").json()
        assert whole["partial"] is False and whole["partial_reason"] is None
        stats = client.get("/stats").json()
        assert stats["videos"] == 2 and stats["partial"] == 1
        openapi = client.get("/openapi.json").json()["components"]["schemas"]
        assert {"partial", "partial_reason"} <= set(openapi["VideoDetail"]["properties"])
        assert "partial" in openapi["StatsResponse"]["properties"]


# --- databases made before the columns existed ------------------------------------------------------------


def drop_partial_columns(url: str) -> None:
    """Turn a current database into one made before `partial` existed."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            for column in ("partial", "partial_reason"):
                conn.execute(text(f"ALTER TABLE videos DROP COLUMN {column}"))
        assert not {"partial", "partial_reason"} & {c["name"] for c in inspect(engine).get_columns("videos")}
    finally:
        engine.dispose()


def video_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Video.id)).scalars())


def _postgres_url():
    if postgres_bindir() is None:
        pytest.skip("needs PostgreSQL's binaries (CI installs them)")
    server = PrivatePostgres()
    return server, server.url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_old_database_gains_the_columns(sources, tmp_path: Path, tiny_checkpoint: Path, backend: str,  # noqa: F811
                                        capsys) -> None:
    from service.catalog import Catalog

    server = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'metadata.sqlite3'}"
    else:
        server, url = _postgres_url()
    try:
        videos = library(tmp_path / "videos", sources, ["whole"])
        data = tmp_path / "data"
        common = [str(videos), "--data-dir", str(data), "--checkpoint", str(tiny_checkpoint), "--num-workers", "0",
                  "--segment-seconds", str(SEGMENT_S), "--database-url", url]
        code, _, err = main_json(common, capsys)
        assert code == 0, err[-3000:]
        drop_partial_columns(url)

        # the service reads an old database as it is: the new fields are unknown, not an error
        engine = create_engine_for(url, create=False)
        catalog = Catalog(engine)
        (video_id,) = video_ids(engine)
        row = catalog.video(video_id)
        assert row is not None and row.get("partial") is None
        assert catalog.partial_count() == 0

        # the next indexer run adds the columns; old rows stay unknown, new rows are recorded
        shutil.copy2(sources["truncated"], videos / "truncated.mp4")
        code, summary, err = main_json(common, capsys)
        assert code == 0 and summary["indexed"] == 1 and summary["partial"] == 1, err[-3000:]
        assert {"partial", "partial_reason"} <= {c["name"] for c in inspect(engine).get_columns("videos")}
        init_db(engine)  # a second time changes nothing
        assert catalog.partial_count() == 1
        assert catalog.video(video_id)["partial"] is None
        rows = {Path(v["path"]).stem: v for v in map(catalog.video, video_ids(engine))}
        assert rows["truncated"]["partial"] is True
        assert rows["truncated"]["partial_reason"].startswith("decodable to 5.0 s of 10.0 s")
        engine.dispose()
    finally:
        if server is not None:
            server.close()
