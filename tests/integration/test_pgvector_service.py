"""The service on the pgvector backend answers as on FAISS: the same library indexed by the real indexer with
each backend (ALPRO_VECTOR_STORE), two live servers, every /search (plain, filtered, paged, re-ranked) and
/videos response compared, scores within float tolerance. Then hot swap and a publish of a changed library."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_service_support import index_videos, make_videos, run_server, service_env  # noqa: F401
from tests.pg_server import PgvectorServer, database_for, pgvector_server

TOLERANCE = 1e-5  # cosines: float32 sums in another order
VOLATILE = {"took_ms", "timings", "index_version"}  # timing, and version numbering (each backend counts its own)


@pytest.fixture(scope="module")
def servers(service_env, tmp_path_factory):
    """The service env's videos indexed once per backend; a server on each."""
    pgvector_server()  # skips here where the wheel cannot run
    root = tmp_path_factory.mktemp("parity")
    faiss_dir, pg_dir = root / "faiss", root / "pgvector"
    videos = service_env.root / "videos"
    index_videos(videos, faiss_dir, service_env.retrieval, vector_store="faiss", database_url=None)
    index_videos(videos, pg_dir, service_env.retrieval, vector_store="pgvector", database_url=database_for(pg_dir))
    faiss_settings = service_env.settings(faiss_dir, vector_store="faiss", database_url=None)
    pg_settings = service_env.settings(pg_dir, vector_store="pgvector", database_url=database_for(pg_dir))
    with run_server(faiss_settings) as faiss_live, run_server(pg_settings) as pg_live, \
            httpx.Client(base_url=faiss_live.url, timeout=120) as faiss_client, \
            httpx.Client(base_url=pg_live.url, timeout=120) as pg_client:
        yield faiss_client, pg_client, pg_live


