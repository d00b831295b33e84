"""ALPRO_VECTOR_STORE (--vector-store): one setting picks FAISS (the default) or pgvector for the indexer and the
service alike; pgvector needs a PostgreSQL metadata database, and says so by name otherwise."""

from __future__ import annotations

import pytest

from settings import SettingsError, SharedSettings, load_settings
from tests.unit.test_settings import run_cli

pytestmark = pytest.mark.usefixtures("clean_alpro_environment")

PG_URL = "postgresql+psycopg://alpro:secret@db:5432/alpro"


def test_faiss_is_the_default_and_pgvector_takes_a_postgresql_url(monkeypatch):
    assert load_settings(SharedSettings).vector_store == "faiss"
    monkeypatch.setenv("ALPRO_VECTOR_STORE", "")  # empty: unset
    assert load_settings(SharedSettings).vector_store == "faiss"
    monkeypatch.setenv("ALPRO_VECTOR_STORE", "pgvector")
    monkeypatch.setenv("ALPRO_DATABASE_URL", PG_URL)
    assert load_settings(SharedSettings).vector_store == "pgvector"


@pytest.mark.parametrize("url", [None, "sqlite:////data/metadata.sqlite3", "mysql://x/y"])
def test_pgvector_without_postgresql_names_both_variables(monkeypatch, url):
    monkeypatch.setenv("ALPRO_VECTOR_STORE", "pgvector")
    if url is not None:
        monkeypatch.setenv("ALPRO_DATABASE_URL", url)
    with pytest.raises(SettingsError) as info:
        load_settings(SharedSettings)
    message = str(info.value)
    assert "ALPRO_VECTOR_STORE=pgvector" in message and "ALPRO_DATABASE_URL" in message
    assert "secret" not in message and ("unset" in message if url is None else url.split(":")[0] in message)


def test_an_unknown_store_names_its_variable(monkeypatch):
    monkeypatch.setenv("ALPRO_VECTOR_STORE", "milvus")
    with pytest.raises(SettingsError, match="ALPRO_VECTOR_STORE"):
        load_settings(SharedSettings)


def test_both_programs_take_the_flag(tmp_path):
    from indexer.settings import build_parser, settings_from
    from service.cli import build_parser as serve_parser
    from service.settings import FLAGS, Settings

    (tmp_path / "videos").mkdir()
    args = build_parser().parse_args([str(tmp_path / "videos"), "--data-dir", str(tmp_path / "d"), "--checkpoint",
                                      str(tmp_path), "--vector-store", "pgvector", "--database-url", PG_URL])
    assert settings_from(args).vector_store == "pgvector"
    served = serve_parser().parse_args(["--data-dir", str(tmp_path), "--vector-store", "pgvector"])
    with pytest.raises(SettingsError, match=r"ALPRO_VECTOR_STORE=pgvector \(--vector-store\)"):
        load_settings(Settings, {name: getattr(served, name) for name in FLAGS}, flags=FLAGS)


def test_the_cli_refuses_pgvector_on_sqlite_with_exit_2(tmp_path):
    serve = run_cli("alpro-serve", ["--data-dir", str(tmp_path), "--vector-store", "pgvector"], {})
    assert serve.returncode == 2 and "ALPRO_DATABASE_URL" in serve.stderr, serve.stderr
