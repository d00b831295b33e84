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
from tests.pg_server import backend_environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _serve(args: list[str], **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    if "--data-dir" in args:  # ALPRO_TEST_VECTOR_STORE: the backend that data dir was indexed with
        environ.update(backend_environment(args[args.index("--data-dir") + 1]))
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


def test_sigterm_lets_requests_in_flight_finish(service_env):
    """A deployment stops the service with SIGTERM: requests already in flight are answered (no reset
    connection), a new one meanwhile gets 503 with Retry-After, and the process exits 0 within its grace
    period. The requests in flight are held open by their clients (headers sent, body not yet), so they are
    in flight when the signal comes, whatever the machine's speed."""
    import json
    import socket

    port = _port()
    proc = _serve(["--data-dir", str(service_env.data), "--port", str(port), "--no-access-log"],
                  ALPRO_QA_CHECKPOINT=str(service_env.qa))
    base = f"http://127.0.0.1:{port}"
    held: list[tuple[socket.socket, bytes]] = []
    try:
        _wait_ready(proc, port)
        for colour in list(service_env.ids)[:3]:
            body = json.dumps({"video_id": service_env.ids[colour], "question": "colour?"}).encode()
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"POST /qa HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
            held.append((sock, body))
        deadline = time.monotonic() + 30  # the three are in the app (admitted) before the signal
        while True:
            metrics = httpx.get(f"{base}/metrics").text
            inflight = [line for line in metrics.splitlines() if line.startswith("alpro_http_requests_in_flight")]
            if inflight and float(inflight[0].split()[-1]) >= 4:  # 3 held + this scrape
                break
            assert time.monotonic() < deadline, f"the held requests did not arrive: {inflight}"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        late = httpx.post(f"{base}/search", json={"query": "late"}, timeout=30)  # after the signal
        answers = []
        for sock, body in held:  # now the clients finish their requests
            sock.sendall(body[5:])
            reply = b""
            while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            sock.close()
            answers.append(reply)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert late.status_code == 503 and late.json()["error"] == "shutting_down" and late.headers["retry-after"], \
        late.text
    assert all(reply.startswith(b"HTTP/1.1 200") and b'"answers"' in reply for reply in answers), answers
    assert proc.returncode == 0, err


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0
