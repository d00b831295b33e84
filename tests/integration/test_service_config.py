"""Server configurations: API key, CORS, no QA checkpoint, no or empty index, overload, micro-batching."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import run_server, service_env  # noqa: E402,F401


def test_api_key_guards_everything_but_health_and_the_page(service_env):
    video_id = service_env.ids["red"]
    with run_server(service_env.settings(api_key="s3cret")) as live, httpx.Client(base_url=live.url) as c:
        calls = (("POST", "/search", {"query": "a"}), ("POST", "/qa", {"video_id": video_id, "question": "a"}),
                 ("GET", f"/videos/{video_id}", None), ("GET", f"/videos/{video_id}/stream", None),
                 ("GET", f"/videos/{video_id}/thumbnail", None), ("GET", "/stats", None), ("GET", "/metrics", None))
        for method, path, body in calls:
            r = c.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"] == "unauthorized"
            r = c.request(method, path, json=body, headers={"X-API-Key": "wrong"})
            assert r.status_code == 401, path
            r = c.request(method, path, json=body, headers={"X-API-Key": "s3cret"})
            assert r.status_code == 200, (path, r.text)
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200 and c.get("/static/style.css").status_code == 200
        # the page's <img> and <video> send the key as a cookie
        with httpx.Client(base_url=live.url, cookies={"alpro_api_key": "s3cret"}) as page:
            assert page.get(f"/videos/{video_id}/thumbnail").status_code == 200


# printable ASCII that a raw cookie, a URL or a form would mangle (space, + / = @ % ; " , backslash, and a %41
# that a second decoding would turn into "A"), and a key beyond ASCII
AWKWARD_KEY = 'a+b/c=d@e%f g~!;",\\x%41*\'()'
UNICODE_KEY = "clé-ключ-鍵"
JS_UNRESERVED_MARKS = "!*'()"  # what encodeURIComponent leaves as is beyond quote()'s letters, digits and -_.~


def page_cookie(key: str) -> dict[str, str]:
    """The Cookie header of the page's cookie (`encodeURIComponent(key)`)."""
    return {"Cookie": "alpro_api_key=" + quote(key, safe=JS_UNRESERVED_MARKS)}


@pytest.mark.parametrize("key", [AWKWARD_KEY, UNICODE_KEY], ids=["ascii", "unicode"])
def test_any_key_works_in_the_header_and_in_the_pages_cookie(service_env, key):
    video_id = service_env.ids["red"]
    with run_server(service_env.settings(api_key=key, qa_checkpoint=None)) as live, \
            httpx.Client(base_url=live.url) as c:
        calls = (("POST", "/search", {"query": "a"}), ("GET", f"/videos/{video_id}/thumbnail", None),
                 ("GET", f"/videos/{video_id}/stream", None), ("GET", "/stats", None))
        for method, path, body in calls:
            # the header carries the key's UTF-8 bytes as they are
            assert c.request(method, path, json=body, headers={"X-API-Key": key.encode()}).status_code == 200, path
            assert c.request(method, path, json=body, headers=page_cookie(key)).status_code == 200, path
            assert c.request(method, path, json=body, headers=page_cookie(key + "x")).status_code == 401, path
            # percent-decoded exactly once: a cookie that left "%" unencoded does not carry the key
            raw = {"Cookie": "alpro_api_key=" + quote(key, safe=JS_UNRESERVED_MARKS + "%")}
            if raw != page_cookie(key):
                assert c.request(method, path, json=body, headers=raw).status_code == 401, path
        r = c.get(f"/videos/{video_id}/thumbnail", headers=page_cookie(key))
        assert r.headers["content-type"].startswith("image/") and r.content


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "route-only"])
def test_the_first_of_duplicate_key_headers_counts_everywhere(service_env, fast_path):
    """Plain POST /search goes through the fast path, the others through the route: the same answers."""
    key = AWKWARD_KEY
    settings = service_env.settings(api_key=key, qa_checkpoint=None, search_fast_path=fast_path)
    with run_server(settings) as live, httpx.Client(base_url=live.url) as c:
        def statuses(*keys: str, cookie: str | None = None) -> set[int]:
            headers = [("X-API-Key", k.encode()) for k in keys] + (list(page_cookie(cookie).items()) if cookie else [])
            plain = c.post("/search", json={"query": "a"}, headers=headers)  # the fast path takes it
            routed = c.post("/search", content=b'{"query": "a"}',  # +json: only the route takes it
                            headers=headers + [("Content-Type", "application/alpro+json")])
            return {plain.status_code, routed.status_code, c.get("/stats", headers=headers).status_code}

        assert statuses(key, "wrong") == {200}
        assert statuses("wrong", key) == {401}
        # the header, when sent, decides; the cookie counts only without one
        assert statuses("wrong", cookie=key) == {401}
        assert statuses(key, cookie="wrong") == {200}
        assert statuses(cookie=key) == {200}


