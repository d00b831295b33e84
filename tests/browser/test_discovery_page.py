"""The page's discovery features (issue 22, docs/beyond_text.md) in headless Chromium over a real indexed library:
search with an image (and a file that is not one), "More from this moment" (from a search result and from a
library video), the similar-videos row, zero-shot labels, and grounded answers whose moment seeks the video (and
a server that abstains). The checkpoints are tiny and untrained: the test checks behaviour (the requests the page
makes, what it shows, where the video seeks), not which video ranks first. Screenshots go to
$ALPRO_SCREENSHOT_DIR (CI keeps them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.chromium import CHROMEDRIVER, CHROMIUM, MISSING, screenshot_dir, wait_for
from tests.integration.test_service_support import COLORS, make_checkpoints, run_server, write_colour_videos

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)

# relative path -> colours, one per second (10 fps, 1-second segments): long.mp4 is indexed as 4 segments
FILES = {"long.mp4": ["red", "blue", "green", "yellow"], "red.mp4": ["red", "red"], "blue.mp4": ["blue", "blue"],
         "green.mp4": ["green", "green"]}

# every request the page makes, recorded (POST bodies parsed) before it goes out
RECORD_REQUESTS = """
    window.__requests = [];
    const send = window.fetch;
    window.fetch = (url, init) => {
        const body = init && init.body ? JSON.parse(init.body) : null;
        window.__requests.push({url: String(url), method: (init && init.method) || 'GET', body});
        return send(url, init);
    };"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    root = tmp_path_factory.mktemp("discovery-library")
    retrieval, qa = make_checkpoints(root / "checkpoints")
    videos = root / "videos"
    write_colour_videos(videos, FILES, width=96, height=64)
    summary = run_index(IndexSettings(videos_dir=videos, data_dir=root / "data", checkpoint=retrieval,
                                      segment_seconds=1.0, num_workers=0, progress=False))
    assert summary.failed == 0 and summary.published, summary.to_dict()
    return root, qa


def _settings(root: Path, qa: Path, min_confidence: float):
    from service.settings import Settings

    return Settings(data_dir=root / "data", qa_checkpoint=qa, qa_min_confidence=min_confidence, index_poll_s=0.1,
                    decode_workers=1)


def _shot(driver, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(screenshot_dir(tmp_path) / name))


def _requests(driver, path: str) -> list[dict]:
    return [r for r in driver.execute_script("return window.__requests") if r["url"].split("?")[0] == path]


def _choose_file(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "image-file").send_keys(str(path))


def _open_card(driver, selector: str, name: str) -> str:
    """Click the card of `name` under `selector`; wait until the player plays it; return its video id."""
    from selenium.webdriver.common.by import By

    card = next(c for c in driver.find_elements(By.CSS_SELECTOR, selector)
                if c.find_element(By.CSS_SELECTOR, ".name").text == name)
    video_id = card.get_attribute("data-video-id")
    card.click()
    wait_for(driver, "!document.getElementById('player').hidden", what="the player")
    state = wait_for(driver, f"""(() => {{
        const v = document.getElementById('video');
        if (v.error) return 'error ' + v.error.code;
        // playing (or played to its end): the page's loadedmetadata handler has seeked to the moment and played
        return v.dataset.videoId === {json.dumps(video_id)} && v.readyState >= 2 && (!v.paused || v.ended)
            ? 'loaded' : null;
    }})()""", timeout=30, what=f"{name} to load")
    assert state == "loaded"
    return video_id


def _park(driver, t: float) -> None:
    """Pause the video at `t` seconds (away from a moment the page should seek to)."""
    driver.execute_script(f"const v = document.getElementById('video'); v.pause(); v.currentTime = {t};")
    wait_for(driver, f"(() => {{ const v = document.getElementById('video');"
                     f" return !v.seeking && Math.abs(v.currentTime - {t}) < 0.05; }})()", what=f"the seek to {t}")


def _seeks_to(driver, start: float) -> float:
    """Wait until the video is at `start` (or just past it, playing on); return its time."""
    return wait_for(driver, f"""(() => {{
        const v = document.getElementById('video');
        return !v.seeking && v.currentTime >= {start} - 0.05 && v.currentTime < {start} + 0.6 ? v.currentTime : null;
    }})()""", what=f"the video to seek to {start}")


