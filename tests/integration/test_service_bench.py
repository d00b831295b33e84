"""bench/search_speed.py end to end at a toy size (it builds a data dir, then times raw, in-process, HTTP)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_search_speed_bench_runs(tmp_path):
    from bench.search_speed import main

    result = main(["--vectors", "3000", "--nlist", "16", "--train-sample", "2000", "--preset", "tiny",
                   "--concurrency", "1", "4", "--requests", "12", "--raw-requests", "8", "--workdir",
                   str(tmp_path / "work"), "--json", str(tmp_path / "out.json")])
    assert set(result["http"]) == {1, 4} and set(result["in_process"]) == {1, 4}
    for level in (*result["http"].values(), *result["in_process"].values()):
        assert level["requests"] == 12 and level["p50_ms"] > 0 and level["throughput_rps"] > 0
    assert result["at_concurrency_1"]["http_overhead_p50_ms"] > 0
    assert (tmp_path / "out.json").exists()
    assert result["rows"] == "index" and result["http"][1]["db_skipped_fraction"] == 1.0  # rows from the version
    from_db = main(["--vectors", "3000", "--nlist", "16", "--train-sample", "2000", "--preset", "tiny",
                    "--concurrency", "1", "--requests", "12", "--raw-requests", "4", "--rows", "db", "--workdir",
                    str(tmp_path / "work")])  # the same data dir, its version rewritten without the row copy
    assert from_db["http"][1]["server_db_p50_ms"] > 0
