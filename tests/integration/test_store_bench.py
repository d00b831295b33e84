"""The store's benchmarks run end to end at a small size (their figures are in indexer/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import publish_speed, snapshot_memory


def test_publish_speed_measures_a_delta_and_a_compaction(tmp_path: Path) -> None:
    out = tmp_path / "publish.json"
    results = publish_speed.main(["--vectors", "400", "--per-video", "4", "--videos", "3", "--dim", "16", "--cache",
                                  "--workdir", str(tmp_path / "work"), "--json", str(out)])
    (figures,) = json.loads(out.read_text())
    assert figures == results[0]
    assert (figures["add"]["kind"], figures["add"]["loaded_vectors"], figures["add"]["written_vectors"]) == \
        ("delta", 12, 12)
    assert (figures["remove"]["kind"], figures["remove"]["loaded_vectors"]) == ("delta", 0)
    assert (figures["compaction"]["kind"], figures["compaction"]["written_vectors"]) == ("base", 400)


def test_snapshot_memory_reports_each_reader(tmp_path: Path) -> None:
    (figures,) = snapshot_memory.main(["--vectors", "2000", "--dim", "16", "--index-type", "flat",
                                       "--workdir", str(tmp_path)])
    for way in ("mapped", "copied"):
        assert len(figures[way]) == 2 and all(r["pss_mb"] > 0 and r["open_s"] > 0 for r in figures[way])
