"""A data dir written by the code before base + delta versions (tests/fixtures/store_v1: three videos, one
format-1 version with stored tokens) is served by today's service, then updated by today's indexer without
embedding again what it holds: the format-1 version stays the base, the changes are deltas on it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")

from indexer.pipeline import run_index  # noqa: E402
from indexer.settings import IndexSettings  # noqa: E402
from model import Tokenizer, checkpoint_fingerprint, load_pretrained  # noqa: E402
from service.settings import Settings  # noqa: E402
from store.layout import DataDir  # noqa: E402
from tests.integration.test_service_support import make_checkpoints, make_videos, run_server  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store_v1"
FIXTURE_IDS = {"red": "9f626b486bbb2848e5a14a5533513f33", "blue": "7aea5cd634150f11049c6f2b764e8d33",
               "green": "35da148bc547ecc9b1d422dc763f9963"}


def index(videos: Path, data: Path, checkpoint: Path, **overrides):
    return run_index(IndexSettings(videos_dir=videos, data_dir=data, checkpoint=str(checkpoint), segment_seconds=1.0,
                                   num_workers=0, progress=False, store_tokens=True, thumbnail_width=32,
                                   previews="off", **overrides))


def search(client: httpx.Client, query: str, **body) -> dict:
    r = client.post("/search", json={"query": query, "top_k": 10, **body})
    assert r.status_code == 200, r.text
    return r.json()


def assert_scores_are_cosines(hits: list[dict], data: Path, checkpoint: Path, query: str) -> None:
    """Each hit's score is the cosine of the query and the vector the version stores for that segment."""
    model = load_pretrained(checkpoint)
    with torch.inference_mode():
        text = model.encode_text(*Tokenizer.from_config(model.config)([query]))[0].numpy()
    with DataDir(data).open_index() as snapshot:
        for hit in hits:
            segment = next(s for s, (v, i) in zip(snapshot.segment_ids().tolist(),
                                                   snapshot.locate(snapshot.segment_ids()))
                           if v == hit["video_id"] and i == hit["segment_index"])
            assert hit["vtc_score"] == pytest.approx(float(snapshot.vectors([segment])[0] @ text), abs=1e-4)


def wait_for_version(client: httpx.Client, version: int) -> None:
    deadline = time.monotonic() + 30
    while client.get("/stats").json()["index"]["version"] != version:
        assert time.monotonic() < deadline, f"version {version} was not picked up"
        time.sleep(0.05)


def test_a_format1_data_dir_is_served_then_updated_incrementally(tmp_path: Path) -> None:
    data, videos = tmp_path / "data", tmp_path / "videos"
    shutil.copytree(FIXTURE / "data", data)
    shutil.copytree(FIXTURE / "videos", videos)
    checkpoint, _ = make_checkpoints(tmp_path / "checkpoints")
    manifest = json.loads((data / "index" / "v000001" / "manifest.json").read_text())
    assert checkpoint_fingerprint(load_pretrained(checkpoint)) == manifest["checkpoint_fingerprint"], \
        "the seeded tiny checkpoint no longer matches the fixture's (torch's RNG changed?)"
    assert "parts" not in manifest and manifest["format"] == 1

    settings = Settings(data_dir=data, checkpoint=str(checkpoint), qa_checkpoint=None, index_poll_s=0.1,
                        decode_workers=1, device="cpu")
    with run_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        # 1: served as written
        body = search(client, "a red square", rerank=True)
        assert body["index_version"] == 1 and body["reranked"] >= 1
        assert {h["video_id"] for h in body["results"]} == set(FIXTURE_IDS.values())
        assert_scores_are_cosines(body["results"], data, checkpoint, "a red square")

        # 2: the library as found here (other paths): renames only, nothing embedded
        moved = index(videos, data, checkpoint)
        assert (moved.renamed, moved.indexed, moved.decoded, moved.encoded_clips) == (3, 0, 0, 0), moved.to_dict()
        assert moved.published and moved.index_version == 2

        # 3: one video added, one removed: only the new one is embedded
        (videos / "green.mp4").unlink()
        make_videos(videos, names=("yellow",))
        changed = index(videos, data, checkpoint, prune=True)
        assert (changed.indexed, changed.removed, changed.unchanged) == (1, 1, 2), changed.to_dict()
        assert (changed.decoded, changed.encoded_clips) == (1, 2)  # yellow's two 1 s moments, nothing else
        assert changed.index_version == 3 and changed.segments == 6

        manifest = DataDir(data).read_manifest()
        assert manifest.parts[0] == "v000001" and len(manifest.parts) == 3  # the format-1 version is the base
        # the base's 6 rows are all shadowed by the renames' delta (6 rows), green's 2 there are tombstoned,
        # yellow's 2 are the last delta
        assert (manifest.base_vectors, manifest.delta_vectors, manifest.tombstones) == (6, 8, 2)
        wait_for_version(client, 3)
        body = search(client, "a yellow square", rerank=True)
        assert body["index_version"] == 3 and body["reranked"] >= 1
        found = {h["video_id"]: h["path"] for h in body["results"]}
        yellow = next(v for v, p in found.items() if p.endswith("yellow.mp4"))
        assert set(found) == {FIXTURE_IDS["red"], FIXTURE_IDS["blue"], yellow}
        assert all(Path(p).parent == videos for p in found.values())  # the rows of the renamed videos moved
        assert_scores_are_cosines(body["results"], data, checkpoint, "a yellow square")
        metrics = client.get("/metrics").text
        decoded = [line for line in metrics.splitlines()
                   if line.startswith('alpro_stage_seconds_count{stage="decode"}')]
        assert decoded and float(decoded[0].split()[-1]) == 0, decoded  # stored tokens of base and delta alike

    with DataDir(data).open_index() as snapshot:  # every segment of the three videos, its tokens too
        assert snapshot.tokens(snapshot.segment_ids()).shape == (6, *manifest.token_shape)
        assert np.all(np.isfinite(snapshot.vectors(snapshot.segment_ids())))
    assert (FIXTURE / "data" / "index" / "CURRENT").read_text() == "v000001\n"  # the fixture itself untouched