def _no_severe_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_image_search_more_from_this_moment_similar_labels_and_grounded_answers(browser, library, tmp_path):
    import httpx
    from PIL import Image
    from selenium.webdriver.common.by import By

    root, qa = library
    picture = tmp_path / "red-square.png"
    Image.new("RGB", (80, 60), COLORS["red"]).save(picture)
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("these are notes, not a picture\n")

    with run_server(_settings(root, qa, 0.0)) as live:
        browser.get(live.url + "/")
        wait_for(browser, "document.querySelectorAll('#library-videos .card').length === 4", what="library cards")
        browser.execute_script(RECORD_REQUESTS)

        # a file that is no image: the API's own message, no results
        _choose_file(browser, not_a_picture)
        wait_for(browser, "document.getElementById('status').classList.contains('error')", what="the image error")
        expected = httpx.post(live.url + "/search", json=_requests(browser, "/search")[-1]["body"]).json()
        assert expected["error"] == "invalid_image", expected
        status = browser.find_element(By.ID, "status").text
        assert status.startswith("Image search (notes.png)") and expected["message"] in status, status
        assert browser.find_elements(By.CSS_SELECTOR, "#results .card") == []
        failed = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert len(failed) == 1 and "422" in failed[0]["message"], failed  # the refused request, nothing else

        # a PNG: /search with `image` (a data: URL), the form's top_k, no text; results as for text
        _choose_file(browser, picture)
        wait_for(browser, "document.querySelectorAll('#results .card').length === 4", what="4 image results")
        body = _requests(browser, "/search")[-1]["body"]
        assert body["image"].startswith("data:image/png;base64,") and "query" not in body and body["top_k"] == 20
        assert browser.execute_script("return document.getElementById('results').dataset.queryType") == "image"
        status = browser.find_element(By.ID, "status").text
        assert status.startswith("Image search (red-square.png): 4 videos"), status
        assert browser.find_element(By.ID, "image-preview").is_displayed()
        assert not browser.find_element(By.ID, "status").get_attribute("class").count("error")
        wait_for(browser, "Array.from(document.querySelectorAll('#results .card img'))"
                          ".every(img => img.complete && img.naturalWidth > 0)", what="thumbnails loaded")
        _shot(browser, "image-search.png", tmp_path)

        # the long video from the image's results: its similar videos fill the row (not itself, at most 6)
        long_id = _open_card(browser, "#results .card", "long.mp4")
        wait_for(browser, "document.querySelectorAll('#similar .card').length === 3", what="3 similar videos")
        assert _requests(browser, f"/videos/{long_id}/similar")[-1]["url"].endswith("?top_k=6")
        similar = {c.find_element(By.CSS_SELECTOR, ".name").text: c.get_attribute("data-video-id")
                   for c in browser.find_elements(By.CSS_SELECTOR, "#similar .card")}
        assert sorted(similar) == ["blue.mp4", "green.mp4", "red.mp4"] and long_id not in similar.values()
        wait_for(browser, "Array.from(document.querySelectorAll('#similar .card img'))"
                          ".every(img => img.complete && img.naturalWidth > 0)", what="similar thumbnails loaded")
        browser.execute_script("document.getElementById('similar-section').scrollIntoView({block: 'end'})")
        _shot(browser, "similar.png", tmp_path)

        # labels: one row per label, probabilities summing to 100 %; a row seeks to the label's moment
        browser.find_element(By.ID, "labels").send_keys("red, blue")
        browser.find_element(By.ID, "classify").click()
        wait_for(browser, "document.querySelectorAll('#label-results .label-row').length === 2", what="2 labels")
        assert _requests(browser, "/classify")[-1]["body"] == {"labels": ["red", "blue"], "video_id": long_id}
        rows = browser.find_elements(By.CSS_SELECTOR, "#label-results .label-row")
        assert sorted(r.find_element(By.CSS_SELECTOR, ".label-name").text for r in rows) == ["blue", "red"]
        shown = [float(r.find_element(By.CSS_SELECTOR, ".pct").text.rstrip("%")) for r in rows]
        assert abs(sum(shown) - 100) <= 0.2 and shown == sorted(shown, reverse=True), shown
        start = float(rows[0].get_attribute("data-start"))
        _park(browser, 3.5 if start < 3 else 0.5)
        rows[0].click()
        _seeks_to(browser, start)
        assert browser.find_elements(By.CSS_SELECTOR, "#timeline .mark.spot")
        _shot(browser, "classify.png", tmp_path)

        # a grounded answer: its moment is a button that seeks the video there and marks it on the timeline
        browser.find_element(By.ID, "question").send_keys("what color is it?")
        browser.find_element(By.ID, "ask").click()
        wait_for(browser, "document.querySelectorAll('#answers li').length === 5", what="5 answers")
        note = browser.find_element(By.ID, "qa-note")
        assert note.is_displayed() and "part" in note.text, note.text
        moments = browser.find_elements(By.CSS_SELECTOR, "#answers li .answer-moment")
        assert len(moments) == 5
        start, end = (float(moments[0].get_attribute(a)) for a in ("data-start", "data-end"))
        assert 0 <= start < end <= 4.05
        _park(browser, 3.5 if start < 3 else 0.5)
        moments[0].click()
        _seeks_to(browser, start)
        spot = browser.find_element(By.CSS_SELECTOR, "#timeline .mark.spot")
        duration = browser.execute_script("return document.getElementById('video').duration")
        assert abs(float(spot.value_of_css_property("left").rstrip("px")) /
                   float(browser.find_element(By.ID, "timeline").value_of_css_property("width").rstrip("px"))
                   - start / duration) < 0.02
        _shot(browser, "grounded-qa.png", tmp_path)

        # more from this moment: the segment being played (2.5 s: 2-3 s) searched as an example
        _park(browser, 2.5)
        browser.find_element(By.ID, "more-moment").click()
        wait_for(browser, "document.getElementById('player').hidden", what="the player to close")
        wait_for(browser, "document.getElementById('results').dataset.queryType === 'example' && "
                          "document.querySelectorAll('#results .card').length === 4", what="4 example results")
        example = _requests(browser, "/search")[-1]["body"]["example"]
        assert example["video_id"] == long_id and example["start"] <= 2.5 <= example["end"], example
        assert abs(example["end"] - example["start"] - 1.0) < 0.15, example
        assert browser.find_element(By.ID, "status").text.startswith("More from long.mp4 0:02–0:03: 4 videos")

        # a similar video's card opens it in the player
        _open_card(browser, "#results .card", "long.mp4")
        wait_for(browser, "document.querySelectorAll('#similar .card').length === 3", what="similar videos again")
        other = _open_card(browser, "#similar .card", "green.mp4")
        assert other == similar["green.mp4"]
        assert browser.find_element(By.ID, "player-title").text == "green.mp4"
        wait_for(browser, "document.querySelectorAll('#similar .card').length === 3 && Array.from("
                          "document.querySelectorAll('#similar .card')).every(c => c.dataset.videoId !== "
                          f"{json.dumps(other)})", what="green.mp4's similar videos")

        # a library video (no moments of a query): the indexed segment holding the time played, from /videos/{id}
        browser.find_element(By.ID, "close").click()
        listed = len(_requests(browser, "/videos"))
        browser.find_element(By.ID, "home").click()  # the library is listed again (its cards cleared first)
        wait_for(browser, f"window.__requests.filter(r => r.url.split('?')[0] === '/videos').length > {listed}",
                 what="the library to be listed again")
        wait_for(browser, "!document.getElementById('library').hidden && "
                          "document.querySelectorAll('#library-videos .card').length === 4", what="the library")
        _open_card(browser, "#library-videos .card", "long.mp4")
        _park(browser, 1.5)
        browser.find_element(By.ID, "more-moment").click()
        wait_for(browser, "document.getElementById('player').hidden && "
                          "document.querySelectorAll('#results .card').length === 4", what="library example results")
        assert _requests(browser, f"/videos/{long_id}")
        example = _requests(browser, "/search")[-1]["body"]["example"]
        assert example["video_id"] == long_id and example["start"] <= 1.5 <= example["end"], example
        assert abs(example["end"] - example["start"] - 1.0) < 0.15, example
        _no_severe_errors(browser)

    # a server that wants more confidence than any answer has: "Not sure", no answers
    with run_server(_settings(root, qa, 1.0)) as live:
        browser.get(live.url + "/")
        wait_for(browser, "document.querySelectorAll('#library-videos .card').length === 4", what="library cards")
        _open_card(browser, "#library-videos .card", "long.mp4")
        browser.find_element(By.ID, "question").send_keys("what color is it?")
        browser.find_element(By.ID, "ask").click()
        wait_for(browser, "document.getElementById('qa-status').textContent.endsWith(' ms')", what="the answer")
        assert browser.find_elements(By.CSS_SELECTOR, "#answers li") == []
        assert browser.find_element(By.ID, "qa-note").text == "Not sure: no answer above the confidence threshold."
        _no_severe_errors(browser)
