"""Service pieces without a server: schemas, settings, grouping, cursors, cache, batching, index holder, errors."""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from service import schemas
from service.batching import ModelWorker
from service.cache import ByteLRU
from service.catalog import RowCache, SegmentRow
from service.ranking import Candidate, decode_cursor, encode_cursor, passes, query_key, to_cosine, under_path
from service.errors import (IndexUnavailableError, InvalidRequestError, OverloadedError, UnavailableError,
                            VideoNotFoundError)
from service.index import IndexHolder
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


# --- schemas --------------------------------------------------------------------------------------


def test_search_request_limits():
    req = schemas.SearchRequest(query="  a dog  ")
    assert req.query == "a dog" and req.top_k == schemas.DEFAULT_TOP_K and req.rerank is False
    assert schemas.SearchRequest(query="a", rerank=True).rerank is True
    assert schemas.SearchRequest(query="a", rerank=7).rerank == 7
    for bad in ({"query": ""}, {"query": "   "}, {"query": "x" * (schemas.MAX_QUERY_CHARS + 1)},
                {"query": "a", "top_k": 0}, {"query": "a", "top_k": schemas.MAX_TOP_K + 1},
                {"query": "a", "top_k": "3"}, {"query": "a", "top_k": True}, {"query": "a", "rerank": "yes"},
                {"query": "a", "rerank": schemas.MAX_RERANK + 1}, {"query": "a", "offset": schemas.MAX_OFFSET + 1},
                {"query": "a", "offset": 3, "cursor": "c"}, {"query": "a", "extra": 1},
                {"query": "a", "filters": {"min_duration": 2.0, "max_duration": 1.0}},
                {"query": "a", "filters": {"min_duration": float("nan")}}):
        with pytest.raises(ValidationError):
            schemas.SearchRequest.model_validate(bad)


def test_qa_request_video_id_is_never_a_path():
    assert schemas.QARequest(video_id="ab12" * 8, question="why?").top_k == schemas.DEFAULT_QA_TOP_K
    for bad in ("../../etc/passwd", "a/b", "", "x" * 129, "a.b", "a b"):
        with pytest.raises(ValidationError):
            schemas.QARequest(video_id=bad, question="why?")


# --- settings -------------------------------------------------------------------------------------


def test_settings_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPRO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ALPRO_CORS_ORIGINS", "http://a.test, http://b.test")
    monkeypatch.setenv("ALPRO_API_KEY", "s3cret-key")
    monkeypatch.setenv("ALPRO_DEVICE", "cpu")
    settings = Settings()
    assert settings.data_dir == tmp_path.resolve() and settings.cors_origins == ["http://a.test", "http://b.test"]
    assert settings.api_key.get_secret_value() == "s3cret-key" and "s3cret" not in repr(settings)
    assert settings.batch_window_s == 0.0  # CPU: no waiting for company
    monkeypatch.setenv("ALPRO_CORS_ORIGINS", '["http://c.test"]')
    assert Settings().cors_origins == ["http://c.test"]
    assert Settings(device="cuda").batch_window_s > 0
    assert Settings(batch_window_ms=5).batch_window_s == 0.005


def test_settings_are_checked(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(data_dir=tmp_path / "nope")
    with pytest.raises(ValidationError, match="blank"):
        Settings(data_dir=tmp_path, api_key=" ")
    with pytest.raises(ValidationError, match="whitespace"):
        Settings(data_dir=tmp_path, api_key="key ")
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, max_top_k=schemas.MAX_TOP_K + 1)  # settings only tighten the schema


# --- search pieces --------------------------------------------------------------------------------


def _row(segment_id: int, video: str, index: int = 0, path: str = "/v/x.mp4", duration: float = 10.0) -> SegmentRow:
    return SegmentRow(segment_id, video, index, float(index), float(index + 1), None, path, duration)


def test_filters():
    lib, other = _row(1, "a", 3, "/lib/a.mp4", 10.0), _row(2, "b", 0, "/other/b.mp4", 2.0)
    assert passes(lib, None) and passes(lib, schemas.SearchFilters(path_prefix="/lib/"))
    assert not passes(other, schemas.SearchFilters(path_prefix="/lib/"))
    short, long = schemas.SearchFilters(max_duration=5), schemas.SearchFilters(min_duration=10)
    assert passes(other, short) and not passes(lib, short)
    assert passes(lib, long) and not passes(other, long)
    unknown = SegmentRow(3, "c", 0, 0.0, 1.0, None, "/lib/c.mp4", None)
    assert passes(unknown, None) and not passes(unknown, schemas.SearchFilters(min_duration=0))
    candidate = Candidate(lib, 0.9)
    assert candidate.score == pytest.approx(0.95)  # (1 + cosine) / 2
    candidate.vtm, candidate.reranked = 0.6, 0.25  # once re-ranked: the VTM probability and the combined score
    assert candidate.score == pytest.approx(0.25)
    assert Candidate(lib, 0.1, vtm=0.2, reranked=0.3).rerank_key > Candidate(lib, 0.9, vtm=0.9, reranked=0.2).rerank_key


