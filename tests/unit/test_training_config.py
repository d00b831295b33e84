"""Training configs: YAML into dataclasses, dotted overrides, strict keys and types, saved resolved."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import TrainConfig, TrainConfigError, load_config, read_yaml_config

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


def test_off_on_yes_no_are_strings_not_yaml_1_1_booleans(tmp_path):
    # `amp: off` is how the docs spell it; YAML 1.1 (PyYAML's default) would read False and fail the str check
    path = write(tmp_path, "task: finetune-retrieval\ndata: {source: synthetic}\ntrain: {amp: off, progress: false}\n")
    assert load_config(path).train.amp == "off"
    config = load_config(path, ["train.amp=off", "train.progress=true", "model.overrides.text_hidden_act=on"])
    assert config.train.amp == "off" and config.train.progress is True
    assert config.model.overrides["text_hidden_act"] == "on"
    with pytest.raises(TrainConfigError, match="progress"):
        load_config(path, ["train.progress=yes"])  # a bool field takes true/false only


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


def test_extends_merges_the_parent_under_the_child(tmp_path):
    (tmp_path / "base.yaml").write_text("task: pretrain\ndata: {source: synthetic, num_workers: 3}\n"
                                        "optim: {lr: 1.0e-3, weight_decay: 0.2}\nloss: {pem: 0.0}\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: ../base.yaml\noptim: {lr: 5.0e-4}\ntrain: {max_steps: 9}\n")
    config = load_config(child, ["data.num_workers=1"])
    assert config.task == "pretrain" and config.data.source == "synthetic"
    assert config.optim.lr == pytest.approx(5e-4) and config.optim.weight_decay == pytest.approx(0.2)
    assert config.train.max_steps == 9 and config.data.num_workers == 1
    (tmp_path / "base.yaml").write_text("extends: sub/child.yaml\n")
    with pytest.raises(TrainConfigError, match="circle"):
        load_config(child)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    data = read_yaml_config(ROOT / "configs" / name)
    overrides = [] if data.get("data", {}).get("source") == "synthetic" or data.get("data", {}).get("train") \
        else ["data.train=x.jsonl"]
    if data.get("task") == "pretrain" and not data.get("model", {}).get("prompter"):
        overrides.append("model.prompter=somewhere")
    load_config(ROOT / "configs" / name, overrides)


def test_cached_video_tokens_need_a_frozen_encoder_and_a_synthetic_pool(tmp_path):
    base = "task: finetune-qa\ndata: {source: synthetic, synth_pool_clips: 64}\n"
    ok = load_config(write(tmp_path, base), ["optim.encoder_lr_mult=0", "train.cache_video_tokens=true"])
    assert ok.train.cache_video_tokens and ok.data.synth_pool_clips == 64
    with pytest.raises(TrainConfigError, match="frozen video encoder"):
        load_config(write(tmp_path, base), ["train.cache_video_tokens=true"])
    with pytest.raises(TrainConfigError, match="synth_pool_clips"):
        load_config(write(tmp_path, base), ["optim.encoder_lr_mult=0", "train.cache_video_tokens=true",
                                            "data.synth_pool_clips=0"])
    with pytest.raises(TrainConfigError, match="synth_pool_clips must be"):
        load_config(write(tmp_path, base), ["data.synth_pool_clips=-1"])


def test_twin_kinds_are_checked_and_pairs_need_an_even_batch(tmp_path):
    path = write(tmp_path, "data: {source: synthetic}\n")
    ok = load_config(path, ["data.synth_twins=[reverse,shape]", "train.batch_size=8"], task="finetune-retrieval")
    assert ok.data.synth_twins == ["reverse", "shape"]
    with pytest.raises(TrainConfigError, match="upside"):
        load_config(path, ["data.synth_twins=[reverse,upside]"], task="finetune-retrieval")
    with pytest.raises(TrainConfigError, match="even"):
        load_config(path, ["data.synth_twins=[reverse]", "train.batch_size=7"], task="finetune-retrieval")
