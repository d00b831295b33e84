"""Bounded work per request on a long real video: past ALPRO_REQUEST_TIMEOUT_S a /qa gets a clear 504 in
time and its decode slot comes free; beyond ALPRO_MAX_DECODE_JOBS decodes, requests get 503 + Retry-After."""

from __future__ import annotations

import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import run_server, service_env  # noqa: E402,F401
from tests.pg_server import backend_settings  # noqa: E402
from tests.video_factory import write_video  # noqa: E402


def gauge(client: httpx.Client, name: str) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[-1])


@pytest.fixture(scope="module")
def long_library(service_env, tmp_path_factory):
    """Three 90-second 320x240 videos (real h264, a keyframe every 10 s), indexed."""
    from indexer.discover import content_id
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    root = tmp_path_factory.mktemp("long")
    (root / "videos").mkdir()
    paths = [write_video(root / "videos" / f"long_{i}.mp4", 90 * 25 + i, fps=25, gop=250) for i in range(3)]
    summary = run_index(IndexSettings(videos_dir=root / "videos", data_dir=root / "data",
                                      checkpoint=service_env.retrieval, segment_seconds=30.0, num_workers=0,
                                      progress=False, **backend_settings(root / "data")))
    assert summary.published and summary.indexed == 3, summary.to_dict()
    return root / "data", [content_id(str(p)) for p in paths]


def test_a_qa_past_its_deadline_gets_504_in_time_and_frees_its_worker(service_env, long_library):
    data, ids = long_library
    # far shorter than decoding any video takes (a seek and four frames: tens of milliseconds here)
    settings = service_env.settings(data, request_timeout_s=0.001, decode_workers=1, qa_cache_mb=0)
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        start = time.monotonic()
        r = c.post("/qa", json={"video_id": ids[0], "question": "what colour?"})
        took = time.monotonic() - start
        assert r.status_code == 504, r.text
        assert r.json()["error"] == "deadline_exceeded" and "ALPRO_REQUEST_TIMEOUT_S" in r.json()["message"]
        assert took < 5, took  # the deadline, not the decode, decided when the answer came
        deadline = time.monotonic() + 120
        while gauge(c, "alpro_decode_jobs") > 0:  # the started decode finishes its file, then its slot is free
            assert time.monotonic() < deadline, "the decode slot never came free"
            time.sleep(0.05)
        assert c.post("/search", json={"query": "a"}).status_code == 200
        assert gauge(c, "alpro_deadline_exceeded_total") == 1


def test_decodes_beyond_the_bound_are_refused_with_retry_after(service_env, long_library):
    data, ids = long_library
    settings = service_env.settings(data, request_timeout_s=120, decode_workers=1, max_decode_jobs=1, qa_cache_mb=0)
    statuses: list[tuple[int, str]] = []
    with run_server(settings) as live:
        barrier = threading.Barrier(len(ids))

        def ask(video_id: str) -> None:
            with httpx.Client(base_url=live.url, timeout=120) as c:
                barrier.wait()
                r = c.post("/qa", json={"video_id": video_id, "question": "what colour?"})
                statuses.append((r.status_code, r.headers.get("retry-after", "")))

        threads = [threading.Thread(target=ask, args=(v,)) for v in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    codes = sorted(code for code, _ in statuses)
    assert len(codes) == 3 and 200 in codes and 503 in codes, statuses  # one admitted at a time
    assert all(retry for code, retry in statuses if code == 503), statuses
