"""Training configs: YAML into dataclasses, dotted overrides, strict keys and types, saved resolved."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import TrainConfig, TrainConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "task: finetune-retrieval\ndata: {source: synthetic}\noptim: {lr: 1.0e-3}\n"
                           "model: {overrides: {num_frames: 4}}\n")
    config = load_config(path, ["optim.lr=2e-4", "train.batch_size=7", "model.overrides.img_size=48",
                                "loss.pem_area=[0.2, 0.4]", "data.val=a.jsonl"])
    assert config.optim.lr == pytest.approx(2e-4)
    assert config.train.batch_size == 7
    assert config.model.overrides == {"num_frames": 4, "img_size": 48}
    assert config.loss.pem_area == (0.2, 0.4)
    assert config.data.val == ["a.jsonl"]  # a single value becomes a one-item list
    assert config.optim.weight_decay == TrainConfig().optim.weight_decay  # defaults kept


def test_unknown_keys_and_bad_types_are_errors(tmp_path):
    path = write(tmp_path, "data: {source: synthetic}\n")
    with pytest.raises(TrainConfigError, match="optim.lrr"):
        load_config(path, ["optim.lrr=1"], task="finetune-retrieval")
    with pytest.raises(TrainConfigError, match="batch_size"):
        load_config(path, ["train.batch_size=many"], task="finetune-retrieval")
    with pytest.raises(TrainConfigError, match="amp"):
        load_config(path, ["train.amp=fp8"], task="finetune-retrieval")
    with pytest.raises(TrainConfigError, match="key=value"):
        load_config(path, ["optim.lr"], task="finetune-retrieval")


def test_task_mismatch_and_missing_data(tmp_path):
    with pytest.raises(TrainConfigError, match="finetune-qa"):
        load_config(write(tmp_path, "task: finetune-qa\ndata: {source: synthetic}\n"), task="pretrain")
    with pytest.raises(TrainConfigError, match="data.train"):
        load_config(write(tmp_path, "task: finetune-qa\n"))
    with pytest.raises(TrainConfigError, match="prompter"):
        load_config(write(tmp_path, "data: {source: synthetic}\n"), task="pretrain")


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config(write(tmp_path, "data: {source: synthetic}\n"), ["loss.vtm=0.5"], task="finetune-qa")
    saved = config.save(tmp_path / "out" / "config.yaml")
    again = load_config(saved)
    assert again == config
    assert yaml.safe_load(saved.read_text())["loss"]["vtm"] == 0.5


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    data = yaml.safe_load((ROOT / "configs" / name).read_text())
    overrides = [] if data.get("data", {}).get("source") == "synthetic" or data.get("data", {}).get("train") \
        else ["data.train=x.jsonl"]
    if data.get("task") == "pretrain" and not data.get("model", {}).get("prompter"):
        overrides.append("model.prompter=somewhere")
    load_config(ROOT / "configs" / name, overrides)
