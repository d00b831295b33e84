"""PostgreSQL stops while alpro-serve runs: search keeps answering from the index, database routes answer
503 with Retry-After (never 500), and everything recovers without a restart when PostgreSQL is back."""

from __future__ import annotations

import time

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import index_videos, run_server, service_env  # noqa: E402,F401
from tests.postgres_server import PrivatePostgres, postgres_bindir  # noqa: E402
from tests.pg_server import PGVECTOR  # noqa: E402

pytestmark = [pytest.mark.skipif(postgres_bindir() is None, reason="needs PostgreSQL's binaries (CI installs them)"),
              # a Debian PostgreSQL without pgvector, stopped while FAISS keeps searching; on pgvector search
              # needs the database: test_pgvector_service.py::test_the_database_stopping_is_a_503_then_search_resumes
              pytest.mark.skipif(PGVECTOR, reason="its PostgreSQL has no pgvector; FAISS serves while it is down")]


@pytest.fixture
def postgres():
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()


def poll(what: str, check, deadline_s: float = 60.0):
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {deadline_s} s")
        time.sleep(0.1)


def test_postgres_stopping_is_a_pause_not_an_outage(service_env, postgres, tmp_path):
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    data = tmp_path / "data"
    summary = run_index(IndexSettings(videos_dir=service_env.root / "videos", data_dir=data,
                                      checkpoint=service_env.retrieval, database_url=postgres.url,
                                      segment_seconds=1.0, num_workers=0, progress=False))
    assert summary.published and summary.indexed == len(service_env.videos)
    settings = service_env.settings(data, database_url=postgres.url, qa_checkpoint=None)
    video_id = service_env.ids["red"]
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        before = c.post("/search", json={"query": "red"}).json()
        assert c.get(f"/videos/{video_id}").status_code == 200

        postgres.stop()
        during = c.post("/search", json={"query": "red"})
        assert during.status_code == 200, during.text  # the index version carries its rows
        assert [r["video_id"] for r in during.json()["results"]] == [r["video_id"] for r in before["results"]]
        for path in (f"/videos/{video_id}", "/stats", f"/videos/{video_id}/thumbnail"):
            r = c.get(path)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert int(r.headers["retry-after"]) >= 1 and "database" in r.json()["message"], path
        assert c.get("/healthz").status_code == 200

        postgres.start()  # back, without restarting the service
        poll("/videos/{id} after PostgreSQL is back", lambda: c.get(f"/videos/{video_id}").status_code == 200)
        assert c.get("/stats").json()["videos"] == len(service_env.videos)
        assert c.post("/search", json={"query": "red"}).status_code == 200


def test_postgres_stopping_during_an_index_run(service_env, postgres, tmp_path):
    """alpro-index exits non-zero saying the database is gone; the next run completes, nothing lost or doubled."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from sqlalchemy import create_engine, text

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(40):  # enough that the run is still going when the database stops
        shutil.copy(service_env.videos[list(service_env.videos)[i % 4]], videos / f"clip_{i:02d}.mp4")
        with open(videos / f"clip_{i:02d}.mp4", "ab") as f:
            f.write(bytes([i]) * 8)  # each file its own content (and id); trailing bytes do not hurt decoding
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    args = [str(Path(sys.executable).parent / "alpro-index"), str(videos), "--data-dir", str(tmp_path / "data"),
            "--checkpoint", str(service_env.retrieval), "--database-url", postgres.url, "--segment-seconds", "1",
            "--num-workers", "0", "--batch-size", "1", "--no-progress"]
    engine = create_engine(postgres.url)

    def recorded() -> int:
        try:
            with engine.connect() as connection:
                return connection.execute(text("SELECT count(*) FROM videos")).scalar_one()
        except Exception:  # noqa: BLE001 - tables not there yet
            return 0

    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poll("some videos recorded", lambda: recorded() >= 3 or proc.poll() is not None, 300)
    assert proc.poll() is None, "the run ended before the database could be stopped"
    engine.dispose()
    postgres.stop()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode not in (0, None), (proc.returncode, out, err)
    assert "database" in err.lower() and "Traceback" not in err, err

    postgres.start()
    again = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, path FROM videos")).all()
        segments = connection.execute(text("SELECT video_id, count(*) FROM segments GROUP BY video_id")).all()
    assert len(rows) == 40 and len({r.id for r in rows}) == 40
    assert sorted(Path(r.path).name for r in rows) == sorted(p.name for p in videos.iterdir())
    assert all(count == 2 for _, count in segments) and len(segments) == 40  # 2-second clips, 1-second moments
    engine.dispose()
