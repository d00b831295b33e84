"""`alpro-convert` as a user runs it: official -> native -> official, through the installed script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from model import load_official_checkpoint, load_pretrained
from tests.conftest import REFERENCE, load_reference


def run(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("alpro-convert", path=str(__import__("pathlib").Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "model.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_round_trip_through_the_command(tmp_path):
    native = tmp_path / "native"
    result = run("to-native", str(REFERENCE / "qa_model_step_best.pt"), str(native),
                 "--bert-config", str(REFERENCE / "base_model.json"), "--vision-num-heads", "4",
                 "--max-text-len", "10")
    assert result.returncode == 0, result.stderr
    model = load_pretrained(native)
    assert model.config.preprocess.max_text_len == 10 and model.config.num_answers == 7
    back = tmp_path / "official" / "model_step_best.pt"
    result = run("to-official", str(native), str(back))
    assert result.returncode == 0, result.stderr
    reloaded = load_official_checkpoint(back, back.with_name("model_config.json"), vision_num_heads=4)
    video = load_reference("video.pt")
    ids, mask = load_reference("qa_input_ids.pt"), load_reference("qa_attention_mask.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.answer_logits(video, ids, mask),
                                   load_reference("qa_outputs.pt")["answer_logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("args", [("to-native", "absent.pt", "out", "--bert-config", "absent.json"),
                                  ("to-official", "not-a-dir", "out.pt")])
def test_errors_exit_2_with_a_message(args, tmp_path):
    result = run(*[str(tmp_path / a) if i in (1, 2) else a for i, a in enumerate(args)])
    assert result.returncode == 2
    assert "alpro-convert: error:" in result.stderr
