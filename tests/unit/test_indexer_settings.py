"""Settings: flags, ALPRO_* environment variables, precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.settings import SettingsError, build_parser, settings_from

pytestmark = pytest.mark.usefixtures("clean_alpro_environment")


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "videos").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "official.pt").write_bytes(b"x")
    return {"videos": tmp_path / "videos", "ckpt": tmp_path / "ckpt", "pt": tmp_path / "official.pt",
            "data": tmp_path / "data"}


def parse(argv: list[str], env: dict[str, str]):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return settings_from(build_parser().parse_args(argv))


def test_flags(dirs) -> None:
    s = parse([str(dirs["videos"]), "--data-dir", str(dirs["data"]), "--checkpoint", str(dirs["ckpt"]),
               "--segment-seconds", "5", "--index-type", "hnsw", "--prune", "--store-tokens", "--no-progress",
               "--num-workers", "0"], {})
    assert (s.videos_dir, s.data_dir, s.checkpoint) == (dirs["videos"], dirs["data"], str(dirs["ckpt"]))
    assert (s.segment_seconds, s.index_type, s.prune, s.store_tokens, s.progress, s.num_workers) == \
        (5.0, "hnsw", True, True, False, 0)
    assert (s.reindex, s.keep_versions, s.thumbnail_width, s.database_url) == (False, 3, 320, None)


def test_environment_and_precedence(dirs) -> None:
    env = {"ALPRO_VIDEOS_DIR": str(dirs["videos"]), "ALPRO_DATA_DIR": str(dirs["data"]),
           "ALPRO_CHECKPOINT": str(dirs["ckpt"]), "ALPRO_DATABASE_URL": "postgresql+psycopg://u@h/db",
           "ALPRO_SEGMENT_SECONDS": "7.5", "ALPRO_PRUNE": "yes", "ALPRO_KEEP_VERSIONS": "5",
           "ALPRO_PROGRESS": "0", "ALPRO_BATCH_SIZE": "16"}
    s = parse([], env)
    assert (s.videos_dir, s.segment_seconds, s.prune, s.keep_versions, s.progress, s.batch_size) == \
        (dirs["videos"], 7.5, True, 5, False, 16)
    assert s.database_url == "postgresql+psycopg://u@h/db"
    flagged = parse(["--segment-seconds", "3", "--keep-versions", "2"], env)  # flags win
    assert (flagged.segment_seconds, flagged.keep_versions) == (3.0, 2)


def test_errors(dirs) -> None:
    with pytest.raises(SettingsError, match="--checkpoint"):
        parse([str(dirs["videos"]), "--data-dir", str(dirs["data"])], {})
    with pytest.raises(SettingsError, match="does not exist"):
        parse([str(dirs["videos"] / "nope"), "--data-dir", "d", "--checkpoint", str(dirs["ckpt"])], {})
    with pytest.raises(SettingsError, match="--bert-config"):
        parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", str(dirs["pt"])], {})
    with pytest.raises(SettingsError, match=r"ALPRO_PRUNE \(--prune\)='maybe'.*boolean"):
        parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", str(dirs["ckpt"])], {"ALPRO_PRUNE": "maybe"})
    with pytest.raises(SettingsError, match="ALPRO_BATCH_SIZE"):
        parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", str(dirs["ckpt"])], {"ALPRO_BATCH_SIZE": "x"})
    ok = parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", str(dirs["pt"]), "--bert-config", "c.json",
                "--vision-num-heads", "4"], {})
    assert ok.vision_num_heads == 4 and ok.bert_config.name == "c.json"
    with pytest.raises(SettingsError, match=r"ALPRO_DEVICE \(--device\)='gpu'"):
        parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", str(dirs["ckpt"])], {"ALPRO_DEVICE": "gpu"})
    with pytest.raises(SettingsError, match="ALPRO_SEGMENT_SECONDS"):
        parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", str(dirs["ckpt"])],
              {"ALPRO_SEGMENT_SECONDS": "-1"})
    with pytest.raises(SettingsError, match="ALPRO_VIDEOS_DIR .*required"):
        parse(["--data-dir", "d", "--checkpoint", str(dirs["ckpt"])], {})
    with pytest.raises(SettingsError, match="not the name of a released checkpoint"):
        parse([str(dirs["videos"]), "--data-dir", "d", "--checkpoint", "no-such-model"], {})


def test_empty_variables_mean_unset(dirs) -> None:
    """compose passes `${VAR:-}` as an empty string: every optional setting must then take its default."""
    from indexer.settings import IndexSettings

    required = {"videos_dir", "data_dir", "checkpoint"}
    optional = [name for name in IndexSettings.model_fields if name not in required]
    env = {f"ALPRO_{name.upper()}": "" for name in optional}
    s = parse([str(dirs["videos"]), "--data-dir", str(dirs["data"]), "--checkpoint", str(dirs["ckpt"])], env)
    for name in optional:
        field = IndexSettings.model_fields[name]
        default = field.default_factory() if field.default_factory else field.default
        assert getattr(s, name) == default, name
    assert len(optional) >= 20  # the shared ones (home, device, database URL, ...) and the indexer's own
