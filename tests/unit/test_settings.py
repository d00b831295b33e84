"""The one settings layer: empty variables mean unset for every program, bad values name their variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import SettingsError, SharedSettings, default_home, load_settings

pytestmark = pytest.mark.usefixtures("clean_alpro_environment")

BIN = Path(sys.executable).parent


def default_of(cls, name: str):
    field = cls.model_fields[name]
    return field.default_factory() if field.default_factory else field.default


def assert_empty_means_default(cls, monkeypatch, required: dict[str, str]) -> None:
    optional = [name for name in cls.model_fields if name not in required]
    for name in optional:
        monkeypatch.setenv(f"ALPRO_{name.upper()}", "")
    for name, value in required.items():
        monkeypatch.setenv(f"ALPRO_{name.upper()}", value)
    settings = load_settings(cls)
    for name in optional:
        assert getattr(settings, name) == default_of(cls, name), name


def test_serve_empty_variables_mean_unset(tmp_path, monkeypatch):
    from service.settings import Settings

    assert_empty_means_default(Settings, monkeypatch, {"data_dir": str(tmp_path)})
    assert len(Settings.model_fields) > 30  # every service variable took part


def test_train_empty_variables_mean_unset(monkeypatch):
    from training.environment import TrainEnvironment

    assert_empty_means_default(TrainEnvironment, monkeypatch, {})


def test_shared_defaults_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "alpro"
    monkeypatch.setenv("ALPRO_HOME", "")
    assert load_settings(SharedSettings).home == tmp_path / "xdg" / "alpro"
    monkeypatch.setenv("ALPRO_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("ALPRO_CHECKPOINT_URL", "http://127.0.0.1:9/x/")
    s = load_settings(SharedSettings, {"device": "CUDA:1", "checkpoint": None})
    assert (s.home, s.checkpoint_url, s.device, s.checkpoint) == (tmp_path / "h", "http://127.0.0.1:9/x", "cuda:1",
                                                                 None)


@pytest.mark.parametrize("name, value, problem", [
    ("ALPRO_DEVICE", "gpu", "cuda"),
    ("ALPRO_CHECKPOINT_URL", "ftp://x", "URL"),
    ("ALPRO_DATABASE_URL", "  ", "blank"),
])
def test_shared_bad_values_name_their_variable(monkeypatch, name, value, problem):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(SharedSettings, flags={"device": "--device"})
    assert name in str(info.value) and repr(value) in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize("name, value", [("ALPRO_PORT", "eighty"), ("ALPRO_MAX_TOP_K", "100000"),
                                         ("ALPRO_DOCS", "perhaps"), ("ALPRO_DEVICE", "tpu")])
def test_serve_bad_values_name_their_variable(tmp_path, monkeypatch, name, value):
    from service.settings import Settings

    monkeypatch.setenv("ALPRO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings(Settings)


def run_cli(program: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    return subprocess.run([str(BIN / program), *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


def test_clis_name_a_bad_variable_and_exit_2(tmp_path):
    serve = run_cli("alpro-serve", [], {"ALPRO_DATA_DIR": str(tmp_path), "ALPRO_PORT": "eighty"})
    assert serve.returncode == 2 and "ALPRO_PORT" in serve.stderr and "--port" in serve.stderr
    missing = run_cli("alpro-serve", [], {"ALPRO_DATA_DIR": ""})
    assert missing.returncode == 2 and "ALPRO_DATA_DIR (--data-dir) is required" in missing.stderr
    index = run_cli("alpro-index", [str(tmp_path), "--data-dir", str(tmp_path / "d"), "--checkpoint", str(tmp_path)],
                    {"ALPRO_BATCH_SIZE": "many"})
    assert index.returncode == 2 and "ALPRO_BATCH_SIZE (--batch-size)='many'" in index.stderr
    train = run_cli("alpro-train", ["pretrain", "--config", "configs/demo.yaml"], {"ALPRO_DEVICE": "gpu0"})
    assert train.returncode == 2 and "ALPRO_DEVICE='gpu0'" in train.stderr

