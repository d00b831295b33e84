"""Headless Chromium for the browser tests (Selenium, Debian's chromium and chromium-driver packages; CI
installs both), a JS poll with a deadline, and where screenshots go ($ALPRO_SCREENSHOT_DIR, which CI keeps)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
MISSING = "needs Debian's chromium and chromium-driver packages"
BASE_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def start_chromium(profile: Path, flags: Sequence[str] = ()):
    """A Chrome WebDriver on a fresh profile; skips the test where Chromium or its driver is missing."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(MISSING)
    os.environ["SE_OFFLINE"] = "true"  # never let selenium-manager download a driver or browser
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*BASE_FLAGS, f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def wait_for(driver, script: str, timeout: float = 20.0, what: str = ""):
    """Poll a JS expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or script}")
        time.sleep(0.05)


def screenshot_dir(default: Path) -> Path:
    folder = Path(os.environ.get("ALPRO_SCREENSHOT_DIR", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
