"""Re-ranking scores the same whether a segment's tokens come from the index or are computed again: the
indexer records the precision it encoded in (bf16 autocast on a GPU by default) and the service recomputes
tokens in it. Shown on the CPU with an explicit --precision bf16."""

from __future__ import annotations

import json
import shutil

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import run_server, service_env  # noqa: E402,F401


def test_stored_and_recomputed_tokens_score_alike(service_env, tmp_path):
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    data = tmp_path / "data"
    summary = run_index(IndexSettings(videos_dir=service_env.root / "videos", data_dir=data,
                                      checkpoint=service_env.retrieval, segment_seconds=1.0, num_workers=0,
                                      progress=False, store_tokens=True, precision="bf16"))
    manifest = json.loads((data / "index" / "v000001" / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["has_tokens"] and summary.published

    body = {"query": "a red square", "top_k": 4, "rerank": 4}
    settings = service_env.settings(data, qa_checkpoint=None)
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        stored = {h["video_id"]: h["vtm_score"] for h in c.post("/search", json=body).json()["results"]}
    stored_tokens = [d for d in (data / "index").rglob("tokens") if d.is_dir()]
    assert stored_tokens  # where the version's parts keep them (store/layout.py)
    for folder in stored_tokens:
        shutil.rmtree(folder)  # a new service decodes and encodes them again
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        again = c.post("/search", json=body).json()
        metrics = c.get("/metrics").text
    recomputed = {h["video_id"]: h["vtm_score"] for h in again["results"]}
    decodes = [line for line in metrics.splitlines() if line.startswith('alpro_stage_seconds_count{stage="decode"}')]
    assert decodes and float(decodes[0].split()[-1]) >= 1  # the second search did recompute
    assert stored.keys() == recomputed.keys() and len(stored) == 4
    for video_id, score in stored.items():
        # the same computation, so the same float (fp32 tokens against bf16 ones differ by about 1e-6 here)
        assert recomputed[video_id] == pytest.approx(score, abs=1e-7), (video_id, score, recomputed[video_id])
