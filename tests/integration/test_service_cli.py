"""`alpro-serve` as a process (python -m service.cli): serves, refuses a checkpoint/index mismatch at start,
and names bad settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from tests.integration.test_service_support import free_socket, service_env  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]


def _serve(args: list[str], **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    environ.update(env)
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def _wait_ready(proc: subprocess.Popen, port: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "alpro-serve did not become ready"
        time.sleep(0.1)


def test_serves_until_interrupted(service_env):
    port = _port()
    proc = _serve(["--data-dir", str(service_env.data), "--port", str(port), "--no-access-log"],
                  ALPRO_QA_CHECKPOINT=str(service_env.qa))
    try:
        _wait_ready(proc, port)
        r = httpx.post(f"http://127.0.0.1:{port}/search", json={"query": "a red square", "top_k": 2})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        r = httpx.post(f"http://127.0.0.1:{port}/qa", json={"video_id": service_env.ids["red"], "question": "color?"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_refuses_to_start_with_another_checkpoint(service_env):
    """The QA checkpoint did not build the index: the process exits with a message naming both."""
    proc = _serve(["--data-dir", str(service_env.data), "--port", str(_port())],
                  ALPRO_CHECKPOINT=str(service_env.qa))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "did not build index version 1" in err and str(service_env.qa) in err


def test_bad_settings_are_named(tmp_path, capsys, monkeypatch):
    from service.cli import main

    assert main(["--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("ALPRO_MAX_TOP_K", "1000")
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "ALPRO_MAX_TOP_K='1000'" in capsys.readouterr().err


def test_sigterm_under_load_finishes_in_flight_requests(service_env):
    """A deployment stops the service with SIGTERM: requests already in flight are answered (no reset
    connection), a new one meanwhile gets 503 with Retry-After, and the process exits 0 within its grace
    period."""
    import threading

    port = _port()
    proc = _serve(["--data-dir", str(service_env.data), "--port", str(port), "--no-access-log"],
                  ALPRO_QA_CHECKPOINT=str(service_env.qa), ALPRO_QA_CACHE_MB="0", ALPRO_DECODE_WORKERS="1")
    base = f"http://127.0.0.1:{port}"
    results: list[object] = []
    try:
        _wait_ready(proc, port)
        started = threading.Barrier(9)

        def ask(colour: str) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                started.wait()
                try:  # QA decodes its video each time (no cache): these take a while, one decode at a time
                    results.append(c.post("/qa", json={"video_id": service_env.ids[colour], "question": "colour?"}))
                except httpx.HTTPError as e:
                    results.append(e)

        threads = [threading.Thread(target=ask, args=(c,)) for c in list(service_env.ids) * 2]  # 8, one decode at a time
        for t in threads:
            t.start()
        started.wait()
        # every request reached the server before the signal: poll its in-flight gauge with a deadline
        deadline = time.monotonic() + 30
        while True:
            metrics = httpx.get(f"{base}/metrics").text
            inflight = [line for line in metrics.splitlines() if line.startswith("alpro_http_requests_in_flight")]
            if inflight and sum(float(line.split()[-1]) for line in inflight) >= 9:  # 8 + this scrape
                break
            assert time.monotonic() < deadline, f"requests did not all arrive: {inflight}"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        # a request that comes after the signal, while the others are still being answered: 503 + Retry-After
        late = httpx.post(f"{base}/search", json={"query": "late"}, timeout=30)
        for t in threads:
            t.join(60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(results) == 8
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), \
        [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
    assert late.status_code == 503 and late.json()["error"] == "shutting_down" and late.headers["retry-after"], \
        late.text
