"""The real server (uvicorn on 127.0.0.1) over a data dir of real h264 videos, called over HTTP with httpx."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")

from store.layout import ROWS_DIR, DataDir  # noqa: E402
from store.rows import KEY_COLUMNS  # noqa: E402
from model import Tokenizer, load_pretrained, load_video  # noqa: E402
from service import schemas  # noqa: E402
from tests.integration.test_service_support import QA_ANSWERS, run_server, service_env  # noqa: E402,F401
from tests.pg_server import PGVECTOR  # noqa: E402


@pytest.fixture(scope="module")
def server(service_env):
    with run_server(service_env.settings()) as live:
        yield live


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# --- search ---------------------------------------------------------------------------------------


def test_search_returns_one_result_per_video(client, service_env):
    r = client.post("/search", json={"query": "a red square", "top_k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert {hit["video_id"] for hit in results} == set(service_env.ids.values())
    assert len(results) == len(service_env.ids)  # grouped: each video once, at its best moment
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    hit = results[0]
    assert hit["path"].endswith(".mp4") and hit["name"] == hit["path"].rsplit("/", 1)[-1]
    assert 0 <= hit["start"] < hit["end"] <= 2.0 + 1e-6
    assert hit["thumbnail_url"].startswith(f"/videos/{hit['video_id']}/segments/")
    assert hit["stream_url"] == f"/videos/{hit['video_id']}/stream"
    assert hit["vtm_score"] is None and hit["scored_by"] == "vtc"
    assert hit["score"] == pytest.approx((1 + hit["vtc_score"]) / 2)  # relevance in [0, 1]
    assert body["index_version"] == 1 and body["took_ms"] > 0 and body["next_cursor"] is None
    assert set(body["timings"]) == {"encode_ms", "faiss_ms", "db_ms", "rerank_ms"}


def test_search_scores_are_the_model_cosines(client, service_env):
    """The similarity of a moment is the cosine of the query and segment embeddings the checkpoint makes."""
    model = load_pretrained(service_env.retrieval)
    tok = Tokenizer.from_config(model.config)
    r = client.post("/search", json={"query": "something blue moves", "top_k": 1})
    hit = r.json()["results"][0]
    with torch.inference_mode():
        text = model.encode_text(*tok(["something blue moves"]))[0]
        clip = load_video(hit["path"], model.config, window=(hit["start"], hit["end"]))
        video = model.encode_video(clip[None])[0]
    assert hit["vtc_score"] == pytest.approx(float(text @ video), abs=1e-4)


def _without_row_columns(data: Path, dest: Path) -> Path:
    """A copy of a data dir whose current version lacks the row columns (as versions written before them)."""
    shutil.copytree(data, dest)
    for part in DataDir(dest).read_manifest().parts:
        for column in (dest / "index" / part / ROWS_DIR).glob("*.npy"):
            if column.stem not in KEY_COLUMNS:
                column.unlink()
    return dest


@pytest.mark.skipif(PGVECTOR, reason="FAISS version files without row columns; pgvector rows are always in SQL")
def test_rows_come_from_the_index_version_or_the_database(client, service_env, tmp_path):
    """Search shows the same rows from the version's copy (no DB round trip) and from the DB (older versions,
    where shown rows are cached)."""
    queries = [{"query": "a red square", "top_k": 4}, {"query": "a shape", "top_k": 2, "offset": 1},
               {"query": "something blue", "top_k": 3, "filters": {"path_prefix": str(service_env.root)}}]
    from_index = [client.post("/search", json=q).json() for q in queries]
    assert all(r["timings"]["db_ms"] == 0 for r in from_index)
    old_format = _without_row_columns(service_env.data, tmp_path / "data")
    with run_server(service_env.settings(old_format)) as live, httpx.Client(base_url=live.url) as c:
        from_db = [c.post("/search", json=q).json() for q in queries]
        again = c.post("/search", json=queries[0]).json()
        metrics = c.get("/metrics").text
    assert from_db[0]["timings"]["db_ms"] > 0 and again["timings"]["db_ms"] == 0  # the first reads the DB
    assert [r["results"] for r in from_db] == [r["results"] for r in from_index] and again["results"] == \
        from_db[0]["results"]
    hits = re.search(r'alpro_cache_lookups_total\{cache="segment_rows",result="hit"\} (\S+)', metrics)
    assert hits and float(hits.group(1)) >= len(again["results"])


def test_search_pages_by_offset_and_cursor(client):
    first = client.post("/search", json={"query": "a shape", "top_k": 2}).json()
    assert len(first["results"]) == 2 and first["next_cursor"]
    by_cursor = client.post("/search", json={"query": "a shape", "top_k": 2, "cursor": first["next_cursor"]}).json()
    by_offset = client.post("/search", json={"query": "a shape", "top_k": 2, "offset": 2}).json()
    assert [h["video_id"] for h in by_cursor["results"]] == [h["video_id"] for h in by_offset["results"]]
    assert by_cursor["offset"] == 2 and by_cursor["next_cursor"] is None
    everything = client.post("/search", json={"query": "a shape", "top_k": 4}).json()
    assert [h["video_id"] for h in first["results"] + by_cursor["results"]] == \
        [h["video_id"] for h in everything["results"]]
    past_end = client.post("/search", json={"query": "a shape", "top_k": 5, "offset": 10}).json()
    assert past_end["results"] == [] and past_end["next_cursor"] is None


def test_search_filters(client, service_env):
    red = str(service_env.videos["red"].resolve())
    r = client.post("/search", json={"query": "x", "filters": {"path_prefix": red}})
    assert [h["video_id"] for h in r.json()["results"]] == [service_env.ids["red"]]
    r = client.post("/search", json={"query": "x", "filters": {"min_duration": 5.0}})
    assert r.status_code == 200 and r.json()["results"] == []
    r = client.post("/search", json={"query": "x", "filters": {"min_duration": 1.0, "max_duration": 3.0}})
    assert len(r.json()["results"]) == 4


def test_rerank_orders_by_vtc_logit_plus_vtm_log_odds_and_reports_the_match_probability(client, service_env):
    """Re-ranked results: ordered by cosine / temperature + VTM log-odds; score is its 0-1 form against the best
    re-ranked cosine; vtm_score is ALPRO's match probability softmax(itm_logits)[1]."""
    r = client.post("/search", json={"query": "a green square", "top_k": 4, "rerank": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reranked"] == 3 and body["timings"]["rerank_ms"] > 0
    top = body["results"][:3]
    assert all(h["vtm_score"] is not None and h["scored_by"] == "vtm" for h in top)
    assert body["results"][3]["vtm_score"] is None and body["results"][3]["scored_by"] == "vtc"
    assert [h["score"] for h in top] == sorted((h["score"] for h in top), reverse=True)
    model = load_pretrained(service_env.retrieval)
    tok = Tokenizer.from_config(model.config)
    ids, mask = tok(["a green square"])
    best = max(h["vtc_score"] for h in top)
    for hit in top:
        clip = load_video(hit["path"], model.config, window=(hit["start"], hit["end"]))
        with torch.inference_mode():
            logits = model.vtm_logits(clip[None], ids, mask)[0].float()
        assert hit["vtm_score"] == pytest.approx(float(torch.softmax(logits, dim=-1)[1]), abs=1e-4)
        log_odds = float(logits[1] - logits[0])
        expected = 1 / (1 + math.exp(-(log_odds + (hit["vtc_score"] - best) / model.temperature)))
        assert hit["score"] == pytest.approx(expected, abs=1e-3)
    again = client.post("/search", json={"query": "a green square", "top_k": 4, "rerank": 3}).json()
    assert [h["score"] for h in again["results"]] == pytest.approx([h["score"] for h in body["results"]])
    hits = [line for line in client.get("/metrics").text.splitlines()
            if line.startswith('alpro_cache_lookups_total{cache="segment_tokens",result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 3  # the second re-ranking decoded nothing


def _held_bytes(tensors) -> int:
    """Bytes of the distinct storages these tensors keep alive (a view keeps its whole base)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_token_cache_holds_at_most_its_budget(service_env):
    """Re-ranking encodes decoded segments in batches; what the cache keeps of them, counted as the storage
    really held, stays within ALPRO_TOKEN_CACHE_MB (a view of a batch would keep the whole batch alive)."""
    config = load_pretrained(service_env.retrieval).config
    segment = (1 + config.vision.num_patches) * config.vision.embed_dim * 4  # fp32 tokens of one segment
    budget = int(2.5 * segment)  # room for two segments' tokens, not for a batch of four
    settings = service_env.settings(qa_checkpoint=None, token_cache_mb=budget / 2**20)
    with run_server(settings) as live, httpx.Client(base_url=live.url) as c:
        body = c.post("/search", json={"query": "a red square", "top_k": 4, "rerank": 4}).json()
        assert body["reranked"] == 4  # four segments decoded and encoded in one batch
        cache = live.engine.token_cache
        assert cache.max_bytes == budget
        kept = [cache.get(key) for key in list(cache._items)]
        assert len(kept) == 2  # as many segments as fit
        assert _held_bytes(kept) <= budget and cache.nbytes <= budget


def test_rerank_with_stored_tokens_matches_decoding(service_env):
    with run_server(service_env.settings(service_env.data_tokens)) as live, httpx.Client(base_url=live.url) as c:
        stored = c.post("/search", json={"query": "a yellow circle", "top_k": 4, "rerank": True}).json()
    with run_server(service_env.settings()) as live, httpx.Client(base_url=live.url) as c:
        decoded = c.post("/search", json={"query": "a yellow circle", "top_k": 4, "rerank": True}).json()
    assert stored["reranked"] == decoded["reranked"] == 4
    by_id = {h["video_id"]: h["vtm_score"] for h in decoded["results"]}
    for hit in stored["results"]:  # fp16 stored tokens against fp32 computed ones
        assert hit["vtm_score"] == pytest.approx(by_id[hit["video_id"]], abs=2e-2)


# --- QA -------------------------------------------------------------------------------------------


def test_qa_answers_from_the_checkpoint_vocabulary(client, service_env):
    video_id = service_env.ids["blue"]
    # two one-second segments: a grounded answer; min_confidence 0 so that the untrained model never abstains
    r = client.post("/qa", json={"video_id": video_id, "question": "what color is the square?", "top_k": 3,
                                 "min_confidence": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    answers = body["answers"]
    assert len(answers) == 3 and {a["answer"] for a in answers} <= set(QA_ANSWERS)
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    qa = load_pretrained(service_env.qa)
    tok = Tokenizer.from_config(qa.config)
    with torch.inference_mode():
        clip = load_video(service_env.videos["blue"], qa.config)
        probs = qa.answer_logits(clip[None], *tok(["what color is the square?"]))[0].softmax(-1)
    best = int(probs.argmax())
    assert answers[0]["answer"] == QA_ANSWERS[best]
    assert answers[0]["score"] == pytest.approx(float(probs[best]), abs=1e-4)
    again = client.post("/qa", json={"video_id": video_id, "question": "is it moving?", "min_confidence": 0}).json()
    assert again["cached"] is True and len(again["answers"]) == schemas.DEFAULT_QA_TOP_K


# --- videos ---------------------------------------------------------------------------------------


def test_video_detail_and_thumbnails(client, service_env):
    video_id = service_env.ids["red"]
    r = client.get(f"/videos/{video_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["video_id"] == video_id and body["name"] == "red.mp4" and body["duration_s"] == pytest.approx(2.0)
    assert [s["index"] for s in body["segments"]] == [0, 1]
    for url in [body["thumbnail_url"]] + [s["thumbnail_url"] for s in body["segments"]]:
        image = client.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert image.content[:2] == b"\xff\xd8"  # a JPEG


def test_stream_supports_range_requests(client, service_env):
    video_id = service_env.ids["green"]
    data = service_env.videos["green"].read_bytes()
    full = client.get(f"/videos/{video_id}/stream")
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "video/mp4" and full.headers["accept-ranges"] == "bytes"
    part = client.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert part.content == data[100:200]
    tail = client.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    outside = client.get(f"/videos/{video_id}/stream", headers={"Range": f"bytes={len(data) + 10}-"})
    assert outside.status_code == 416
    head = client.head(f"/videos/{video_id}/stream")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)


# --- system ---------------------------------------------------------------------------------------


def test_health_ready_stats_metrics(client, service_env):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["qa"] is True
    stats = client.get("/stats").json()
    assert (stats["videos"], stats["segments"], stats["failures"]) == (4, 8, 0)
    assert stats["index"]["version"] == 1 and stats["index"]["num_vectors"] == 8
    assert stats["checkpoint"]["fingerprint"] and stats["qa_checkpoint"]["answers"] == len(QA_ANSWERS)
    client.post("/search", json={"query": "metrics please"})
    text = client.get("/metrics").text
    for stage in ("encode", "faiss", "db"):
        assert f'alpro_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'alpro_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert "alpro_cache_lookups_total" in text and "alpro_encoder_batch_size_bucket" in text
    assert client.get("/openapi.json").json()["paths"]["/search"]["post"]
    page = client.get("/")
    assert page.status_code == 200 and "<video" in page.text
    scripts = re.findall(r'<script src="(/static/[^"]+\.js)"></script>', page.text)
    assert scripts[0] == "/static/api.js" and scripts[-1] == "/static/app.js"  # helpers first, wiring last
    assert all(client.get(src).status_code == 200 for src in scripts)


# --- errors ---------------------------------------------------------------------------------------

LONG = "x" * (schemas.MAX_QUERY_CHARS + 1)
ERROR_CASES = [
    ("empty query", "post", "/search", {"query": ""}, 422),
    ("blank query", "post", "/search", {"query": "   \n"}, 422),
    ("overlong query", "post", "/search", {"query": LONG}, 422),
    ("missing query", "post", "/search", {"top_k": 3}, 422),
    ("top_k 0", "post", "/search", {"query": "a", "top_k": 0}, 422),
    ("top_k 101", "post", "/search", {"query": "a", "top_k": 101}, 422),
    ("top_k string", "post", "/search", {"query": "a", "top_k": "5"}, 422),
    ("top_k float", "post", "/search", {"query": "a", "top_k": 2.5}, 422),
    ("negative offset", "post", "/search", {"query": "a", "offset": -1}, 422),
    ("offset and cursor", "post", "/search", {"query": "a", "offset": 2, "cursor": "abc"}, 422),
    ("garbage cursor", "post", "/search", {"query": "a", "cursor": "!!!"}, 422),
    ("rerank too deep", "post", "/search", {"query": "a", "rerank": 1000}, 422),
    ("unknown field", "post", "/search", {"query": "a", "topk": 3}, 422),
    ("min > max duration", "post", "/search", {"query": "a", "filters": {"min_duration": 3, "max_duration": 1}}, 422),
    ("query not a string", "post", "/search", {"query": ["a"]}, 422),
    ("body not an object", "post", "/search", [1, 2], 422),
    ("empty question", "post", "/qa", {"video_id": "0" * 32, "question": ""}, 422),
    ("qa top_k 21", "post", "/qa", {"video_id": "0" * 32, "question": "a", "top_k": 21}, 422),
    ("qa bad id", "post", "/qa", {"video_id": "../etc/passwd", "question": "a"}, 422),
    ("qa unknown video", "post", "/qa", {"video_id": "0" * 32, "question": "what?"}, 404),
    ("unknown video", "get", "/videos/" + "0" * 32, None, 404),
    ("unknown video thumbnail", "get", "/videos/" + "0" * 32 + "/thumbnail", None, 404),
    ("unknown video stream", "get", "/videos/" + "0" * 32 + "/stream", None, 404),
    ("bad video id", "get", "/videos/..%2F..%2Fetc%2Fpasswd", None, 404),
    ("bad video id chars", "get", "/videos/a.b", None, 422),
    ("negative segment", "get", "/videos/" + "0" * 32 + "/segments/-1/thumbnail", None, 422),
    ("unknown route", "get", "/nope", None, 404),
    ("wrong method", "get", "/search", None, 405),
]


@pytest.mark.parametrize("name,method,path,body,status", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_are_json_with_documented_status(client, name, method, path, body, status):
    r = client.request(method.upper(), path, json=body) if body is not None else client.request(method.upper(), path)
    assert r.status_code == status, r.text
    payload = r.json()
    assert isinstance(payload["error"], str) and payload["message"], payload


def test_invalid_json_and_oversized_bodies(client):
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_json"
    assert r.json()["message"].startswith("body: invalid JSON at line 1, column 2 (character 1): "), r.json()
    big = b'{"question": "' + b"a" * 20_000 + b'"}'
    r = client.post("/qa", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["message"]
    # /search takes images: its limit is max_body_bytes plus the largest image in base64
    big = b'{"image": "' + b"A" * (16 * 1024 + 4 * (8 * 2**20 // 3 + 1) + 64) + b'"}'
    r = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["message"]

    def chunks():  # no Content-Length: the limit applies while streaming
        yield b'{"question": "'
        for _ in range(40):
            yield b"a" * 1000
        yield b'"}'

    r = client.post("/qa", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_cursor_of_another_query_is_refused(client):
    cursor = client.post("/search", json={"query": "one query", "top_k": 1}).json()["next_cursor"]
    r = client.post("/search", json={"query": "another query", "top_k": 1, "cursor": cursor})
    assert r.status_code == 422 and "different query" in r.json()["message"]


def test_missing_video_file(service_env, tmp_path):
    writer = service_env.writer(tmp_path / "data")
    writer.add_video(service_env.videos["red"])
    gone = writer.add_fake_video(str(tmp_path / "deleted.mp4"))
    writer.publish()
    with run_server(service_env.settings(tmp_path / "data")) as live, httpx.Client(base_url=live.url) as c:
        assert c.get(f"/videos/{gone}").status_code == 200
        r = c.get(f"/videos/{gone}/stream")
        assert r.status_code == 404 and r.json()["error"] == "video_file_missing"
        r = c.post("/qa", json={"video_id": gone, "question": "what?"})
        assert r.status_code == 404 and r.json()["error"] == "video_file_missing"
        r = c.get(f"/videos/{gone}/thumbnail")
        assert r.status_code == 404
        # re-ranking skips a moment it cannot decode instead of failing the search
        r = c.post("/search", json={"query": "a", "rerank": True})
        assert r.status_code == 200 and r.json()["reranked"] == 1


# --- ranking mechanics (the encoder is replaced: these tests are about grouping, not the model) -------


def _unit(d: int, cosine: float, axis: int) -> np.ndarray:
    """A unit vector with the given cosine to e0, the rest on its own axis."""
    v = np.zeros(d, np.float32)
    v[0], v[axis] = cosine, np.sqrt(1 - cosine**2)
    return v


@pytest.fixture()
def ranked_server(service_env, tmp_path, monkeypatch):
    """Videos a (20 moments), b (2), c (1), d (1, under another folder) with known cosines to the query e0."""
    writer = service_env.writer(tmp_path / "data")
    d = writer.model.config.embed_dim
    ids = {name: writer.add_fake_video(f"/media/{'other' if name == 'd' else 'lib'}/{name}.mp4", n, duration_s=n)
           for name, n in (("a", 20), ("b", 2), ("c", 1), ("d", 1))}
    cosines = {"a": np.linspace(0.99, 0.91, 20).tolist(), "b": [0.5, 0.9], "c": [0.7], "d": [0.8]}
    axis = iter(range(1, d))
    writer.publish(vectors={ids[k]: np.stack([_unit(d, c, next(axis)) for c in v]) for k, v in cosines.items()})
    with run_server(service_env.settings(tmp_path / "data", qa_checkpoint=None, overfetch=1)) as live:
        query = np.zeros(d, np.float32)
        query[0] = 1.0
        monkeypatch.setattr(live.engine, "encode_texts", lambda texts: np.tile(query, (len(texts), 1)))
        yield live, ids


def test_grouping_keeps_each_videos_best_moment(ranked_server):
    live, ids = ranked_server
    with httpx.Client(base_url=live.url) as c:
        body = c.post("/search", json={"query": "anything", "top_k": 4}).json()
        # video a fills the 20 best hits, more than the first fetch (16): the engine fetches deeper
        assert [h["video_id"] for h in body["results"]] == [ids["a"], ids["b"], ids["d"], ids["c"]]
        assert [h["segment_index"] for h in body["results"]] == [0, 1, 0, 0]
        assert [h["vtc_score"] for h in body["results"]] == pytest.approx([0.99, 0.9, 0.8, 0.7], abs=1e-5)
        filtered = c.post("/search", json={"query": "anything", "filters": {"path_prefix": "/media/lib/"}}).json()
        assert [h["video_id"] for h in filtered["results"]] == [ids["a"], ids["b"], ids["c"]]
        short = c.post("/search", json={"query": "anything", "filters": {"max_duration": 1.5}}).json()
        assert [h["video_id"] for h in short["results"]] == [ids["d"], ids["c"]]
        page = c.post("/search", json={"query": "anything", "top_k": 1, "offset": 1}).json()
        assert [h["video_id"] for h in page["results"]] == [ids["b"]]


FAST_PATH_CASES = [  # (body or raw bytes, headers): what POST /search gets, through and around the fast path
    ({"query": "a red square", "top_k": 3}, {}),
    ({"query": "a shape", "top_k": 2, "offset": 1, "filters": {"min_duration": 0.5}}, {}),
    ({"query": "something blue", "top_k": 2, "rerank": 2}, {}),
    ({"query": "a red square", "top_k": 2}, {"content-type": "application/json; charset=utf-8"}),
    ({"query": "a", "top_k": 0}, {}),
    ({"query": "a", "topk": 3}, {}),
    ({"query": "a", "cursor": "bm90IGEgY3Vyc29y"}, {}),  # validates, then the engine refuses it
    (b"{not json", {"content-type": "application/json"}),
    (b'{"query": "a red square"}', {"content-type": "text/plain"}),
    (b"", {"content-type": "application/json"}),
    (b'{"query": "' + b"a" * 20_000 + b'"}', {"content-type": "application/json"}),
]


def test_search_fast_path_answers_as_the_route(client, service_env):
    """Every case gives the same status, body (but timings) and headers with the fast path on and off."""
    def call(c, body, headers):
        r = c.post("/search", json=body, headers=headers) if isinstance(body, dict) else \
            c.post("/search", content=body, headers=headers)
        payload = r.json()
        if r.status_code == 200:
            payload.pop("took_ms"), payload.pop("timings")
        return r.status_code, payload, r.headers.get("content-type"), r.headers.get("retry-after")

    with run_server(service_env.settings(search_fast_path=False)) as plain:
        with httpx.Client(base_url=plain.url, timeout=30) as routed:
            for body, headers in FAST_PATH_CASES:
                assert call(client, body, headers) == call(routed, body, headers), (body, headers)
    metrics = client.get("/metrics").text
    assert 'alpro_http_requests_total{method="POST",route="/search",status="200"}' in metrics