def test_cors_is_off_by_default_and_configurable(service_env):
    origin = {"Origin": "http://example.test"}
    with run_server(service_env.settings(qa_checkpoint=None)) as live, httpx.Client(base_url=live.url) as c:
        r = c.post("/search", json={"query": "a"}, headers=origin)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with run_server(service_env.settings(qa_checkpoint=None, cors_origins="http://example.test")) as live, \
            httpx.Client(base_url=live.url) as c:
        r = c.post("/search", json={"query": "a"}, headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://example.test"
        preflight = c.options("/search", headers={**origin, "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "content-type,x-api-key"})
        assert preflight.status_code == 200
        r = c.post("/search", json={"query": "a"}, headers={"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in r.headers


def test_qa_not_configured_is_501(service_env):
    with run_server(service_env.settings(qa_checkpoint=None)) as live, httpx.Client(base_url=live.url) as c:
        r = c.post("/qa", json={"video_id": service_env.ids["red"], "question": "what color?"})
        assert r.status_code == 501
        assert r.json()["error"] == "qa_not_configured" and "ALPRO_QA_CHECKPOINT" in r.json()["message"]
        assert c.get("/readyz").json()["qa"] is False


def test_no_index_yet_then_published(service_env, tmp_path):
    """Before the first publish: 503s with a message; the checkpoint and index load when it appears."""
    data = tmp_path / "data"
    data.mkdir()
    with run_server(service_env.settings(data, qa_checkpoint=None)) as live, httpx.Client(base_url=live.url) as c:
        r = c.post("/search", json={"query": "a"})
        assert r.status_code == 503 and r.json()["error"] == "index_unavailable"
        assert "alpro-index" in r.json()["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["reason"]
        assert c.get("/stats").status_code == 503  # no database yet either
        assert c.get("/healthz").status_code == 200
        writer = service_env.writer(data)
        writer.add_video(service_env.videos["red"])
        writer.publish()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the published index was not picked up"
            time.sleep(0.05)
        r = c.post("/search", json={"query": "a"})
        assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_empty_index_is_503(service_env, tmp_path):
    writer = service_env.writer(tmp_path / "data")
    writer.publish()
    with run_server(service_env.settings(tmp_path / "data", qa_checkpoint=None)) as live, \
            httpx.Client(base_url=live.url) as c:
        r = c.post("/search", json={"query": "a"})
        assert r.status_code == 503 and "empty" in r.json()["message"]
        assert c.get("/readyz").status_code == 503


def _slow_encoder(live, seconds: float, batches: list[int]):
    d = live.engine.retrieval.model.config.embed_dim

    def encode(texts):
        batches.append(len(texts))
        time.sleep(seconds)
        out = np.zeros((len(texts), d), np.float32)
        out[:, 0] = 1
        return out

    return encode


def test_overload_is_503_with_retry_after(service_env, monkeypatch):
    settings = service_env.settings(qa_checkpoint=None, max_queue=2, max_batch=1, retry_after_s=3)
    with run_server(settings) as live:
        monkeypatch.setattr(live.engine, "encode_texts", _slow_encoder(live, 0.2, []))

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=live.url, timeout=30) as c:
                return c.post("/search", json={"query": f"q{i}"})

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(one, range(12)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "3" and busy.json()["error"] == "overloaded"
        with httpx.Client(base_url=live.url) as c:
            assert "alpro_overload_rejections_total" in c.get("/metrics").text


def test_concurrent_queries_share_an_encoder_call(service_env, monkeypatch):
    settings = service_env.settings(qa_checkpoint=None, batch_window_ms=50, max_batch=16)
    batches: list[int] = []
    with run_server(settings) as live:
        monkeypatch.setattr(live.engine, "encode_texts", _slow_encoder(live, 0.05, batches))
        barrier = threading.Barrier(8)

        def one(i: int) -> int:
            with httpx.Client(base_url=live.url, timeout=30) as c:
                barrier.wait()
                return c.post("/search", json={"query": f"query {i}"}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(8))) == [200] * 8
    assert sum(batches) == 8 and max(batches) > 1, batches
