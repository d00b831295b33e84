"""Session fixtures: tiny native checkpoints trained in seconds on a tiny alpro-synth corpus.

For the indexer and service integration tests ("search finds the right video for its caption", "QA
answers"). Import them in tests/conftest.py:

    from tests.trained import trained_corpus, trained_qa_checkpoint, trained_retrieval_checkpoint  # noqa: F401

The corpus has 12 test videos with distinct captions (plus 12 train videos); the retrieval model is
trained on both splits' files, so it knows these videos: a test caption ranks its own video first
among the 12 for most captions. The QA model starts from the retrieval model and learns the corpus' QA
pairs. Both take about 60 s together on 2 CPU cores. Set ALPRO_TEST_CACHE=/some/dir to keep them between
sessions (keyed by the training settings, the generator version and the training code); otherwise they
live in the session's tmp dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "ALPRO_TEST_CACHE"

CORPUS = {"videos": 24, "test_videos": 12, "val_videos": 0, "size": 64, "frames_per_video": 8, "fps": 8, "seed": 7,
          "two_object_prob": 0.3}
MODEL = {"preset": "tiny", "overrides": {
    "img_size": 64, "num_frames": 4, "max_text_len": 24, "vision_embed_dim": 96, "vision_depth": 3,
    "vision_num_heads": 4, "vision_drop_path_rate": 0.0, "text_hidden_size": 96, "text_num_layers": 4,
    "text_fusion_layer": 2, "text_num_heads": 4, "text_intermediate_size": 384, "text_max_position_embeddings": 32,
    "text_hidden_dropout": 0.0, "text_attention_dropout": 0.0}}
RETRIEVAL = {"task": "pretrain", "model": MODEL, "loss": {"pem": 0.0},
             "data": {"num_workers": 2, "train_sampling": "uniform"},
             "optim": {"lr": 1.0e-3, "weight_decay": 0.01, "warmup_ratio": 0.1},
             "train": {"batch_size": 24, "max_steps": 220, "log_every": 20, "progress": False, "seed": 0}}
QA = {"task": "finetune-qa", "data": {"num_workers": 2, "train_sampling": "uniform"},
      "optim": {"lr": 1.0e-3, "weight_decay": 0.01, "warmup_ratio": 0.1, "head_lr_mult": 2.0},
      "train": {"batch_size": 32, "max_steps": 120, "log_every": 20, "progress": False, "seed": 0}}


@dataclass(frozen=True)
class CorpusVideo:
    path: Path  # the mp4 file
    caption: str  # its caption (distinct within the test split)
    qa: tuple[dict[str, str], ...]  # {"question", "answer", "answer_type"} about this video


@dataclass(frozen=True)
class TinyCorpus:
    root: Path  # alpro-synth corpus directory (videos/, annotations/, corpus.json)
    test: tuple[CorpusVideo, ...]  # held-out style split: distinct captions
    train: tuple[CorpusVideo, ...]  # the other videos (train uses the first phrasing as caption)

    @property
    def videos(self) -> list[Path]:
        """Every video file of the corpus."""
        return [v.path for v in self.test + self.train]

    @property
    def annotations(self) -> Path:
        return self.root / "annotations"


@dataclass(frozen=True)
class TrainedCheckpoint:
    path: Path  # native checkpoint directory: model.load_pretrained(path), the indexer, the service
    corpus: TinyCorpus
    summary: dict[str, Any]  # alpro-train's result (steps, seconds, ...)


def _key(*parts: Any) -> str:
    code = b"".join((ROOT / "training" / name).read_bytes() for name in
                    ("losses.py", "trainer.py", "data.py", "tasks.py", "modeling.py", "optim.py", "synth.py"))
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode() + code)
    return digest.hexdigest()[:12]


def _root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    # Keyed paths: a second definition of a fixture in one session (a module importing these as well as
    # conftest) finds the first one's result instead of training again.
    base = Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else tmp_path_factory.getbasetemp()
    path = base / f"{name}-{_key(CORPUS, MODEL, RETRIEVAL, QA)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_corpus(root: Path) -> TinyCorpus:
    def split(name: str) -> tuple[CorpusVideo, ...]:
        qa: dict[str, list[dict[str, str]]] = {}
        for line in (root / "annotations" / f"qa_{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            qa.setdefault(row["video"], []).append({k: row[k] for k in ("question", "answer", "answer_type")})
        out = []
        for line in (root / "annotations" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            caption = row["caption"] if isinstance(row["caption"], str) else row["caption"][0]
            out.append(CorpusVideo(root / row["video"], caption, tuple(qa.get(row["video"], ()))))
        return tuple(out)

    return TinyCorpus(root=root, test=split("test"), train=split("train"))


def build_corpus(root: Path) -> TinyCorpus:
    from training.synth import CorpusConfig, generate_corpus

    if not (root / "corpus.json").is_file():
        generate_corpus(root, CorpusConfig(**CORPUS), workers=1, overwrite=True)
    return _read_corpus(root)


def _train(config: dict[str, Any], output: Path) -> dict[str, Any]:
    """alpro-train in a subprocess (its own OpenMP settings: passive threads, kind to shared cores)."""
    done = output / "result.json"
    if done.is_file() and (output / "final" / "model.safetensors").is_file():
        return json.loads(done.read_text())
    output.mkdir(parents=True, exist_ok=True)
    config_file = output / "fixture_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "training", config["task"], "--config", str(config_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"training the {config['task']} fixture failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    done.write_text(json.dumps(result))
    return result


def train_retrieval(root: Path, corpus: TinyCorpus) -> TrainedCheckpoint:
    ann = corpus.annotations
    config = json.loads(json.dumps(RETRIEVAL))
    config["data"].update({"video_root": str(corpus.root),
                           "train": [str(ann / "train.jsonl"), str(ann / "test.jsonl")]})
    config["train"]["output_dir"] = str(root / "run")
    summary = _train(config, root / "run")
    return TrainedCheckpoint(Path(summary["final"]), corpus, summary)


def train_qa(root: Path, retrieval: TrainedCheckpoint) -> TrainedCheckpoint:
    ann = retrieval.corpus.annotations
    config = json.loads(json.dumps(QA))
    config["model"] = {"init": str(retrieval.path)}
    config["data"].update({"video_root": str(retrieval.corpus.root), "answers": str(ann / "ans2label.json"),
                           "train": [str(ann / "qa_train.jsonl"), str(ann / "qa_test.jsonl")]})
    config["train"]["output_dir"] = str(root / "run")
    summary = _train(config, root / "run")
    return TrainedCheckpoint(Path(summary["final"]), retrieval.corpus, summary)


@pytest.fixture(scope="session")
def trained_corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    """The tiny alpro-synth corpus (real mp4 files) both checkpoints are trained on."""
    return build_corpus(_root(tmp_path_factory, "alpro-tiny-corpus"))


@pytest.fixture(scope="session")
def trained_retrieval_checkpoint(tmp_path_factory: pytest.TempPathFactory,
                                 trained_corpus: TinyCorpus) -> TrainedCheckpoint:
    """A tiny retrieval checkpoint (native format) that ranks each test video first for its own caption."""
    return train_retrieval(_root(tmp_path_factory, "alpro-tiny-retrieval"), trained_corpus)


@pytest.fixture(scope="session")
def trained_qa_checkpoint(tmp_path_factory: pytest.TempPathFactory,
                          trained_retrieval_checkpoint: TrainedCheckpoint) -> TrainedCheckpoint:
    """A tiny QA checkpoint (native format, answers in its config) for the same corpus."""
    return train_qa(_root(tmp_path_factory, "alpro-tiny-qa"), trained_retrieval_checkpoint)
