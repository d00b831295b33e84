"""`alpro-fetch` as a user runs it: the installed script, the environment, a loopback release server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import load_pretrained
from model.fetch_cli import main
from model.hub import REGISTRY, fetch
from tests.conftest import REFERENCE, assert_same_outputs, load_reference
from tests.unit.test_hub import ANSWERS, BERT, QA, RETRIEVAL, ReleaseServer, tiny_registry

SCRIPT = shutil.which("alpro-fetch", path=str(Path(sys.executable).parent))


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "model.fetch_cli"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    full_env.update(env)
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=full_env)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """In-process runs read the environment: only what a test sets."""
    for name in list(os.environ):
        if name.startswith("ALPRO_"):
            monkeypatch.delenv(name)


@pytest.fixture
def release():
    server = ReleaseServer().start()
    yield server
    server.stop()


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("alpro-fetch: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_list_names_every_release(tmp_path):
    result = run("--list", env={"ALPRO_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(REGISTRY)
    assert "alpro_msrvtt_qa.pth" in result.stdout and "1500 answers" in result.stdout


def test_an_unknown_name_is_a_usage_error(tmp_path):
    result = run("msrvtt", env={"ALPRO_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "neither an existing path nor a released checkpoint name" in error_line(result)
    assert "msrvtt-retrieval" in error_line(result) and not any(tmp_path.iterdir())


def test_a_name_downloads_from_the_configured_url(release, tmp_path):
    # The real entries describe full-size models: the tiny file downloads and verifies, then fails to convert.
    release.files["/models/ALPRO/alpro_msrvtt_retrieval.pt"] = RETRIEVAL.read_bytes()
    result = run("msrvtt-retrieval", "--quiet",
                 env={"ALPRO_HOME": str(tmp_path / "home"), "ALPRO_CHECKPOINT_URL": release.base_url + "/"})
    assert result.returncode == 1
    assert "downloaded intact but does not convert as msrvtt-retrieval" in error_line(result)
    assert [r.status for r in release.to("/models/ALPRO/alpro_msrvtt_retrieval.pt")] == [200]
    assert (tmp_path / "home" / "downloads" / "alpro_msrvtt_retrieval.pt").read_bytes() == RETRIEVAL.read_bytes()


def test_a_cached_name_goes_to_output_with_an_empty_home_meaning_the_default(release, tmp_path):
    # Fill the default cache ($XDG_CACHE_HOME/alpro) under the real name with the tiny model, then stop the server.
    cache = tmp_path / "xdg" / "alpro"
    registry = {"msrvtt-retrieval": tiny_registry(name="msrvtt-retrieval")["tiny-retrieval"]}
    release.files["/models/ALPRO/tiny_retrieval.pt"] = RETRIEVAL.read_bytes()
    cached = fetch("msrvtt-retrieval", cache, release.base_url, progress=False, registry=registry)
    release.stop()
    output = tmp_path / "models" / "retrieval"
    result = run("msrvtt-retrieval", "--output", str(output),
                 env={"ALPRO_HOME": "", "XDG_CACHE_HOME": str(tmp_path / "xdg"),
                      "ALPRO_CHECKPOINT_URL": release.base_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(output)]
    assert json.loads((output / "source.json").read_text()) == json.loads((cached / "source.json").read_text())
    assert_same_outputs(load_pretrained(output), load_pretrained(cached))


def test_a_local_official_file_is_converted_and_a_native_dir_copied(tmp_path):
    answers = tmp_path / "train_ans2label.json"
    answers.write_text(json.dumps(ANSWERS))
    converted = tmp_path / "models" / "qa"
    result = run(str(QA), "--bert-config", str(BERT), "--vision-num-heads", "4", "--max-text-len", "10",
                 "--answers", str(answers), "--output", str(converted), env={"ALPRO_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(converted)]
    model = load_pretrained(converted)
    assert model.config.answers == tuple(sorted(ANSWERS, key=ANSWERS.get))
    video = load_reference("video.pt")
    ids, mask = load_reference("qa_input_ids.pt"), load_reference("qa_attention_mask.pt")
    with torch.no_grad():
        torch.testing.assert_close(model.answer_logits(video, ids, mask),
                                   load_reference("qa_outputs.pt")["answer_logits"], atol=1e-4, rtol=1e-4)
    record = json.loads((converted / "source.json").read_text())
    assert record["sha256"] == hashlib.sha256(QA.read_bytes()).hexdigest() and record["url"].startswith("file://")

    copied = tmp_path / "volume" / "qa"
    result = run(str(converted), "--output", str(copied), env={"ALPRO_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert_same_outputs(load_pretrained(copied), model)
    assert not (tmp_path / "home").exists()  # local sources never touch the cache


# In-process: the usage errors (same code path as the script, without a torch import per case).
@pytest.mark.parametrize("args, env, message", [
    ([], {}, "give a checkpoint NAME or PATH"),
    (["msrvtt-qa", "msvd-qa", "--output", "out"], {}, "--output takes a single NAME or PATH"),
    ([str(RETRIEVAL), "--output", "out"], {}, "give its model_config.json with --bert-config"),
    ([str(RETRIEVAL), "--bert-config", str(BERT)], {}, "say where it goes with --output DIR"),
    (["msrvtt-retrieval", "--num-frames", "4"], {}, "--num-frames only apply to an official .pt file"),
    ([str(REFERENCE), "--output", "out"], {}, "not a native ALPRO checkpoint directory"),
    (["msrvtt-retrieval"], {"ALPRO_CHECKPOINT_URL": "ftp://mirror"}, "ALPRO_CHECKPOINT_URL (--url)='ftp://mirror'"),
    (["msrvtt-retrieval", "--url", "mirror"], {"ALPRO_CHECKPOINT_URL": "ftp://unused"},
     "ALPRO_CHECKPOINT_URL (--url)='mirror'"),  # the flag wins over the environment
])
def test_usage_and_settings_errors_exit_2(args, env, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPRO_HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert exit_status(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alpro-fetch: error:") and message in err[0], err
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def exit_status(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as e:  # argparse's own errors
        return e.code


def test_a_failed_download_exits_1(release, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALPRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALPRO_CHECKPOINT_URL", release.base_url)
    assert main(["didemo-retrieval", "--quiet"]) == 1  # the server has no such file
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("alpro-fetch: error: cannot download") and "HTTP 404" in err[-1]
