"""HOOK for a trained checkpoint: search finds the right video for its caption (and QA answers right).

Random weights cannot rank by meaning, so these run only when a trained checkpoint is given:

    ALPRO_TEST_TRAINED_CHECKPOINT=checkpoints/synth-ret        # native retrieval checkpoint (required)
    ALPRO_TEST_TRAINED_QA_CHECKPOINT=checkpoints/synth-qa      # native QA checkpoint (optional)
    ALPRO_TEST_SYNTH_CORPUS=data/synth                         # alpro-synth corpus (default: generated here)
    ALPRO_TEST_MIN_R1=0.5 ALPRO_TEST_MIN_R5=0.9 ALPRO_TEST_MIN_QA_ACC=0.5   # thresholds

The corpus' test split is indexed with the real indexer and served by the real server; every caption is
a query and every QA pair a question.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import index_videos, run_server  # noqa: E402

TRAINED = os.environ.get("ALPRO_TEST_TRAINED_CHECKPOINT")
TRAINED_QA = os.environ.get("ALPRO_TEST_TRAINED_QA_CHECKPOINT")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not TRAINED, reason="set ALPRO_TEST_TRAINED_CHECKPOINT to a trained retrieval checkpoint")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    given = os.environ.get("ALPRO_TEST_SYNTH_CORPUS")
    if given:
        return Path(given)
    from training.synth import CorpusConfig, generate_corpus

    out = tmp_path_factory.mktemp("synth")
    generate_corpus(out, CorpusConfig(seed=1234, videos=60, test_videos=20, val_videos=0), workers=1)
    return out


@pytest.fixture(scope="module")
def served(corpus, tmp_path_factory):
    """The test split's videos indexed with the trained checkpoint, one moment per clip."""
    rows = [json.loads(line) for line in (corpus / "annotations" / "test.jsonl").read_text().splitlines()]
    videos = tmp_path_factory.mktemp("test_videos")
    for row in rows:
        (videos / Path(row["video"]).name).symlink_to((corpus / row["video"]).resolve())
    data = tmp_path_factory.mktemp("data")
    index_videos(videos, data, Path(TRAINED))
    from service.settings import Settings

    settings = Settings(data_dir=data, qa_checkpoint=TRAINED_QA, index_poll_s=60)
    with run_server(settings) as live:
        yield live, rows


def test_search_finds_the_captioned_video(served):
    live, rows = served
    r1 = r5 = 0
    with httpx.Client(base_url=live.url, timeout=60) as c:
        for row in rows:
            results = c.post("/search", json={"query": row["caption"], "top_k": 5}).json()["results"]
            names = [Path(h["path"]).name for h in results]
            target = Path(row["video"]).name
            r1 += names[:1] == [target]
            r5 += target in names
    n = len(rows)
    assert r1 / n >= float(os.environ.get("ALPRO_TEST_MIN_R1", "0.5")), f"R@1 {r1}/{n}, R@5 {r5}/{n}"
    assert r5 / n >= float(os.environ.get("ALPRO_TEST_MIN_R5", "0.9")), f"R@1 {r1}/{n}, R@5 {r5}/{n}"


@pytest.mark.skipif(not TRAINED_QA, reason="set ALPRO_TEST_TRAINED_QA_CHECKPOINT to a trained QA checkpoint")
def test_qa_answers_questions_about_the_video(served, corpus):
    live, rows = served
    qa = [json.loads(line) for line in (corpus / "annotations" / "qa_test.jsonl").read_text().splitlines()]
    with httpx.Client(base_url=live.url, timeout=60) as c:
        ids = {}
        for row in rows:
            hit = c.post("/search", json={"query": row["caption"], "top_k": 20}).json()["results"]
            ids.update({Path(h["path"]).name: h["video_id"] for h in hit})
        asked = right = 0
        for pair in qa:
            video_id = ids.get(Path(pair["video"]).name)
            if video_id is None:
                continue
            answers = c.post("/qa", json={"video_id": video_id, "question": pair["question"], "top_k": 1}).json()
            asked += 1
            right += answers["answers"][0]["answer"] == pair["answer"]
    assert asked and right / asked >= float(os.environ.get("ALPRO_TEST_MIN_QA_ACC", "0.5")), f"{right}/{asked}"
