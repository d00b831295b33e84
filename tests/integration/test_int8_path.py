"""The int8 CPU path end to end (issue 23): `alpro-index --precision int8` makes int8 vectors and says so in the
index, never mixes them with fp32 ones without --reindex, and `alpro-serve` with ALPRO_PRECISION=int8 serves
text, image and example search, re-ranking, labels and QA from them; int8 is refused on a GPU device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from settings import SettingsError, load_settings  # noqa: E402
from store.layout import DataDir  # noqa: E402
from store.manifest import IndexMismatchError  # noqa: E402
from tests.integration.test_service_support import (index_videos, make_checkpoints, make_videos,  # noqa: E402
                                                    run_server)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    retrieval, qa = make_checkpoints(root / "checkpoints")
    make_videos(root / "videos", seconds=2.0)
    index_videos(root / "videos", root / "int8", retrieval, precision="int8", store_tokens=True)
    index_videos(root / "videos", root / "fp32", retrieval)
    return root, retrieval, qa


def _vectors(data: Path) -> tuple[dict, np.ndarray]:
    data_dir = DataDir(data)
    version = data_dir.current_version()
    manifest = json.loads((data_dir.version_dir(version) / "manifest.json").read_text())
    with data_dir.open_index(version) as snapshot:
        ids = snapshot.segment_ids()
        order = np.argsort([f"{v}:{s}" for v, s in snapshot.locate(ids.tolist())])
        return manifest, snapshot.vectors(ids[order].tolist())


def test_an_int8_index_says_so_and_stays_close_to_fp32(library):
    root, *_ = library
    manifest, int8 = _vectors(root / "int8")
    fp32_manifest, fp32 = _vectors(root / "fp32")
    assert manifest["precision"] == "int8" and fp32_manifest["precision"] == "fp32"
    cosines = (int8 * fp32).sum(axis=1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(fp32, axis=1)
    assert len(cosines) == 8 and cosines.min() >= 0.99, cosines


def test_precisions_never_mix_without_reindex(library, tmp_path):
    root, retrieval, _ = library
    import shutil

    data = tmp_path / "data"
    shutil.copytree(root / "int8", data)
    with pytest.raises(IndexMismatchError, match="int8.*fp32.*--reindex"):
        index_videos(root / "videos", data, retrieval)  # fp32 over int8
    version = index_videos(root / "videos", data, retrieval, reindex=True)
    assert json.loads((DataDir(data).version_dir(version) / "manifest.json").read_text())["precision"] == "fp32"


def test_int8_is_refused_on_a_gpu_and_resolves_auto_to_the_cpu(tmp_path):
    from service.settings import Settings

    with pytest.raises(SettingsError, match="int8.*CPU only"):
        load_settings(Settings, {"data_dir": str(tmp_path), "precision": "int8", "device": "cuda"})
    settings = load_settings(Settings, {"data_dir": str(tmp_path), "precision": "int8"})
    assert settings.resolved_device == "cpu"


def test_an_int8_service_serves_every_route(library):
    from service.settings import Settings

    root, _, qa = library
    settings = Settings(data_dir=root / "int8", qa_checkpoint=qa, precision="int8", index_poll_s=0.1,
                        decode_workers=1)
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/search", json={"query": "a red square", "top_k": 4, "rerank": 4})
        assert r.status_code == 200 and r.json()["reranked"] == 4, r.text
        red = next(h for h in r.json()["results"] if h["name"] == "red.mp4")
        r = c.post("/search", json={"example": {"video_id": red["video_id"], "start": 0.1, "end": 0.9}, "top_k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["name"] == "red.mp4", r.text
        assert c.get(f"/videos/{red['video_id']}/similar").status_code == 200
        assert c.post("/classify", json={"labels": ["red", "blue"], "video_id": red["video_id"]}).status_code == 200
        r = c.post("/qa", json={"video_id": red["video_id"], "question": "what colour?", "min_confidence": 0})
        assert r.status_code == 200 and r.json()["answers"], r.text
        from model.quantize import is_quantized

        assert is_quantized(live.engine.retrieval.model) and is_quantized(live.engine.qa.model)
