"""One error format everywhere: every 4xx/5xx of the real server (uvicorn on 127.0.0.1) is
`{"error": code, "message": text}` (plus `detail` on a 422 only); 415 for a body that is not JSON; malformed
JSON named by line, column and character; every 503 with Retry-After. And `alpro-serve`'s start-up errors as
a process: the flag and the variable named, a missing checkpoint called missing, no FAISS loader chatter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import free_socket, run_server, service_env  # noqa: E402,F401
from tests.pg_server import backend_environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "s3cret"
AUTH = {"X-API-Key": KEY}
ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def server(service_env):
    with run_server(service_env.settings(api_key=KEY, cors_origins=[ORIGIN])) as live:
        yield live


@pytest.fixture(scope="module")
def routed(service_env):
    """The same server without the /search fast path: every request goes through the FastAPI route."""
    with run_server(service_env.settings(api_key=KEY, cors_origins=[ORIGIN], search_fast_path=False)) as live:
        yield live


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    """The documented body: exactly error and message, and detail (a list of {loc, msg, type}) on a 422."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    if status == 422:
        assert set(body) == {"error", "message", "detail"}, body
        assert body["detail"] and all(set(item) == {"loc", "msg", "type"} and isinstance(item["loc"], list)
                                      for item in body["detail"]), body
    else:
        assert set(body) == {"error", "message"}, body
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1, r.headers
    return body


# --- each status, its code and its body --------------------------------------------------------------------


def test_401_missing_or_wrong_key(client):
    body = assert_error(client.post("/search", json={"query": "a"}), 401, "unauthorized")
    assert "X-API-Key" in body["message"]
    assert_error(client.get("/stats", headers={"X-API-Key": "wrong"}), 401, "unauthorized")


def test_404_unknown_route_and_static_file(client):
    body = assert_error(client.get("/no/such/route", headers=AUTH), 404, "not_found")
    assert "/no/such/route" in body["message"]
    assert_error(client.get("/static/no-such-file.js"), 404, "not_found")


def test_404_unknown_video(client):
    assert_error(client.get("/videos/" + "0" * 32, headers=AUTH), 404, "video_not_found")


def test_405_wrong_method(client):
    r = client.get("/search", headers=AUTH)
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


def test_413_body_too_large(client):
    r = client.post("/qa", content=b'{"question": "' + b"a" * 20_000 + b'"}',
                    headers={**AUTH, "content-type": "application/json"})
    assert "limit" in assert_error(r, 413, "payload_too_large")["message"]
    # /search takes base64 images: max_body_bytes plus the image limit in base64
    r = client.post("/search", content=b'{"query": "' + b"a" * 12_000_000 + b'"}',
                    headers={**AUTH, "content-type": "application/json"})
    assert "limit" in assert_error(r, 413, "payload_too_large")["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None],
                         ids=["text", "form", "absent"])
@pytest.mark.parametrize("path", ["/search", "/qa"])
def test_415_a_body_that_is_not_json(server, routed, service_env, content_type, path):
    payload = (b'{"query": "a red square"}' if path == "/search" else
               b'{"video_id": "%s", "question": "colour?"}' % service_env.ids["red"].encode())
    headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
    for live in (server, routed):  # with and without the /search fast path
        r = httpx.post(live.url + path, content=payload, headers=headers, timeout=30)
        body = assert_error(r, 415, "unsupported_media_type")
        assert "application/json" in body["message"], body


