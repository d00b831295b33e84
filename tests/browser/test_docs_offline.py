"""/docs (Swagger UI) and /redoc (ReDoc) render in headless Chromium with every host but the loopback one
unreachable: their scripts and styles come with the package, not from a CDN. The browser tests are skipped
only where Chromium or its driver is not installed (CI installs both: `apt-get install -y chromium
chromium-driver`); the HTTP checks run everywhere."""

from __future__ import annotations

import re

import pytest

httpx = pytest.importorskip("httpx")

from tests.browser.chromium import screenshot_dir, start_chromium, wait_for  # noqa: E402
from tests.integration.test_service_support import run_server, service_env  # noqa: E402,F401

CDN_PROBE = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"


@pytest.fixture(scope="module")
def server(service_env):
    with run_server(service_env.settings()) as live:
        yield live


@pytest.fixture()
def offline_browser(tmp_path):
    """Chromium that can reach 127.0.0.1 only: every other name resolves to nothing, and anything that got
    past that would go to a proxy on a closed loopback port."""
    driver = start_chromium(tmp_path / "chromium-profile", (
        "--window-size=1280,1600", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"))
    try:
        yield driver
    finally:
        driver.quit()


def assert_offline(driver) -> None:
    """The page cannot reach the CDN (so what rendered came from the server); the failed probe's console
    error is drained, so it is not mistaken for the page's."""
    outcome = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {mode: 'no-cors', cache: 'no-store'})
            .then(() => done('reached'), (e) => done('failed: ' + e));""", CDN_PROBE)
    assert outcome.startswith("failed"), outcome
    driver.get_log("browser")


def severe_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def operation_count(url: str) -> int:
    schema = httpx.get(url + "/openapi.json").json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return sum(1 for item in schema["paths"].values() for method in item if method in methods)


def test_swagger_ui_renders_offline(offline_browser, server, tmp_path):
    operations = operation_count(server.url)
    assert operations >= 8
    offline_browser.get(server.url + "/docs")
    rendered = wait_for(offline_browser, f"document.querySelectorAll('.opblock').length >= {operations} && "
                                         "document.querySelectorAll('.opblock').length",
                        what=f"{operations} Swagger UI operations")
    assert rendered >= operations
    assert "/search" in offline_browser.find_element("css selector", ".swagger-ui").text
    offline_browser.save_screenshot(str(screenshot_dir(tmp_path) / "docs.png"))
    errors = severe_errors(offline_browser)
    assert not errors, errors  # no asset that failed to load, no script error
    assert_offline(offline_browser)


def test_redoc_renders_offline(offline_browser, server, tmp_path):
    operations = operation_count(server.url)
    offline_browser.get(server.url + "/redoc")
    selector = "[data-section-id*='operation/'] h2"
    wait_for(offline_browser, f"document.querySelectorAll(\"{selector}\").length >= {operations}",
             what=f"{operations} ReDoc operation headings")
    headings = [e.text for e in offline_browser.find_elements("css selector", selector)]
    assert any("Search" in h for h in headings), headings
    offline_browser.save_screenshot(str(screenshot_dir(tmp_path) / "redoc.png"))
    errors = severe_errors(offline_browser)
    assert not errors, errors
    assert_offline(offline_browser)


# --- over HTTP, no browser needed ----------------------------------------------------------------------------


def test_doc_pages_load_nothing_from_outside(server):
    with httpx.Client(base_url=server.url) as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page).text
            urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
            assert urls and all(u.startswith("/") for u in urls), (page, urls)
            for url in urls:  # every asset and the schema are served
                assert c.get(url).status_code == 200, url
        assert c.get("/docs/oauth2-redirect").status_code == 200


def test_docs_setting_turns_them_off(service_env):
    with run_server(service_env.settings(docs=False)) as live, httpx.Client(base_url=live.url) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
