"""bench.index_growth runs end to end at a tiny size on both backends (its figures are in docs/index_growth.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import index_growth
from tests.pg_server import unavailable_reason


def test_index_growth_reports_each_backend(tmp_path: Path) -> None:
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    out = tmp_path / "growth.json"
    results = index_growth.main(["--sizes", "2000", "--backends", "faiss,pgvector", "--queries", "40",
                                 "--workdir", str(tmp_path / "work"), "--json", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(results))
    assert set(written) == {"faiss", "pgvector"}
    for backend, sizes in written.items():
        assert list(sizes) == ["2000"]
        figures = sizes["2000"]
        assert set(index_growth.FIELDS) <= set(figures), backend
        assert 0.0 <= figures["recall_at_10"] <= 1.0
        assert figures["recall_at_10"] >= 0.9  # 2000 vectors: exact search on both backends
        for name in ("publish_add_s", "publish_remove_s", "rss_mb", "p50_ms", "p99_ms", "p50_ms_c8", "disk_mb"):
            assert figures[name] > 0, (backend, name)
        assert figures["p99_ms"] >= figures["p50_ms"]
        assert figures["segments"] == 2000
    assert written["faiss"]["2000"]["add_kind"] == "delta"
    assert not (tmp_path / "work" / "faiss-2000").exists()
