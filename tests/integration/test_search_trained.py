"""End to end with trained tiny checkpoints: alpro-index's pipeline over real mp4s, the real server over
HTTP; a test caption finds its own video, and /qa answers questions about it above chance."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.integration.test_service_support import index_videos, run_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(trained_retrieval_checkpoint, trained_qa_checkpoint, tmp_path_factory):
    corpus = trained_retrieval_checkpoint.corpus
    videos = tmp_path_factory.mktemp("library")
    for video in corpus.test:
        shutil.copy2(video.path, videos / video.path.name)  # a symlink out of the library would not be indexed
    data = tmp_path_factory.mktemp("data")
    index_videos(videos, data, trained_retrieval_checkpoint.path)
    from service.settings import Settings

    settings = Settings(data_dir=data, qa_checkpoint=trained_qa_checkpoint.path, index_poll_s=60)
    with run_server(settings) as live:
        yield live, corpus


def test_search_finds_the_captioned_video(served):
    live, corpus = served
    ranks = []
    with httpx.Client(base_url=live.url, timeout=120) as client:
        for video in corpus.test:
            response = client.post("/search", json={"query": video.caption, "top_k": 12})
            assert response.status_code == 200, response.text
            names = [Path(hit["path"]).name for hit in response.json()["results"]]
            ranks.append(names.index(video.path.name) + 1 if video.path.name in names else 99)
    n = len(ranks)
    r1 = sum(r == 1 for r in ranks) / n
    # Chance R@1 over 12 videos is 8%; the fixture's own evaluation demands 75%.
    assert r1 >= 0.5, f"ranks {ranks}"
    assert sum(r <= 3 for r in ranks) / n >= 0.75, f"ranks {ranks}"


def test_qa_answers_above_chance(served):
    live, corpus = served
    asked = right = 0
    with httpx.Client(base_url=live.url, timeout=120) as client:
        for video in corpus.test:
            hits = client.post("/search", json={"query": video.caption, "top_k": 12}).json()["results"]
            video_id = next(h["video_id"] for h in hits if Path(h["path"]).name == video.path.name)
            for pair in video.qa:
                response = client.post("/qa", json={"video_id": video_id, "question": pair["question"], "top_k": 1})
                assert response.status_code == 200, response.text
                asked += 1
                right += response.json()["answers"][0]["answer"] == pair["answer"]
    assert asked > 0 and right / asked >= 0.4, f"{right}/{asked}"