def test_json_with_a_suffix_type_is_json(client):
    r = client.post("/search", content=b'{"query": "a red square", "top_k": 1}',
                    headers={**AUTH, "content-type": "application/vnd.alpro+json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_422_invalid_field(client):
    body = assert_error(client.post("/search", json={"query": "", "top_k": 0}, headers=AUTH), 422, "invalid_request")
    assert body["message"].startswith("query:") and "top_k:" in body["message"], body
    assert {tuple(item["loc"]) for item in body["detail"]} == {("body", "query"), ("body", "top_k")}, body


@pytest.mark.parametrize("payload, position", [
    (b'{"query": "red" "top_k": 3}', "line 1, column 17 (character 16): Expecting ',' delimiter"),
    (b'{\n  "query": "red"\n  "top_k": 3\n}', "line 3, column 3 (character 21): Expecting ',' delimiter"),
    (b'{"query": "red"', "line 1, column 16 (character 15): Expecting ',' delimiter"),
], ids=["delimiter", "multi-line", "truncated"])
def test_422_invalid_json_names_its_position(server, routed, payload, position):
    for live in (server, routed):
        r = httpx.post(live.url + "/search", content=payload, headers={**AUTH, "content-type": "application/json"})
        body = assert_error(r, 422, "invalid_json")
        assert body["message"] == f"body: invalid JSON at {position}", body
        assert body["detail"] == [{"loc": ["body"], "msg": f"invalid JSON at {position}", "type": "json_invalid"}]


def test_422_body_that_is_not_utf8(client):
    r = client.post("/search", content=b'{"query": "\xff\xfe"}', headers={**AUTH, "content-type": "application/json"})
    assert "UTF-8" in assert_error(r, 422, "invalid_json")["message"]


def test_errors_of_framework_parts_are_json_too(client, service_env):
    """Responses the framework's own pieces make (a Range outside the file, a malformed Range, a CORS
    pre-flight from another origin) come in the same format, their headers kept."""
    stream = f"/videos/{service_env.ids['red']}/stream"
    r = client.get(stream, headers={**AUTH, "Range": "bytes=99999999-"})
    assert_error(r, 416, "range_not_satisfiable")
    assert r.headers["content-range"].startswith("bytes */")
    assert_error(client.get(stream, headers={**AUTH, "Range": "pages=1-2"}), 400, "bad_request")
    r = client.options("/search",
                       headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"})
    assert "origin" in assert_error(r, 400, "cors_rejected")["message"].lower()
    ok = client.options("/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN


# --- 503: always with Retry-After ---------------------------------------------------------------------------


def test_every_503_before_the_first_index_says_when_to_retry(service_env, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    video = "0" * 32
    with run_server(service_env.settings(data, qa_checkpoint=None)) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        assert_error(c.post("/search", json={"query": "a"}), 503, "index_unavailable")
        assert_error(c.get("/stats"), 503, "database_unavailable")
        assert c.get(f"/videos/{video}").status_code == 503
        assert int(c.get(f"/videos/{video}").headers["retry-after"]) >= 1
        ready = c.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        body = ready.json()
        assert body["ready"] is False and body["error"] == "not_ready" and body["message"] == body["reason"], body


def test_503_while_draining(service_env):
    with run_server(service_env.settings(retry_after_s=4)) as live, httpx.Client(base_url=live.url) as c:
        live.app.state.drain.begin()
        r = c.post("/search", json={"query": "a"})
        assert_error(r, 503, "shutting_down")
        assert r.headers["retry-after"] == "4"


# --- alpro-serve at start-up ---------------------------------------------------------------------------------


def _run(program: str, args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    environ.update(env)
    return subprocess.run([str(Path(sys.executable).parent / program), *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def test_serve_without_a_data_dir_names_the_flag_and_the_variable():
    result = _run("alpro-serve", [])
    assert result.returncode == 2, result.stderr
    assert "--data-dir" in result.stderr and "ALPRO_DATA_DIR" in result.stderr, result.stderr
    assert "Field required" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_index_without_a_data_dir_names_the_flag_and_the_variable(tmp_path):
    result = _run("alpro-index", [str(tmp_path)], ALPRO_CHECKPOINT=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "--data-dir" in result.stderr and "ALPRO_DATA_DIR" in result.stderr, result.stderr


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_a_missing_checkpoint_is_reported_missing(tmp_path, how):
    missing = tmp_path / "no" / "such-checkpoint"
    args = ["--data-dir", str(tmp_path), "--port", "0"]
    result = (_run("alpro-serve", [*args, "--checkpoint", str(missing)]) if how == "flag" else
              _run("alpro-serve", args, ALPRO_CHECKPOINT=str(missing)))
    assert result.returncode == 2, result.stderr
    assert f"checkpoint not found: {missing} (--checkpoint / ALPRO_CHECKPOINT)" in result.stderr, result.stderr
    assert "BERT config" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_released_checkpoint_name_is_still_accepted(tmp_path):
    from settings import load_settings
    from service.settings import Settings

    settings = load_settings(Settings, {"data_dir": tmp_path, "checkpoint": "msrvtt-retrieval"})
    assert settings.checkpoint == "msrvtt-retrieval"


def test_load_checkpoint_reports_a_missing_path_as_missing(tmp_path):
    from service.models import load_checkpoint
    from service.errors import StartupError
    from service.settings import Settings

    missing = tmp_path / "gone"
    # a checkpoint that went away after the settings were checked: named with the setting that gave it
    settings = Settings(data_dir=tmp_path).model_copy(update={"checkpoint": str(missing)})
    with pytest.raises(StartupError) as info:
        load_checkpoint(missing, None, "cpu", settings)
    assert str(info.value) == f"checkpoint not found: {missing} (--checkpoint / ALPRO_CHECKPOINT)"
    settings = Settings(data_dir=tmp_path).model_copy(update={"qa_checkpoint": str(missing)})
    with pytest.raises(StartupError) as info:
        load_checkpoint(missing, None, "cpu", settings)
    assert str(info.value) == f"checkpoint not found: {missing} (--qa-checkpoint / ALPRO_QA_CHECKPOINT)"
    with pytest.raises(StartupError) as info:  # the one an index records
        load_checkpoint(missing, None, "cpu")
    assert str(info.value) == f"checkpoint not found: {missing}"


def _port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_serve_logs_no_faiss_loader_lines_at_info(service_env):
    port = _port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    environ.update(backend_environment(service_env.data))  # ALPRO_TEST_VECTOR_STORE
    proc = subprocess.Popen([str(Path(sys.executable).parent / "alpro-serve"), "--data-dir", str(service_env.data),
                             "--port", str(port), "--no-access-log"], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "alpro-serve did not become ready"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert "ready: data dir" in err, err  # INFO logging is on...
    assert "faiss.loader" not in err and "AVX" not in err, err  # ...but not the loader's probing


def test_index_logs_no_faiss_loader_lines_at_info(tmp_path):
    result = _run("alpro-index", ["-v", str(tmp_path / "missing-videos")], ALPRO_CHECKPOINT=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "faiss.loader" not in result.stderr and "AVX" not in result.stderr, result.stderr