@pytest.mark.parametrize("prefix", ["/media/lib", "/media/lib/", "/media/lib//"])
def test_path_prefix_matches_whole_path_components(prefix):
    assert under_path("/media/lib/a.mp4", prefix) and under_path("/media/lib/x/b.mp4", prefix)
    assert under_path("/media/lib", prefix)  # the folder itself (or a file of that name)
    assert not under_path("/media/library2/c.mp4", prefix) and not under_path("/media/lib.mp4", prefix)
    assert not under_path("/media/li/a.mp4", prefix) and not under_path("/other/media/lib/a.mp4", prefix)
    row = _row(1, "a", path="/media/library2/c.mp4")
    assert not passes(row, schemas.SearchFilters(path_prefix=prefix))
    assert passes(row, schemas.SearchFilters(path_prefix="/media/library2/c.mp4"))  # one file, by its path


def test_path_prefix_of_a_file_and_of_the_root():
    assert under_path("/v/x.mp4", "/v/x.mp4") and not under_path("/v/x.mp4.part", "/v/x.mp4")
    assert not under_path("/v/x.mp4", "/v/x.mp")  # no partial names
    assert under_path("/v/x.mp4", "/") and under_path("/v/x.mp4", "//")


def test_l2_distances_become_cosines():
    assert to_cosine(np.array([0.0, 2.0, 4.0]), "l2").tolist() == [1.0, 0.0, -1.0]
    assert to_cosine(np.array([0.3]), "ip").tolist() == pytest.approx([0.3])


def test_cursors():
    req = schemas.SearchRequest(query="a dog", filters=schemas.SearchFilters(path_prefix="/x"))
    key = query_key(req)
    assert key != query_key(schemas.SearchRequest(query="a dog"))
    assert query_key(req) == query_key(req.model_copy(update={"top_k": 50}))  # page size may change
    assert decode_cursor(encode_cursor(20, key), key) == 20
    with pytest.raises(InvalidRequestError, match="different query"):
        decode_cursor(encode_cursor(20, key), "other")
    for bad in ("!!!", "e30", encode_cursor(schemas.MAX_OFFSET + 1, key), encode_cursor(-1, key)):
        with pytest.raises(InvalidRequestError):
            decode_cursor(bad, key)


# --- cache ----------------------------------------------------------------------------------------


def test_byte_lru_evicts_by_bytes():
    lookups = []
    cache = ByteLRU(3 * 400, on_lookup=lookups.append)  # room for three 100-float tensors
    for i in range(3):
        cache.put(i, torch.zeros(100))
    assert cache.get(0) is not None  # 0 becomes the most recent
    cache.put(3, torch.zeros(100))  # evicts 1, the least recent
    assert 1 not in cache and {0, 2, 3} <= {k for k in (0, 2, 3) if k in cache}
    assert cache.nbytes == 1200 and len(cache) == 3
    cache.put(4, torch.zeros(1000))  # larger than the whole cache: not kept, nothing evicted
    assert 4 not in cache and len(cache) == 3
    assert cache.get(1) is None and lookups == [True, False] and (cache.hits, cache.misses) == (1, 1)


def test_byte_lru_counts_the_storage_a_view_keeps():
    """A row of a batch keeps the whole batch allocated: that is what counts against the budget."""
    cache = ByteLRU(3 * 400)
    batch = torch.zeros(4, 100)  # 1600 bytes
    cache.put("view", batch[0])  # holds 1600 bytes, more than the budget: not kept
    assert "view" not in cache and cache.nbytes == 0
    cache.put("copy", batch[0].clone())
    assert "copy" in cache and cache.nbytes == 400


def test_row_cache_is_per_index_version():
    cache = RowCache(max_rows=2)
    rows = [_row(i, "v") for i in (1, 2, 3)]
    cache.put_many(7, rows)  # no version yet: ignored
    assert cache.get_many(7, [1]) == {}
    cache.put_many(7, rows)  # keeps the 2 most recent
    assert set(cache.get_many(7, [1, 2, 3])) == {2, 3} and len(cache) == 2
    cache.put_many(6, [_row(9, "old")])  # a late request of an older version
    assert cache.get_many(7, [9]) == {}
    assert cache.get_many(8, [2, 3]) == {} and len(cache) == 0  # a new version starts empty


# --- batching -------------------------------------------------------------------------------------


