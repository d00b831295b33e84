"""The web page over a library of mixed codecs, in headless Chromium: the library view and its failures, filters,
an invalid query, and files Chromium cannot play itself (MPEG-4 part 2 in AVI, HEVC) playing from their moment
through their index-time previews; a file without a preview says why it does not play. Screenshots go to
$ALPRO_SCREENSHOT_DIR (CI keeps them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.chromium import CHROMEDRIVER, CHROMIUM, MISSING, screenshot_dir, wait_for
from tests.integration.test_service_support import COLORS, make_checkpoints, run_server
from tests.video_factory import solid_frames, write_video

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)

# relative path -> (codec, audio encoder or None, colours one per second)
FILES = {"a/red.mp4": ("h264", None, ["red", "red", "red"]),
         "clips/old/yellow.avi": ("mpeg4", "mp3", ["yellow", "blue", "green", "yellow"]),
         "clips/blue.mp4": ("hevc", "aac", ["blue", "red", "blue"])}


def _write_library(videos: Path) -> None:
    for rel, (codec, audio, colours) in FILES.items():
        frames = solid_frames([COLORS[c] for c in colours for _ in range(10)], width=96, height=64)
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(videos / rel, len(frames), codec=codec, fps=10, width=96, height=64, frames=frames, audio=audio)
    (videos / "clips" / "broken.mp4").write_bytes(b"\x00garbage" * 500)


def _index(videos: Path, data: Path, checkpoint: Path, previews: str) -> None:
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    summary = run_index(IndexSettings(videos_dir=videos, data_dir=data, checkpoint=checkpoint, segment_seconds=1.0,
                                      num_workers=0, progress=False, previews=previews))
    assert summary.failed == 1 and summary.published, summary.to_dict()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("page-library")
    retrieval, _ = make_checkpoints(root / "checkpoints")
    _write_library(root / "videos")
    _index(root / "videos", root / "data", retrieval, "auto")
    _index(root / "videos", root / "data-no-previews", retrieval, "off")
    return root


def _settings(data: Path):
    from service.settings import Settings

    return Settings(data_dir=data, index_poll_s=0.1, decode_workers=1)


def _shot(driver, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(screenshot_dir(tmp_path) / name))


def _search(driver, query: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    driver.find_element(By.ID, "search-button").click()


def _no_severe_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_library_view_failures_filters_and_an_invalid_query(browser, library, tmp_path):
    from selenium.webdriver.common.by import By

    with run_server(_settings(library / "data")) as live:
        browser.get(live.url + "/")
        wait_for(browser, "document.querySelectorAll('#library-videos .card').length === 3", what="library cards")
        stats = browser.find_element(By.ID, "stats").text
        assert "3 videos" in stats and "1 failed" in stats
        names = sorted(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#library-videos .card .name"))
        assert names == sorted(FILES)  # relative to the library folder, not the server's absolute paths
        wait_for(browser, "Array.from(document.querySelectorAll('#library-videos .card img'))"
                          ".every(img => img.complete && img.naturalWidth > 0)", what="thumbnails loaded")
        # the thumbnail keeps its 3:2 aspect inside the card (contain, not cover)
        assert browser.execute_script(
            "return getComputedStyle(document.querySelector('#library-videos .card img')).objectFit") == "contain"
        wait_for(browser, "!document.getElementById('failures').hidden", what="the failures list")
        browser.find_element(By.CSS_SELECTOR, "#failures summary").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#failures-list tr")
        assert len(rows) == 1 and rows[0].find_element(By.CSS_SELECTOR, "td").text == "clips/broken.mp4"
        assert rows[0].find_elements(By.CSS_SELECTOR, "td")[1].text  # the reason
        _shot(browser, "library.png", tmp_path)

        # a search filtered to one folder (relative to the library) shows only that folder's videos
        browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
        browser.find_element(By.ID, "folder").send_keys("clips")
        _search(browser, "a blue square")
        wait_for(browser, "document.querySelectorAll('#results .card').length === 2", what="2 filtered results")
        names = sorted(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .card .name"))
        assert names == ["clips/blue.mp4", "clips/old/yellow.avi"]
        assert all(e.text.startswith("similarity ") for e in browser.find_elements(By.CSS_SELECTOR, "#results .card .score"))
        assert browser.find_element(By.ID, "score-legend").is_displayed()
        browser.find_element(By.ID, "min-duration").send_keys("3.5")
        _search(browser, "a blue square")
        wait_for(browser, "document.querySelectorAll('#results .card').length === 1", what="1 result over 3.5 s")
        _shot(browser, "filters.png", tmp_path)

        # a whitespace query: a message, and the previous results are gone
        _search(browser, "   ")
        wait_for(browser, "document.getElementById('status').classList.contains('error')", what="the error")
        assert browser.find_elements(By.CSS_SELECTOR, "#results .card") == []
        assert "Type what to look for" in browser.find_element(By.ID, "status").text
        _shot(browser, "invalid-query.png", tmp_path)
        _no_severe_errors(browser)


def _play_from_moment(driver, name: str) -> dict:
    """Open `name`'s search result; wait until it plays from a moment past its start; return the video state."""
    from selenium.webdriver.common.by import By

    cards = [c for c in driver.find_elements(By.CSS_SELECTOR, "#results .card")
             if c.find_element(By.CSS_SELECTOR, ".name").text == name]
    assert cards, name
    cards[0].click()
    wait_for(driver, "!document.getElementById('player').hidden", what="player")
    wait_for(driver, "document.querySelectorAll('#timeline .mark').length >= 2", what="moment markers")
    # a later moment from the timeline's markers: the player seeks there and plays on
    start = driver.execute_script("""
        const marks = Array.from(document.querySelectorAll('#timeline .mark'));
        const later = marks.map(m => parseFloat(m.style.left)).sort((a, b) => b - a)[0];
        const mark = marks.find(m => parseFloat(m.style.left) === later);
        mark.click();
        return later / 100 * document.getElementById('video').duration;""")
    assert start >= 0.9
    return wait_for(driver, f"""(() => {{
        const v = document.getElementById('video');
        if (v.error) return {{error: v.error.code}};
        return v.readyState >= 2 && v.currentTime > {start} + 0.1 && !v.paused
            ? {{source: v.dataset.source, time: v.currentTime, width: v.videoWidth, height: v.videoHeight}} : null;
    }})()""", timeout=30, what=f"{name} to play past {start:.2f} s")


