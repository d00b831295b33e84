"""The web page in headless Chromium (Selenium): search, thumbnails load, a click plays the moment, a
question gets answers. Skipped only where Chromium or its driver is not installed (CI installs both:
`apt-get install -y chromium chromium-driver`)."""

from __future__ import annotations

import pytest

from tests.browser.chromium import CHROMEDRIVER, CHROMIUM, MISSING, screenshot_dir, wait_for
from tests.integration.test_service_config import AWKWARD_KEY, UNICODE_KEY
from tests.integration.test_service_support import QA_ANSWERS, run_server, service_env  # noqa: F401

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)


def test_search_play_and_ask(browser, service_env, tmp_path):
    from selenium.webdriver.common.by import By

    with run_server(service_env.settings()) as live:
        browser.get(live.url + "/")
        assert browser.title == "ALPRO video search"
        wait_for(browser, "document.getElementById('stats').textContent.includes('4 videos')", what="stats line")
        browser.find_element(By.ID, "query").send_keys("a red square")
        browser.find_element(By.ID, "search-button").click()
        wait_for(browser, "document.querySelectorAll('#results .card').length === 4", what="4 result cards")
        wait_for(browser, "Array.from(document.querySelectorAll('#results .card img'))"
                          ".every(img => img.complete && img.naturalWidth > 0)", what="thumbnails loaded")
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .card .name")]
        assert sorted(names) == ["blue.mp4", "green.mp4", "red.mp4", "yellow.mp4"]
        assert all(e.text.startswith("similarity ") for e in browser.find_elements(By.CSS_SELECTOR, "#results .card .score"))
        shot = screenshot_dir(tmp_path)
        browser.save_screenshot(str(shot / "search.png"))

        first = browser.find_element(By.CSS_SELECTOR, "#results .card")
        start = float(first.get_attribute("data-start"))
        first.click()
        wait_for(browser, "!document.getElementById('player').hidden", what="player")
        state = wait_for(browser, f"""(() => {{
            const v = document.getElementById('video');
            if (v.error) return 'error ' + v.error.code;
            const moved = v.currentTime > {start} + 0.05 || v.ended;
            return v.readyState >= 2 && v.currentTime >= {start} - 0.01 && moved ? 'playing' : null;
        }})()""", what="the video to play from the moment")
        assert state == "playing"

        browser.find_element(By.ID, "question").send_keys("what color is it?")
        browser.find_element(By.ID, "ask").click()
        wait_for(browser, "document.querySelectorAll('#answers li').length === 5", what="5 answers")
        answers = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#answers li")]
        assert all(any(a.startswith(name + " (") for name in QA_ANSWERS) for a in answers), answers
        browser.save_screenshot(str(shot / "player.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no failed request, no script error


@pytest.mark.parametrize("key", [AWKWARD_KEY, UNICODE_KEY], ids=["ascii", "unicode"])
def test_any_key_typed_into_the_page_loads_thumbnails_and_video(browser, service_env, key):
    """The key box after a 401; then fetch() (header, or cookie beyond ASCII), <img> and <video> (cookie) pass."""
    from selenium.webdriver.common.by import By

    with run_server(service_env.settings(api_key=key, qa_checkpoint=None)) as live:
        browser.get(live.url + "/")
        wait_for(browser, "!document.getElementById('key-box').hidden", what="the key box after a 401")
        browser.get_log("browser")  # drops the 401 that asked for the key
        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.ID, "key-button").click()
        wait_for(browser, "document.getElementById('stats').textContent.includes('4 videos')", what="stats line")
        browser.find_element(By.ID, "query").send_keys("a red square")
        browser.find_element(By.ID, "search-button").click()
        wait_for(browser, "document.querySelectorAll('#results .card').length === 4", what="4 result cards")
        wait_for(browser, "Array.from(document.querySelectorAll('#results .card img'))"
                          ".every(img => img.complete && img.naturalWidth > 0)", what="thumbnails loaded")
        browser.find_element(By.CSS_SELECTOR, "#results .card").click()
        state = wait_for(browser, """(() => {
            const v = document.getElementById('video');
            return v.error ? 'error ' + v.error.code : v.readyState >= 2 ? 'loaded' : null;
        })()""", what="the video to load")
        assert state == "loaded"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