def test_worker_batches_queued_queries_and_runs_jobs():
    batches = []

    def batch_fn(items):
        batches.append(list(items))
        time.sleep(0.02)
        return [x * 2 for x in items]

    worker = ModelWorker(batch_fn, max_batch=8, window_s=0.05, max_queue=100)
    worker.start()

    async def main():
        results = await asyncio.gather(*(worker.submit(i) for i in range(10)))
        job = await worker.run(lambda a, b: a + b, 2, 3)
        return results, job

    try:
        results, job = asyncio.run(main())
    finally:
        worker.stop()
    assert results == [2 * i for i in range(10)] and job == 5
    assert max(len(b) for b in batches) == 8 and sum(len(b) for b in batches) == 10


def test_worker_overload_and_errors():
    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    worker = ModelWorker(slow, max_batch=1, window_s=0, max_queue=2, retry_after_s=7)
    worker.start()

    async def main():
        first = asyncio.ensure_future(worker.submit(1))
        await asyncio.sleep(0.05)  # the worker holds 1; 2 and 3 wait
        waiting = [asyncio.ensure_future(worker.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as info:
            await worker.submit(4)
        assert info.value.headers == {"Retry-After": "7"}
        release.set()
        assert await first == 1 and [await w for w in waiting] == [2, 3]
        with pytest.raises(ZeroDivisionError):
            await worker.run(lambda: 1 / 0)

    try:
        asyncio.run(main())
    finally:
        worker.stop()

    async def after_stop():
        with pytest.raises(UnavailableError):
            await worker.submit(5)

    asyncio.run(after_stop())


# --- index holder ---------------------------------------------------------------------------------


class FakeManifest:
    def __init__(self, version: int, fingerprint: str = "good") -> None:
        self.version, self.checkpoint_fingerprint, self.num_vectors = version, fingerprint, 1


class FakeSnapshot:
    def __init__(self, version: int, fingerprint: str = "good") -> None:
        self.version, self.manifest, self.closed = version, FakeManifest(version, fingerprint), False

    def close(self) -> None:
        self.closed = True


class FakeDataDir:
    root = Path("/data")

    def __init__(self) -> None:
        self.current: int | None = None
        self.fingerprints: dict[int, str] = {}
        self.opened: list[FakeSnapshot] = []

    def current_version(self):
        return self.current

    def open_index(self, version):
        snap = FakeSnapshot(version, self.fingerprints.get(version, "good"))
        self.opened.append(snap)
        return snap


def _check(manifest) -> None:
    if manifest.checkpoint_fingerprint != "good":
        raise ValueError(f"made by {manifest.checkpoint_fingerprint}")


def test_index_holder_swaps_and_closes_the_old_version_after_its_last_lease():
    data = FakeDataDir()
    holder = IndexHolder(data, _check)
    with pytest.raises(IndexUnavailableError, match="no index"):
        holder.acquire()
    assert holder.refresh() is False
    data.current = 1
    assert holder.refresh() is True and holder.version == 1
    assert holder.refresh() is False  # unchanged: nothing reopened
    lease = holder.acquire()
    data.current = 2
    assert holder.refresh() is True and holder.version == 2
    v1 = data.opened[0]
    assert lease.version == 1 and not v1.closed  # still in use
    lease.release()
    lease.release()  # idempotent
    assert v1.closed
    with holder.acquire() as current:
        assert current.version == 2
    data.current, data.fingerprints[3] = 3, "bad"
    assert holder.refresh() is False and holder.version == 2 and "version 3" in holder.error
    assert data.opened[-1].closed  # the rejected snapshot is not leaked
    assert holder.refresh() is False and len(data.opened) == 3  # not retried
    holder.close()
    assert data.opened[1].closed


# --- errors and middleware ------------------------------------------------------------------------


def test_errors_map_to_json_statuses():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from service.errors import install_error_handlers
    from service.middleware import BodyLimitMiddleware

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=1024)

    @app.get("/missing")
    async def missing():
        raise VideoNotFoundError("no video with id x")

    @app.get("/busy")
    async def busy():
        raise OverloadedError("busy", 2)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret detail")

    @app.post("/echo")
    async def echo(body: schemas.SearchRequest):
        return {"query": body.query}

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/missing")
        assert r.status_code == 404 and r.json() == {"error": "video_not_found", "message": "no video with id x"}
        r = client.get("/busy")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        r = client.get("/boom")
        assert r.status_code == 500 and "secret" not in r.text
        r = client.post("/echo", json={"query": "", "top_k": 1})
        assert r.status_code == 422 and r.json()["message"].startswith("query:")
        r = client.post("/echo", content=b'{"query": "' + b"a" * 2000 + b'"}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        assert client.post("/echo", json={"query": "ok"}).json() == {"query": "ok"}


def test_service_imports_only_model_and_the_indexers_read_side():
    imported = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {m for m in imported if m.split(".")[0] in ("model", "indexer", "training")}
    assert {m.split(".")[0] for m in ours} <= {"model", "indexer"}
    assert {m for m in ours if m.startswith("indexer")} <= {"store.datadir", "store.tables"}
