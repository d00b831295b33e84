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


def test_serves_until_interrupted(service_env):
    port = _port()
    proc = _serve(["--data-dir", str(service_env.data), "--port", str(port), "--no-access-log"],
                  ALPRO_QA_CHECKPOINT=str(service_env.qa))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "alpro-serve did not become ready"
            time.sleep(0.1)
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
