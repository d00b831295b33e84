"""The `browser` fixture of the page tests: headless Chromium that may autoplay (see tests/browser/chromium.py)."""

from __future__ import annotations

import pytest

from tests.browser.chromium import start_chromium


@pytest.fixture()
def browser(tmp_path):
    driver = start_chromium(tmp_path / "chromium-profile",
                            ("--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"))
    try:
        yield driver
    finally:
        driver.quit()