def assert_same(a, b, where: str = "") -> None:
    """Equal JSON, floats within TOLERANCE, volatile keys ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key not in VOLATILE:
                assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=TOLERANCE), where
    else:
        assert a == b, where


def canonical(response: dict) -> dict:
    """A search response with exact ties resolved one way. The videos here are one colour each, so a video's
    segments have the same vector and score: which of them is the best moment, and the order of equal moments,
    is the backend's choice (FAISS's heap, PostgreSQL's sort). Each result shows its tied moment of the lowest
    segment index, and moments are ordered by similarity, then segment index."""
    out = dict(response)
    results = []
    for hit in response.get("results", []):
        hit = dict(hit)
        moments = sorted(hit["moments"], key=lambda m: (-round(m["similarity"] / TOLERANCE), m["segment_index"]))
        tied = [m for m in moments if abs(m["similarity"] - hit["vtc_score"]) <= TOLERANCE]
        best = min(tied, key=lambda m: m["segment_index"], default=None)
        if best is not None and best["segment_index"] != hit["segment_index"]:
            hit.update(segment_index=best["segment_index"], start=best["start"], end=best["end"])
            if hit["thumbnail_url"] is not None:
                hit["thumbnail_url"] = f"/videos/{hit['video_id']}/segments/{best['segment_index']}/thumbnail"
        hit["moments"] = moments
        results.append(hit)
    out["results"] = results
    return out


def searches(service_env) -> list[dict]:
    videos = str(service_env.root / "videos")
    red = str(service_env.videos["red"])
    return [
        {"query": "a red video", "top_k": 4},
        {"query": "blue", "top_k": 2},
        {"query": "green grass", "top_k": 10},
        {"query": "yellow", "top_k": 2, "offset": 1},
        {"query": "something", "top_k": 4, "filters": {"path_prefix": videos}},
        {"query": "something", "top_k": 4, "filters": {"path_prefix": videos + "/"}},
        {"query": "something", "top_k": 4, "filters": {"path_prefix": red}},
        {"query": "something", "top_k": 4, "filters": {"path_prefix": videos[:-1]}},  # not a folder of any video
        {"query": "a long one", "top_k": 4, "filters": {"min_duration": 1.5}},
        {"query": "a short one", "top_k": 4, "filters": {"max_duration": 1.0}},
        {"query": "red", "top_k": 3, "rerank": True},
        {"query": "blue", "top_k": 2, "rerank": 3},
    ]


def test_every_search_answers_as_on_faiss(servers, service_env):
    faiss_client, pg_client, _ = servers
    for body in searches(service_env):
        a, b = faiss_client.post("/search", json=body), pg_client.post("/search", json=body)
        assert a.status_code == b.status_code == 200, (body, a.text, b.text)
        assert_same(canonical(a.json()), canonical(b.json()), str(body))


def test_paging_by_cursor_answers_as_on_faiss(servers):
    faiss_client, pg_client, _ = servers
    pages = []
    for client in (faiss_client, pg_client):
        body, seen = {"query": "a colourful video", "top_k": 1}, []
        while True:
            page = client.post("/search", json=body).json()
            seen.append(canonical(page))
            if page["next_cursor"] is None:
                break
            body = {**body, "cursor": page["next_cursor"]}
        pages.append(seen)
    assert len(pages[0]) == 4
    assert_same(pages[0], pages[1])


def test_video_detail_and_listing_answer_as_on_faiss(servers, service_env):
    faiss_client, pg_client, _ = servers
    for video_id in service_env.ids.values():
        a, b = faiss_client.get(f"/videos/{video_id}"), pg_client.get(f"/videos/{video_id}")
        assert a.status_code == b.status_code == 200
        assert_same({k: v for k, v in a.json().items() if k != "indexed_at"},
                    {k: v for k, v in b.json().items() if k != "indexed_at"}, video_id)
    a, b = faiss_client.get("/videos", params={"sort": "path"}), pg_client.get("/videos", params={"sort": "path"})
    strip = lambda page: [{k: v for k, v in video.items() if k != "indexed_at"} for video in page["videos"]]  # noqa: E731
    assert_same(strip(a.json()), strip(b.json()))


def test_stats_describe_the_pgvector_version(servers):
    _, pg_client, live = servers
    stats = pg_client.get("/stats").json()
    assert stats["index"]["num_vectors"] == 8 and stats["index"]["index_type"] == "flat"
    assert stats["index"]["recall_at_10"] == 1.0 and stats["index"]["has_tokens"] is False
    assert type(live.engine.index).__name__ == "PgIndexHolder"


def test_a_new_version_is_served_without_a_restart(service_env, tmp_path):
    """Hot swap by noticing the published version row; an incremental publish (+1 video, -1 video)."""
    pgvector_server()
    videos = tmp_path / "videos"
    make_videos(videos, ("red", "blue"))
    data = tmp_path / "data"
    url = database_for(data)
    assert index_videos(videos, data, service_env.retrieval, vector_store="pgvector", database_url=url) == 1
    settings = service_env.settings(data, vector_store="pgvector", database_url=url, qa_checkpoint=None,
                                    index_poll_s=0.05)
    with run_server(settings) as live, httpx.Client(base_url=live.url) as client:
        first = client.post("/search", json={"query": "red", "top_k": 5}).json()
        assert sorted(Path(h["path"]).stem for h in first["results"]) == ["blue", "red"]
        make_videos(videos, ("green",))
        (videos / "blue.mp4").unlink()
        assert index_videos(videos, data, service_env.retrieval, vector_store="pgvector", database_url=url,
                            prune=True) == 2
        deadline = time.monotonic() + 30
        while live.engine.index.version != 2:
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.05)
        second = client.post("/search", json={"query": "red", "top_k": 5}).json()
        assert second["index_version"] == 2
        assert sorted(Path(h["path"]).stem for h in second["results"]) == ["green", "red"]
    shutil.rmtree(videos)


def test_the_database_stopping_is_a_503_then_search_resumes(service_env, tmp_path):
    """On pgvector the database is on the search path: while it is down a search is a 503 that says to retry
    (database_unavailable), the server stays up, and search resumes once the database is back."""
    pgvector_server()  # skips where the wheel cannot run
    own = PgvectorServer()  # a server of this test's own: the session's keeps serving the other tests
    try:
        url = own.create_database("faults")
        data = tmp_path / "data"
        index_videos(service_env.root / "videos", data, service_env.retrieval, vector_store="pgvector",
                     database_url=url)
        settings = service_env.settings(data, vector_store="pgvector", database_url=url, qa_checkpoint=None)
        body = {"query": "red", "top_k": 2}
        with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as client:
            assert client.post("/search", json=body).status_code == 200
            own.stop()
            down = client.post("/search", json=body)
            assert down.status_code == 503 and down.json()["error"] == "database_unavailable", down.text
            assert down.headers["Retry-After"] == "1"
            assert client.get("/healthz").status_code == 200
            own.start()
            deadline = time.monotonic() + 30
            while (r := client.post("/search", json=body)).status_code != 200:  # pooled connections renew
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
                time.sleep(0.2)
            assert len(r.json()["results"]) == 2
    finally:
        own.close()
