"""The library as the API shows it, over a library the real indexer indexed (sub-folders, an AVI that gets
a browser preview, a file that fails): GET /videos (pages, sorts, filters), GET /failures, previews with range
requests, paths relative to the library, and search scores on one documented scale with their moments."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.test_service_support import COLORS, make_checkpoints, run_server
from tests.pg_server import backend_settings
from tests.video_factory import solid_frames, write_video

# relative path -> (seconds, codec); 10 fps, 64 x 48 (not square: the preview keeps the aspect)
LIBRARY = {"a/red.mp4": (2.0, "h264"), "b/blue.mp4": (3.0, "h264"), "b/deep/green.mp4": (4.0, "h264"),
           "yellow.avi": (2.5, "mpeg4")}
BROKEN = "b/broken.mp4"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    root = tmp_path_factory.mktemp("library")
    retrieval, _ = make_checkpoints(root / "checkpoints")
    videos = root / "videos"
    for rel, (seconds, codec) in LIBRARY.items():
        color = COLORS[Path(rel).stem]
        frames = solid_frames([color] * int(seconds * 10), width=64, height=48)
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(videos / rel, len(frames), codec=codec, fps=10, width=64, height=48, frames=frames)
    (videos / BROKEN).write_bytes(b"not a video at all" * 100)
    summary = run_index(IndexSettings(videos_dir=videos, data_dir=root / "data", checkpoint=retrieval,
                                      segment_seconds=1.0, num_workers=0, progress=False, store_tokens=True,
                                      **backend_settings(root / "data")))
    assert summary.failed == 1 and summary.published, summary.to_dict()
    return root, videos.resolve()


@pytest.fixture(scope="module")
def live(library):
    from service.settings import Settings

    root, _ = library
    with run_server(Settings(data_dir=root / "data", index_poll_s=0.1, decode_workers=1,
                             **backend_settings(root / "data"))) as server:
        yield server


def _get(live, path: str, **params) -> httpx.Response:
    return httpx.get(live.url + path, params=params, timeout=30)


def _all_videos(live, **params) -> list[dict]:
    body = _get(live, "/videos", limit=200, **params).json()
    assert body["total"] == len(body["videos"])
    return body["videos"]


def test_videos_lists_the_library_with_relative_paths(live, library):
    _, videos = library
    listed = _all_videos(live)
    assert [v["relative_path"] for v in listed] == sorted(LIBRARY)  # default: by path, ascending
    for v in listed:
        seconds, codec = LIBRARY[v["relative_path"]]
        assert v["path"] == str(videos / v["relative_path"])
        assert v["name"] == Path(v["relative_path"]).name
        assert v["duration_s"] == pytest.approx(seconds, abs=0.15)
        assert v["segments"] == round(seconds + 0.49)  # 1-second moments, the last one may be short
        assert v["thumbnail_url"] and _get(live, v["thumbnail_url"]).headers["content-type"] == "image/jpeg"
        assert v["stream_url"] == f"/videos/{v['video_id']}/stream"


def test_videos_sort_both_ways_and_page_without_overlap(live):
    by_duration = [v["relative_path"] for v in _all_videos(live, sort="duration", order="desc")]
    assert by_duration == sorted(LIBRARY, key=lambda rel: -LIBRARY[rel][0])
    assert [v["relative_path"] for v in _all_videos(live, sort="path", order="desc")] == sorted(LIBRARY, reverse=True)
    assert len(_all_videos(live, sort="indexed_at", order="desc")) == len(LIBRARY)
    pages = [_get(live, "/videos", limit=1, offset=i, sort="size").json() for i in range(len(LIBRARY) + 1)]
    assert all(p["total"] == len(LIBRARY) for p in pages)
    assert sorted(p["videos"][0]["relative_path"] for p in pages[:-1]) == sorted(LIBRARY)
    assert pages[-1]["videos"] == []


def test_videos_filter_by_folder_and_duration(live, library):
    _, videos = library
    in_b = {v["relative_path"] for v in _all_videos(live, path_prefix=str(videos / "b"))}
    assert in_b == {"b/blue.mp4", "b/deep/green.mp4"}
    assert {v["relative_path"] for v in _all_videos(live, path_prefix=str(videos / "b") + "/")} == in_b
    # whole path components: a prefix of a file name is not its folder
    assert _all_videos(live, path_prefix=str(videos / "b" / "blu")) == []
    assert [v["relative_path"] for v in _all_videos(live, path_prefix=str(videos / "b" / "blue.mp4"))] == [
        "b/blue.mp4"]
    assert {v["relative_path"] for v in _all_videos(live, min_duration=2.4, max_duration=3.5)} == {
        "b/blue.mp4", "yellow.avi"}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"sort": "colour"},
                                    {"order": "up"}, {"min_duration": 5, "max_duration": 1},
                                    {"min_duration": "nan"}, {"path_prefix": ""}])
def test_videos_refuses_bad_parameters(live, params):
    r = _get(live, "/videos", **params)
    assert r.status_code == 422, r.text
    assert set(r.json()) >= {"error", "message"} and r.json()["message"]


def test_failures_name_the_file_the_reason_and_when(live):
    body = _get(live, "/failures").json()
    assert body["total"] == 1
    (failure,) = body["failures"]
    assert failure["relative_path"] == BROKEN and failure["name"] == "broken.mp4"
    assert failure["reason"] and failure["error_type"] and failure["recorded_at"]
    assert _get(live, "/stats").json()["failures"] == 1


def test_a_file_browsers_cannot_play_has_a_preview_served_with_ranges(live):
    videos = {v["relative_path"]: v for v in _all_videos(live)}
    avi, mp4 = videos["yellow.avi"], videos["a/red.mp4"]
    assert avi["preview_url"] == f"/videos/{avi['video_id']}/preview"
    assert mp4["preview_url"] is None  # the original plays as it is
    detail = _get(live, f"/videos/{avi['video_id']}").json()
    assert detail["preview_url"] == avi["preview_url"] and detail["codec"] == "mpeg4"
    whole = _get(live, avi["preview_url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content[4:8] == b"ftyp"  # an MP4, not the AVI
    part = httpx.get(live.url + avi["preview_url"], headers={"Range": "bytes=0-99"}, timeout=30)
    assert part.status_code == 206 and len(part.content) == 100 and part.content == whole.content[:100]
    missing = _get(live, f"/videos/{mp4['video_id']}/preview")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_search_scores_are_relevance_from_0_to_1_and_say_what_they_are(live):
    plain = httpx.post(live.url + "/search", json={"query": "a red square", "top_k": 4}, timeout=30).json()
    assert len(plain["results"]) == len(LIBRARY)
    for hit in plain["results"]:
        assert hit["scored_by"] == "vtc" and hit["vtm_score"] is None
        assert 0 <= hit["score"] <= 1 and hit["score"] == pytest.approx((1 + hit["vtc_score"]) / 2)
        assert hit["relative_path"] in LIBRARY
    scores = [h["score"] for h in plain["results"]]
    assert scores == sorted(scores, reverse=True)

    reranked = httpx.post(live.url + "/search", json={"query": "a red square", "top_k": 4, "rerank": 2},
                          timeout=60).json()
    assert reranked["reranked"] == 2
    top, rest = reranked["results"][:2], reranked["results"][2:]
    assert all(h["scored_by"] == "vtm" and 0 <= h["vtm_score"] <= 1 and 0 <= h["score"] <= 1 for h in top)
    assert top[0]["score"] >= top[1]["score"]
    assert all(h["scored_by"] == "vtc" for h in rest)


def test_each_result_lists_its_moments_best_first(live):
    body = httpx.post(live.url + "/search", json={"query": "a green square", "top_k": 4}, timeout=30).json()
    for hit in body["results"]:
        seconds = LIBRARY[hit["relative_path"]][0]
        moments = hit["moments"]
        assert 1 <= len(moments) <= min(5, round(seconds + 0.49))
        assert (moments[0]["start"], moments[0]["end"], moments[0]["segment_index"]) == (
            hit["start"], hit["end"], hit["segment_index"])
        assert moments[0]["similarity"] == pytest.approx(hit["vtc_score"], abs=1e-5)
        assert all(0 <= m["start"] < m["end"] <= seconds + 0.15 for m in moments)
        assert len({m["segment_index"] for m in moments}) == len(moments)
        sims = [m["similarity"] for m in moments]
        assert sims == sorted(sims, reverse=True)
