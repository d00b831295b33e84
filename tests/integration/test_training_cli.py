"""`alpro-train` and `alpro-eval` end to end on real mp4 files: checkpoints with their resolved config,
JSONL logs, undecodable records skipped and counted, metrics files with the documented keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model import load_pretrained
from training.synth import CorpusConfig, generate_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.overrides.img_size=32", "model.overrides.num_frames=2", "model.overrides.max_text_len=20",
        "data.num_workers=1", "train.progress=false", "train.log_every=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-corpus")
    generate_corpus(root, CorpusConfig(seed=3, videos=16, size=32, frames_per_video=6, val_videos=0, test_videos=6),
                    workers=1)
    # one record whose file is not a video: training must skip it and say so
    (root / "videos" / "broken.mp4").write_bytes(b"\x00" * 100)
    ann = root / "annotations"
    with (ann / "train.jsonl").open("a") as f:
        f.write(json.dumps({"video": "videos/broken.mp4", "caption": "a broken clip"}) + "\n")
    return root


def run(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1] if args[1] == "training" else proc.stdout)


def test_retrieval_train_then_eval(corpus, tmp_path):
    ann = corpus / "annotations"
    out = tmp_path / "run"
    summary = run("-m", "training", "finetune-retrieval", "--output-dir", str(out),
                  "--set", f"data.video_root={corpus}", "--set", f"data.train=[{ann / 'train.jsonl'}]",
                  "--set", f"data.val=[{ann / 'test.jsonl'}]", "--set", "train.batch_size=4",
                  "--set", "train.max_steps=4", "--set", "train.ckpt_every=2", "--set", "train.eval_every=2", *sum(
                      (["--set", s] for s in TINY), []))
    assert summary["steps"] == 4 and summary["skipped_records"] >= 1
    assert str(corpus / "videos" / "broken.mp4") in summary["skipped_files"]
    for directory in (out / "final", out / "best", out / "checkpoints" / "step_0000004"):
        assert (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()
        saved = yaml.safe_load((directory / "train_config.yaml").read_text())
        assert saved["task"] == "finetune-retrieval" and saved["train"]["max_steps"] == 4
    assert (out / "checkpoints" / "step_0000004" / "trainer_state.pt").is_file()
    assert json.loads((out / "best" / "metrics.json").read_text())["step"] in (2, 4)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all({"vtc", "vtm", "lr", "samples_per_s", "grad_norm"} <= set(r) for r in steps)
    assert any("eval" in r for r in rows)
    model = load_pretrained(out / "final")
    assert model.config.num_frames == 2 and model.config.preprocess.max_text_len == 20

    metrics_file = tmp_path / "metrics.json"
    metrics = run("-m", "training.eval_cli", "retrieval", "--checkpoint", str(out / "final"), "--annotations",
                  str(ann / "test.jsonl"), "--video-root", str(corpus), "--output", str(metrics_file),
                  "--rerank-k", "3", "--workers", "1")
    assert json.loads(metrics_file.read_text()) == metrics
    for key in ("r1", "r5", "r10", "median_rank", "mean_rank", "rerank_r1"):
        assert key in metrics
    for part in ("t2v", "v2t", "t2v_rerank", "v2t_rerank"):
        assert set(metrics[part]) == {"r1", "r5", "r10", "median_rank", "mean_rank"}
    assert metrics["videos"] == 6 and metrics["queries"] == 6 and metrics["rerank_k"] == 3
    assert 1 <= metrics["median_rank"] <= 6


def test_qa_train_builds_the_answer_vocabulary_then_eval(corpus, tmp_path):
    ann = corpus / "annotations"
    out = tmp_path / "qa"
    summary = run("-m", "training", "finetune-qa", "--output-dir", str(out),
                  "--set", f"data.video_root={corpus}", "--set", f"data.train=[{ann / 'qa_train.jsonl'}]",
                  "--set", "train.batch_size=8", "--set", "train.max_steps=2", *sum((["--set", s] for s in TINY), []))
    assert summary["steps"] == 2
    train_answers = [json.loads(line)["answer"] for line in (ann / "qa_train.jsonl").read_text().splitlines()]
    model = load_pretrained(out / "final")
    assert set(model.config.answers) == set(train_answers)
    assert model.config.num_answers == len(set(train_answers))
    counts = [train_answers.count(a) for a in model.config.answers]
    assert counts == sorted(counts, reverse=True)  # most frequent answer first, like train_ans2label.json
    assert json.loads((out / "final" / "ans2label.json").read_text())[model.config.answers[0]] == 0

    metrics = run("-m", "training.eval_cli", "qa", "--checkpoint", str(out / "final"), "--annotations",
                  str(ann / "qa_test.jsonl"), "--video-root", str(corpus), "--workers", "1")
    test_rows = [json.loads(line) for line in (ann / "qa_test.jsonl").read_text().splitlines()]
    assert metrics["questions"] == len(test_rows)
    assert set(metrics["per_type"]) == {r["answer_type"] for r in test_rows}
    assert 0.0 <= metrics["accuracy"] <= 100.0
    assert metrics["mean_per_type"] == pytest.approx(sum(metrics["per_type"].values()) / len(metrics["per_type"]))


def test_bad_override_is_a_clean_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", "finetune-qa", "--set", "optim.lrr=1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr


def test_time_budget_stops_the_run(tmp_path):
    from training.config import load_config
    from training.trainer import train

    config = load_config(None, ["data.source=synthetic", "data.synth_epoch_clips=64", "data.num_workers=0",
                                "train.batch_size=2", "train.max_minutes=0.05", "train.time_probe_steps=2",
                                "train.progress=false", f"train.output_dir={tmp_path}"], task="finetune-retrieval")
    result = train(config)
    assert result.steps >= 1 and result.final is not None
    assert result.train_seconds < 3.0 + 30.0  # the 3 s budget plus at most one (slow, shared-CPU) step
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert rows[-1]["step"] == result.steps