def test_avi_and_hevc_play_from_their_moment_through_previews(browser, library, tmp_path):
    with run_server(_settings(library / "data")) as live:
        browser.get(live.url + "/")
        wait_for(browser, "document.querySelectorAll('#library-videos .card').length === 3", what="library")
        _search(browser, "a yellow square")  # once: the results stay under the player
        wait_for(browser, "document.querySelectorAll('#results .card').length === 3", what="3 results")
        for name, shot in (("clips/old/yellow.avi", "avi.png"), ("clips/blue.mp4", "hevc.png")):
            state = _play_from_moment(browser, name)
            assert state.get("source") == "preview", state
            assert state["width"] * 64 == state["height"] * 96  # the preview keeps the 3:2 aspect
            assert browser.find_element("id", "player-error").get_attribute("hidden") is not None
            _shot(browser, shot, tmp_path)
            browser.find_element("id", "close").click()
        _no_severe_errors(browser)


def test_a_file_without_preview_says_why_it_does_not_play(browser, library, tmp_path):
    from selenium.webdriver.common.by import By

    with run_server(_settings(library / "data-no-previews")) as live:
        browser.get(live.url + "/")
        wait_for(browser, "document.querySelectorAll('#library-videos .card').length === 3", what="library")
        card = next(c for c in browser.find_elements(By.CSS_SELECTOR, "#library-videos .card")
                    if c.find_element(By.CSS_SELECTOR, ".name").text == "clips/old/yellow.avi")
        card.click()
        message = wait_for(browser, "!document.getElementById('player-error').hidden && "
                                    "document.getElementById('player-error').textContent", what="the message")
        assert "cannot play" in message and "mpeg4" in message
        link = browser.find_element(By.CSS_SELECTOR, "#player-error a")
        assert link.get_attribute("href").endswith("/stream")
        _shot(browser, "unplayable.png", tmp_path)
