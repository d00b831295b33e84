"""Index updates: the indexer publishes a new version while clients query; the server switches to it
without a restart and without failing a request."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import index_videos, make_videos, run_server, service_env  # noqa: E402,F401
from tests.pg_server import PGVECTOR  # noqa: E402

CLIENTS = 4
MAX_REQUESTS = 1000  # per client: bounded whatever happens
DEADLINE_S = 120  # and by time, in case indexing is slow on a busy machine
PAUSE_S = 0.005  # between a client's requests


def test_new_version_is_served_without_failing_requests(service_env, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("red", "blue"):
        shutil.copy(service_env.videos[name], videos / f"{name}.mp4")
    data = tmp_path / "data"
    assert index_videos(videos, data, service_env.retrieval) == 1
    settings = service_env.settings(data, qa_checkpoint=None, index_poll_s=0.05)
    green = service_env.ids["green"]
    published = threading.Event()
    log: list[list[tuple[int, set[str]]]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []

    def client(n: int) -> None:
        seen_new = 0
        deadline = time.monotonic() + DEADLINE_S
        with httpx.Client(base_url=live.url, timeout=30) as c:
            for i in range(MAX_REQUESTS):
                if time.monotonic() > deadline:
                    return
                time.sleep(PAUSE_S)
                body = {"query": f"client {n} request {i}", "top_k": 10, "rerank": 2 if n == 0 else False}
                try:
                    r = c.post("/search", json=body)
                except httpx.HTTPError as e:
                    failures.append(f"client {n}: {e!r}")
                    continue
                if r.status_code != 200:
                    failures.append(f"client {n}: {r.status_code} {r.text}")
                    continue
                payload = r.json()
                log[n].append((payload["index_version"], {h["video_id"] for h in payload["results"]}))
                if published.is_set() and payload["index_version"] == 2:
                    seen_new += 1
                    if seen_new >= 5:
                        return

    with run_server(settings) as live:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # queries in flight on version 1
        make_videos(videos, names=("green",))
        assert index_videos(videos, data, service_env.retrieval) == 2
        published.set()
        for t in threads:
            t.join(120)
        assert live.engine.index.version == 2
        with httpx.Client(base_url=live.url) as c:
            assert "alpro_index_swaps_total 1.0" in c.get("/metrics").text
            assert c.get("/stats").json()["index"]["version"] == 2

    assert not failures, failures[:5]
    for n, entries in enumerate(log):
        versions = [v for v, _ in entries]
        assert versions == sorted(versions), f"client {n} went back to an old version"
        assert versions[0] == 1 and versions[-1] == 2, (n, versions[:3], versions[-3:])
        for version, ids in entries:
            assert (green in ids) == (version == 2)
            assert len(ids) == (3 if version == 2 else 2)


def test_version_from_another_checkpoint_is_not_served(service_env, tmp_path):
    writer = service_env.writer(tmp_path / "data")
    writer.add_video(service_env.videos["red"])
    writer.publish()
    with run_server(service_env.settings(tmp_path / "data", qa_checkpoint=None)) as live, \
            httpx.Client(base_url=live.url) as c:
        writer.add_video(service_env.videos["blue"])
        writer.publish(fingerprint="0123456789abcdef")
        deadline = time.monotonic() + 30
        while c.get("/stats").json()["index_error"] is None:
            assert time.monotonic() < deadline, "the foreign version was not noticed"
            time.sleep(0.05)
        stats = c.get("/stats").json()
        assert stats["index"]["version"] == 1 and "version 2" in stats["index_error"]
        assert "0123456789abcdef" in stats["index_error"]
        r = c.post("/search", json={"query": "a"})
        assert r.status_code == 200 and r.json()["index_version"] == 1  # still serving the last good one
        writer.publish()  # a good version 3 is picked up again
        while c.post("/search", json={"query": "a"}).json()["index_version"] != 3:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert c.get("/stats").json()["index_error"] is None


@pytest.mark.skipif(PGVECTOR, reason="FAISS version directories, their leases and stored tokens (pgvector: "
                    "test_pgvector_store.py::test_retention_drops_old_versions_and_their_rows)")
def test_retention_keeps_the_version_a_service_still_serves(service_env, tmp_path):
    """A service held on version 1 (no swap) while three versions are published with keep_versions=1: its
    version's files stay, and re-ranking keeps reading its stored tokens instead of decoding videos."""
    from store.layout import DataDir
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(service_env.videos["red"], videos / "red.mp4")
    data = tmp_path / "data"

    def index() -> int:
        summary = run_index(IndexSettings(videos_dir=videos, data_dir=data, checkpoint=service_env.retrieval,
                                          segment_seconds=1.0, num_workers=0, progress=False, store_tokens=True,
                                          keep_versions=1))
        assert summary.published, summary.to_dict()
        return summary.index_version

    assert index() == 1
    settings = service_env.settings(data, qa_checkpoint=None, index_poll_s=3600)  # stays on version 1
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        for name in ("blue", "green", "yellow"):
            shutil.copy(service_env.videos[name], videos / f"{name}.mp4")
            index()
        assert DataDir(data).current_version() == 4
        assert 1 in DataDir(data).published_versions()  # kept for its reader
        r = c.post("/search", json={"query": "red", "top_k": 1, "rerank": True})
        assert r.status_code == 200 and r.json()["index_version"] == 1 and r.json()["reranked"] >= 1, r.text
        metrics = c.get("/metrics").text
        decoded = [line for line in metrics.splitlines() if line.startswith('alpro_stage_seconds_count{stage="decode"}')]
        assert decoded and float(decoded[0].split()[-1]) == 0, decoded  # stored tokens, no decoding
    # the service is gone: the next publish deletes version 1
    shutil.copy(service_env.videos["red"], videos / "red-again.mp4")
    with open(videos / "red-again.mp4", "ab") as f:
        f.write(b"another file")  # its own content id
    assert index() == 5
    assert DataDir(data).published_versions() == [5]
