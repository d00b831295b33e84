"""Search by image and by example moment, similar videos, zero-shot labels and grounded answers (issue 22), on
the real server over a library the real indexer built: solid-colour videos (two of them red), and a video that
shows four colours one second each, indexed as one-second segments. The tiny checkpoints are untrained, so the
tests check what holds for any weights: an image or moment identical to indexed content finds it first, scores
and probabilities match an independent computation with the model, limits and errors are the documented ones.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from indexer.discover import content_id  # noqa: E402
from model import Tokenizer, load_pretrained, load_video  # noqa: E402
from model.prompts import VIDEO_TEMPLATES  # noqa: E402
from tests.integration.test_service_support import (COLORS, index_videos, make_checkpoints,  # noqa: E402
                                                    run_server, write_colour_videos)

# file -> colour of each second
LIBRARY = {"red.mp4": ["red", "red"], "red-again.mp4": ["red", "red", "red"], "blue.mp4": ["blue", "blue"],
           "green.mp4": ["green", "green"], "mixed.mp4": ["red", "blue", "green", "yellow"],
           "short.mp4": ["yellow"]}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond-text")
    retrieval, qa = make_checkpoints(root / "checkpoints")
    videos = root / "videos"
    written = write_colour_videos(videos, LIBRARY)
    ids = {name: content_id(str(path)) for name, path in written.items()}
    index_videos(videos, root / "data", retrieval)
    return root, retrieval, qa, ids


@pytest.fixture(scope="module")
def server(library):
    from service.settings import Settings
    from tests.integration.test_service_support import backend_settings

    root, retrieval, qa, _ = library
    settings = Settings(data_dir=root / "data", qa_checkpoint=qa, index_poll_s=0.1, decode_workers=1,
                        max_image_bytes=64 * 1024, max_image_pixels=1_000_000, **backend_settings(root / "data"))
    with run_server(settings) as live:
        yield live


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _png(colour: str, size=(80, 60), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, COLORS[colour]).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _names(response) -> list[str]:
    return [hit["name"] for hit in response.json()["results"]]


def _segments(client, video_id: str) -> list[dict]:
    r = client.get(f"/videos/{video_id}")
    assert r.status_code == 200, r.text
    return r.json()["segments"]


# --- search by image ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_image_of_a_colour_finds_a_video_of_that_colour_first(client, fmt):
    r = client.post("/search", json={"image": _png("blue", fmt=fmt), "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_type"] == "image" and body["query"] is None and body["example_source"] is None
    # a still blue clip: the same input as blue.mp4's segments and mixed.mp4's second one (they tie)
    top = body["results"][0]
    assert (top["name"], top["segment_index"] if top["name"] == "mixed.mp4" else 1) in (("blue.mp4", 1),
                                                                                       ("mixed.mp4", 1))
    assert "blue.mp4" in _names(r)[:2]
    assert top["scored_by"] == "vtc" and top["score"] > 0.99


def test_an_image_as_a_data_url_with_line_breaks_is_the_same_query(client):
    plain = client.post("/search", json={"image": _png("green"), "top_k": 2}).json()
    data = _png("green")
    wrapped = "data:image/png;base64," + "\n".join(data[i:i + 76] for i in range(0, len(data), 76))
    r = client.post("/search", json={"image": wrapped, "top_k": 2})
    assert r.status_code == 200, r.text
    assert [h["video_id"] for h in r.json()["results"]] == [h["video_id"] for h in plain["results"]]


@pytest.mark.parametrize("image, status, code", [
    ("not base64 !!", 422, "invalid_image"),
    (base64.b64encode(b"GIF89a" + b"\0" * 64).decode(), 422, "invalid_image"),
    (base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode(), 422, "invalid_image"),  # a cut-off PNG
    (_png("red", size=(2000, 1000)), 413, "image_too_large"),  # small file, 2 megapixels: over the pixel limit
    (base64.b64encode(np.random.default_rng(0).bytes(70 * 1024)).decode(), 413, "image_too_large"),  # over 64 KiB
])
def test_bad_images_get_a_clear_error(client, image, status, code):
    r = client.post("/search", json={"image": image})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["message"].startswith("image: ")


def test_a_body_past_the_image_limit_is_refused_before_it_is_read(client, server):
    limit = server.engine.settings.search_body_bytes
    r = client.post("/search", content=b'{"image": "' + b"A" * limit + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    # other routes keep the plain limit
    r = client.post("/qa", content=b'{"question": "' + b"a" * 20_000 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("body", [
    {}, {"top_k": 3}, {"query": "red", "image": "AAAA"}, {"query": "red", "example": {"video_id": "a", "start": 0, "end": 1}},
    {"image": "AAAA", "rerank": True}, {"example": {"video_id": "abc", "start": 0, "end": 1}, "rerank": 5},
    {"example": {"video_id": "abc", "start": 2, "end": 1}}, {"example": {"video_id": "abc", "start": -1, "end": 1}},
    {"example": {"video_id": "../etc", "start": 0, "end": 1}}, {"query": "red", "min_score": 1.5},
])
def test_anything_but_exactly_one_query_is_a_422(client, body):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"


# --- search by example ----------------------------------------------------------------------------------------


def test_an_indexed_moment_searches_with_its_stored_vector(client, library):
    *_, ids = library
    segment = _segments(client, ids["mixed.mp4"])[2]  # the green second
    r = client.post("/search", json={"example": {"video_id": ids["mixed.mp4"], "start": segment["start"],
                                                 "end": segment["end"]}, "top_k": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_type"] == "example" and body["example_source"] == "index"
    top = body["results"][0]
    # itself, at cosine 1 (or green.mp4, whose frames are the same colour, tied with it)
    assert top["name"] in ("mixed.mp4", "green.mp4") and top["vtc_score"] == pytest.approx(1.0, abs=1e-3)
    mixed = next(h for h in body["results"] if h["name"] == "mixed.mp4")
    assert mixed["segment_index"] == 2 and mixed["vtc_score"] == pytest.approx(1.0, abs=1e-3)


def test_a_window_that_is_no_segment_is_decoded_and_finds_its_colour(client, library):
    *_, ids = library
    r = client.post("/search", json={"example": {"video_id": ids["mixed.mp4"], "start": 1.1, "end": 1.9},
                                     "top_k": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["example_source"] == "decoded"
    top = body["results"][0]
    # the blue second of mixed.mp4 or blue.mp4: both are the still blue clip the window decodes to
    assert (top["name"], top["segment_index"] if top["name"] == "mixed.mp4" else 0) in (("mixed.mp4", 1),
                                                                                       ("blue.mp4", 0))
    assert top["vtc_score"] > 0.99


@pytest.mark.parametrize("window, status", [((5.0, 6.0), 422), ((1.0, 9.0), 422)])
def test_an_example_outside_the_video_is_a_422(client, library, window, status):
    *_, ids = library
    r = client.post("/search", json={"example": {"video_id": ids["blue.mp4"], "start": window[0], "end": window[1]}})
    assert r.status_code == status, r.text
    assert "past the end" in r.json()["message"]


def test_an_example_of_an_unknown_video_is_a_404(client):
    r = client.post("/search", json={"example": {"video_id": "f" * 32, "start": 0, "end": 1}})
    assert r.status_code == 404 and r.json()["error"] == "video_not_found"


def test_min_score_cuts_the_results_and_their_pages(client):
    everything = client.post("/search", json={"image": _png("red"), "top_k": 10}).json()["results"]
    scores = [h["score"] for h in everything]
    # the cut falls in the first clear gap (the red videos tie near 1)
    keep = next(i + 1 for i in range(len(scores) - 1) if scores[i] - scores[i + 1] > 1e-3)
    assert 2 <= keep < len(scores)
    cut = (scores[keep - 1] + scores[keep]) / 2
    r = client.post("/search", json={"image": _png("red"), "top_k": 10, "min_score": cut})
    assert r.status_code == 200, r.text
    assert {h["video_id"] for h in r.json()["results"]} == {h["video_id"] for h in everything[:keep]}
    assert r.json()["next_cursor"] is None
    page = client.post("/search", json={"image": _png("red"), "top_k": keep - 1, "min_score": cut}).json()
    assert page["next_cursor"] is not None
    second = client.post("/search", json={"image": _png("red"), "top_k": keep - 1, "min_score": cut,
                                          "cursor": page["next_cursor"]}).json()
    assert len(second["results"]) == 1 and second["results"][0]["score"] >= cut
    assert {h["video_id"] for h in page["results"] + second["results"]} == {h["video_id"] for h in everything[:keep]}
    assert second["next_cursor"] is None
    # a cursor is bound to its query: another image, or another cutoff, is refused
    for other in ({"image": _png("blue")}, {"image": _png("red"), "min_score": 0.1}):
        r = client.post("/search", json={**other, "top_k": 1, "cursor": page["next_cursor"]})
        assert r.status_code == 422 and "cursor" in r.json()["message"]


# --- similar videos ---------------------------------------------------------------------------------------


def test_similar_videos_leave_the_video_out_and_put_its_twin_first(client, library):
    *_, ids = library
    r = client.get(f"/videos/{ids['red.mp4']}/similar", params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_type"] == "video" and body["query"] is None
    names = _names(r)
    assert len(names) == 3 and "red.mp4" not in names
    assert names[0] in ("red-again.mp4", "mixed.mp4")  # the same red frames: cosine 1
    assert body["results"][0]["vtc_score"] == pytest.approx(1.0, abs=1e-3)
    mixed = next((h for h in body["results"] if h["name"] == "mixed.mp4"), None)
    if mixed is not None:  # its red second is the moment that matched
        assert mixed["moments"][0]["segment_index"] == 0
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_similar_takes_a_cutoff_and_refuses_unknown_videos(client, library):
    *_, ids = library
    r = client.get(f"/videos/{ids['red.mp4']}/similar", params={"top_k": 10, "min_score": 0.999})
    assert r.status_code == 200
    assert all(h["score"] >= 0.999 for h in r.json()["results"]) and "blue.mp4" not in _names(r)
    assert client.get(f"/videos/{'0' * 32}/similar").status_code == 404
    for params in ({"top_k": 0}, {"top_k": 101}, {"min_score": 2}, {"top_k": "x"}):
        r = client.get(f"/videos/{ids['red.mp4']}/similar", params=params)
        assert r.status_code == 422, params


# --- zero-shot labels -----------------------------------------------------------------------------------------


def _expected_label_scores(library, data: Path, video_id: str, labels: list[str], templates) -> np.ndarray:
    """Each label's probability for a video, computed here from the model and the stored vectors: the reference's
    prompt ensemble, the label's best segment, softmax over labels with the model's temperature."""
    from store.layout import DataDir

    _, retrieval, *_ = library
    model = load_pretrained(retrieval).eval()
    tokenizer = Tokenizer.from_config(model.config)
    with torch.no_grad():
        feats = []
        for label in labels:
            ids, mask = tokenizer([t.format(label) for t in templates])
            feats.append(model.encode_text(ids, mask).mean(0))
        prompts = torch.stack(feats).numpy()  # (L, D)
    data_dir = DataDir(data)
    with data_dir.open_index(data_dir.current_version()) as snapshot:
        segment_ids = [s for s in snapshot.segment_ids().tolist() if snapshot.locate([s])[0][0] == video_id]
        vectors = snapshot.vectors(segment_ids)
    best = (vectors @ prompts.T).max(axis=0)
    logits = best / model.temperature
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


def test_labels_for_a_video_are_the_prompt_ensembles_softmax(client, library):
    root, _, _, ids = library
    labels = ["red", "blue", "green square", "a yellow thing"]
    r = client.post("/classify", json={"labels": labels, "video_id": ids["mixed.mp4"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["video_id"] == ids["mixed.mp4"] and body["templates"] == len(VIDEO_TEMPLATES)
    got = {row["label"]: row["probability"] for row in body["labels"]}
    assert sorted(got) == sorted(labels)
    probabilities = [row["probability"] for row in body["labels"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    from tests.integration.test_service_support import backend_settings
    if backend_settings(root / "data").get("vector_store") != "pgvector":  # the vectors read from the FAISS files
        expected = _expected_label_scores(library, root / "data", ids["mixed.mp4"], labels, VIDEO_TEMPLATES)
        assert [got[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-4)
    for row in body["labels"]:
        assert 0 <= row["moment"]["start"] < row["moment"]["end"] <= 4.0 + 1e-6 and row["videos"] == []


def test_own_templates_change_the_prompts(client, library):
    *_, ids = library
    default = client.post("/classify", json={"labels": ["red", "blue"], "video_id": ids["mixed.mp4"]}).json()
    own = client.post("/classify", json={"labels": ["red", "blue"], "video_id": ids["mixed.mp4"],
                                         "templates": ["{} paint", "the colour {}"]}).json()
    assert own["templates"] == 2
    assert {r["label"]: r["probability"] for r in own["labels"]} != pytest.approx(
        {r["label"]: r["probability"] for r in default["labels"]})


def test_labels_over_the_library_list_each_labels_top_videos(client):
    r = client.post("/classify", json={"labels": ["red", "blue", "green"], "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["video_id"] is None and [row["label"] for row in body["labels"]] == ["red", "blue", "green"]
    for row in body["labels"]:
        assert row["probability"] is None and 1 <= len(row["videos"]) <= 2
        assert len({v["video_id"] for v in row["videos"]}) == len(row["videos"])
        for video in row["videos"]:
            assert 0 <= video["probability"] <= 1 and video["moments"]


@pytest.mark.parametrize("body, status", [
    ({"labels": []}, 422), ({"labels": ["x"] * 2}, 422), ({"labels": [f"l{i}" for i in range(101)]}, 422),
    ({"labels": [" "]}, 422), ({"labels": ["x" * 101]}, 422), ({"labels": ["a"], "templates": []}, 422),
    ({"labels": ["a"], "templates": ["no slot"]}, 422), ({"labels": ["a"], "templates": ["{} and {}"]}, 422),
    ({"labels": ["a"], "templates": ["{0} x"]}, 422), ({"labels": ["a"], "top_k": 51}, 422),
    ({"labels": [f"l{i}" for i in range(100)], "templates": [f"{{}} {i}" for i in range(13)]}, 422),
    ({"labels": ["a"], "video_id": "0" * 32}, 404), ({"labels": ["a"], "video_id": "../x"}, 422),
    ({"labels": "red"}, 422), ({"labels": ["a"], "unknown": 1}, 422),
])
def test_bad_label_requests_get_a_clear_error(client, body, status):
    r = client.post("/classify", json=body)
    assert r.status_code == status, r.text
    assert r.json()["message"]


# --- grounded answers -----------------------------------------------------------------------------------------


def test_a_long_video_is_answered_on_its_best_segments_with_moments(client, library, server):
    root, _, qa_path, ids = library
    r = client.post("/qa", json={"video_id": ids["mixed.mp4"], "question": "what colour is it?",
                                 "min_confidence": 0, "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grounded"] is True and body["abstained"] is False
    examined = body["moments"]
    assert len(examined) == server.engine.settings.qa_segments
    assert [m["similarity"] for m in examined] == sorted((m["similarity"] for m in examined), reverse=True)
    assert {m["segment_index"] for m in examined} <= {0, 1, 2, 3}
    scores = [a["score"] for a in body["answers"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    # each answer's score is the QA model's answer mixed over the examined segments by the VTC softmax of their
    # similarities (the retrieval model's temperature), its moment the segment that gives it most: computed here
    _, retrieval_path, *_ = library
    temperature = load_pretrained(retrieval_path).temperature
    qa = load_pretrained(qa_path).eval()
    tokenizer = Tokenizer.from_config(qa.config)
    ids_, mask = tokenizer(["what colour is it?"])
    per_segment = []
    for moment in examined:
        clip = load_video(root / "videos" / "mixed.mp4", qa.config, window=(moment["start"], moment["end"]))
        with torch.no_grad():
            per_segment.append(qa.answer_logits(clip[None], ids_, mask).softmax(-1)[0].numpy())
    probs = np.stack(per_segment)  # (segments, answers)
    logits = np.array([m["similarity"] for m in examined]) / temperature
    weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for answer in body["answers"]:
        index = list(qa.config.answers).index(answer["answer"])
        assert answer["score"] == pytest.approx(float(weights @ probs[:, index]), abs=2e-3)
        support = examined[int((weights * probs[:, index]).argmax())]
        assert answer["moment"]["segment_index"] == support["segment_index"]


def test_a_grounded_answer_abstains_below_the_threshold(client, library, server):
    *_, ids = library
    r = client.post("/qa", json={"video_id": ids["mixed.mp4"], "question": "what colour is it?",
                                 "min_confidence": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["abstained"] is True and r.json()["answers"] == [] and r.json()["min_confidence"] == 1.0
    r = client.post("/qa", json={"video_id": ids["mixed.mp4"], "question": "what colour is it?"})
    default = server.engine.settings.qa_min_confidence
    assert r.json()["min_confidence"] == default
    assert r.json()["abstained"] == (not r.json()["answers"])


def test_a_one_segment_video_is_answered_whole_as_before(client, library):
    *_, ids = library
    r = client.post("/qa", json={"video_id": ids["short.mp4"], "question": "what colour is it?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grounded"] is False and body["abstained"] is False and body["min_confidence"] is None
    assert body["answers"] and all(a["moment"] is None for a in body["answers"]) and body["moments"] == []
    r = client.post("/qa", json={"video_id": ids["short.mp4"], "question": "what colour is it?", "min_confidence": 1})
    assert r.json()["abstained"] is True and r.json()["answers"] == []
    r = client.post("/qa", json={"video_id": ids["short.mp4"], "question": "what?", "min_confidence": -0.1})
    assert r.status_code == 422
