"""Training configuration: YAML files loaded into dataclasses, `--set a.b=value` overrides, saved resolved.

One `TrainConfig` per run, in sections that mirror the pipeline: `model` (what to build or start from),
`data` (annotations or the synthetic source), `loss` (ALPRO_REFERENCE.md "Heads": VTC + VTM + MLM + PEM,
weight 1 each in the reference), `optim` (AdamW, warm-up + linear decay), `train` (batching, precision,
checkpoints) and `eval` (validation during training and `alpro-eval`). Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

TASKS = ("pretrain-prompter", "pretrain", "finetune-retrieval", "finetune-qa")


class TrainConfigError(ValueError):
    """A training configuration file or override is invalid."""


@dataclass
class ModelSection:
    """Which network to build, or which checkpoint to start from."""

    preset: str = "tiny"  # model.config preset when training from scratch (`base`, `tiny`)
    overrides: dict[str, Any] = field(default_factory=dict)  # model.config overrides, e.g. vision_depth: 4
    init: Optional[str] = None  # native checkpoint dir or official .pt to start from (heads may differ)
    init_bert_config: Optional[str] = None  # the BERT config JSON when `init` is an official .pt file
    bert_dir: Optional[str] = None  # from-scratch runs: initialise text layers from a local HF BERT directory
    vit_weights: Optional[str] = None  # from-scratch runs: initialise the TimeSformer from ViT weights (timm)
    prompter: Optional[str] = None  # pretrain with PEM: native checkpoint written by `pretrain-prompter`
    grad_checkpointing: bool = False  # recompute encoder blocks in backward (memory for compute)


@dataclass
class DataSection:
    """Annotations (JSON Lines) and decoding, or the on-the-fly synthetic source."""

    source: str = "files"  # "files": annotation files + video root; "synthetic": fresh alpro-synth clips
    video_root: Optional[str] = None  # `video`/`image` paths in annotations are relative to this
    train: list[str] = field(default_factory=list)  # training annotation JSONL files
    val: list[str] = field(default_factory=list)  # validation JSONL (retrieval captions or QA pairs)
    answers: Optional[str] = None  # QA: {answer: index} JSON; built from the training split when absent
    entities: Optional[str] = None  # PEM: entity list (one per line); from the corpus when absent
    num_entities: int = 1000  # PEM: entities taken from the corpus when no list is given (most frequent)
    num_workers: int = 2  # DataLoader worker processes per training process
    train_sampling: str = "rand"  # frame sampling for training ("rand", "headtail", "uniform")
    crop_scale: float = 1.0  # > 1: resize to img_size * crop_scale, then random img_size crop (pre-training)
    hflip_prob: float = 0.0  # horizontal flip; swaps the words in flip_words in captions, questions, answers
    flip_words: dict[str, str] = field(default_factory=lambda: {"left": "right", "right": "left"})
    randaugment: bool = False  # temporally consistent RandAugment(2, 5) as in pre-training (torchvision)
    image_frames_repeat: bool = True  # images (CC3M) are repeated to the model's frame count
    max_skip: int = 8  # undecodable records replaced by following ones, at most this many in a row
    # -- synthetic source (training.synth) --
    synth_corpus: Optional[str] = None  # corpus directory for entities.txt / ans2label.json (optional)
    synth_epoch_clips: int = 2048  # fresh clips drawn per epoch
    synth_render_size: int = 0  # render side in pixels before resizing to img_size; 0 = img_size
    synth_frames: int = 16  # frames of the virtual file a clip is sampled from (match the corpus files)
    synth_two_object_prob: float = 0.3  # share of clips with two shapes
    synth_qa_balance: bool = True  # QA: draw the question type uniformly, then a clip that has one
    synth_qa_per_clip: int = 1  # QA: questions asked about each clip (the video is encoded once for all)
    synth_noise: float = 0.0  # std of Gaussian pixel noise (0-255 scale) added to rendered frames
    # pre-training: pairs of clips that differ in one thing (training.synth.twin_spec kinds: reverse, shape,
    # colour, still), side by side in a batch as each other's hardest negative; empty = independent clips
    synth_twins: list[str] = field(default_factory=list)
    # pre-training: share of clips captioned without their shapes' colours ("a circle moves to the left"); such
    # a caption's positives are every clip of the batch it fits. Colour is what VTC learns first; a caption
    # without it can only be matched by shape and motion
    synth_colourless_captions: float = 0.0
    synth_colourless_epochs: int = 0  # colourless captions in the first this many epochs only; 0: every epoch
    # QA: > 0 draws clips from a fixed pool of this many (a clip's pixels, flip included, are the same every
    # time it recurs; its question is drawn afresh), so train.cache_video_tokens can encode each clip once
    synth_pool_clips: int = 0


@dataclass
class LossSection:
    """Loss weights and the randomness inside the losses."""

    vtc: float = 1.0  # video-text contrastive
    vtm: float = 1.0  # video-text matching with hard negatives
    mlm: float = 1.0  # masked language modelling (pretrain only)
    pem: float = 1.0  # prompting entity modelling (pretrain only; needs a prompter)
    mlm_prob: float = 0.15  # share of real tokens chosen for MLM
    vtm_negatives: str = "global"  # "global": from the all-gathered batch (DDP == 1 process); "local"
    vtm_hard_ratio: float = 1.0  # share of VTM negatives drawn by similarity (reference: 1); the rest uniform
    # share of the run over which that share ramps up linearly from 0 (all uniform) to vtm_hard_ratio; 0: none
    # (the reference). From scratch, hard negatives differ in what the encoders cannot see yet and VTM stays
    # at its prior; uniform ones first teach fusion to compare the two sides at all.
    vtm_hard_warmup: float = 0.0
    vtm_pairs: int = 0  # positives per micro-batch VTM scores (each with 2 negatives); 0 = all (reference)
    pem_area: tuple[float, float] = (0.3, 0.5)  # crop area as a share of the frame
    pem_aspect: tuple[float, float] = (0.3, 1 / 0.3)  # crop width / height
    pem_min_confidence: float = 0.0  # ignore crops whose top pseudo-label probability is below this


@dataclass
class OptimSection:
    """AdamW with linear warm-up and linear decay to `min_lr_ratio * lr`."""

    lr: float = 1e-4
    weight_decay: float = 0.01  # applied to weight matrices only (not norms, biases, embeddings, temp)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_ratio: float = 0.05  # share of the total optimizer steps spent warming up
    min_lr_ratio: float = 0.0  # lr at the end of the decay, as a share of lr
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    head_lr_mult: float = 1.0  # lr multiplier for newly created heads (QA classifier, PEM head)
    encoder_lr_mult: float = 1.0  # lr multiplier for the unimodal encoders (video, text embeddings and text
    #                              layers); 0 freezes them (fine-tuning a fusion + head on pre-trained features)


@dataclass
class RunSection:
    """Batching, length, precision, logging and checkpoints."""

    output_dir: str = "runs/default"
    seed: int = 42
    batch_size: int = 32  # per process and micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    epochs: float = 1.0  # length in epochs, unless max_steps > 0
    max_steps: int = 0  # optimizer steps; overrides epochs when > 0
    max_minutes: float = 0.0  # > 0: length set by wall time (steps estimated after `time_probe_steps`)
    time_probe_steps: int = 10  # steps timed before fixing the schedule length under max_minutes
    amp: str = "auto"  # "auto" (bf16 on GPUs that have it, fp16 on others, off on CPU), "bf16", "fp16", "off"
    log_every: int = 10  # optimizer steps between log lines
    ckpt_every: int = 0  # optimizer steps between periodic checkpoints; 0 = only at the end
    keep_last: int = 2  # periodic checkpoints kept
    eval_every: int = 0  # optimizer steps between validations (best-by-metric); 0 = at the end only
    best_metric: str = ""  # e.g. "t2v_r1", "accuracy"; "" = the task's default
    stop_after: int = 0  # stop (with a checkpoint) after this step, keeping the full run's schedule
    progress: bool = True  # tqdm progress bar on rank 0
    tensorboard: bool = False  # also write TensorBoard events when tensorboard is installed
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default
    # finetune-qa with a frozen video encoder (optim.encoder_lr_mult 0) on a synthetic pool
    # (data.synth_pool_clips): encode each pool clip once, in eval mode, and reuse its tokens in later steps
    cache_video_tokens: bool = False
    dist_timeout_s: int = 1800


@dataclass
class EvalSection:
    """Validation during training and `alpro-eval`."""

    batch_size: int = 32
    rerank_k: int = 16  # VTM re-ranks the VTC top-k
    max_videos: int = 0  # validate on at most this many videos / QA pairs; 0 = all
    num_workers: int = 2


@dataclass
class TrainConfig:
    task: str = "finetune-retrieval"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: RunSection = field(default_factory=RunSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise TrainConfigError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.data.source not in ("files", "synthetic"):
            raise TrainConfigError(f"data.source must be 'files' or 'synthetic', got {self.data.source!r}")
        if self.data.source == "files" and not self.data.train:
            raise TrainConfigError("data.train lists no annotation files (or set data.source: synthetic)")
        if self.data.synth_qa_per_clip < 1:
            raise TrainConfigError(f"data.synth_qa_per_clip must be >= 1, got {self.data.synth_qa_per_clip}")
        from .synth import TWIN_KINDS  # here: the synthetic source's imports are not needed to read a config

        unknown = [k for k in self.data.synth_twins if k not in TWIN_KINDS]
        if unknown:
            raise TrainConfigError(f"data.synth_twins: unknown kinds {unknown}; choose from {list(TWIN_KINDS)}")
        if not 0.0 <= self.data.synth_colourless_captions <= 1.0:
            raise TrainConfigError(f"data.synth_colourless_captions must be in [0, 1], "
                                   f"got {self.data.synth_colourless_captions}")
        if self.data.synth_colourless_epochs < 0:
            raise TrainConfigError(f"data.synth_colourless_epochs must be >= 0, "
                                   f"got {self.data.synth_colourless_epochs}")
        if self.data.synth_twins and self.train.batch_size % 2:
            raise TrainConfigError(f"data.synth_twins needs an even train.batch_size (pairs share a batch), "
                                   f"got {self.train.batch_size}")
        if self.data.synth_pool_clips < 0:
            raise TrainConfigError(f"data.synth_pool_clips must be >= 0, got {self.data.synth_pool_clips}")
        if self.train.cache_video_tokens:
            if self.task != "finetune-qa" or self.optim.encoder_lr_mult != 0:
                raise TrainConfigError("train.cache_video_tokens needs task finetune-qa with a frozen video encoder "
                                       "(optim.encoder_lr_mult: 0)")
            if self.data.source != "synthetic" or self.data.synth_pool_clips <= 0:
                raise TrainConfigError("train.cache_video_tokens needs data.source synthetic with "
                                       "data.synth_pool_clips > 0 (a fixed pool of clips to cache)")
        if self.train.amp not in ("auto", "bf16", "fp16", "off"):
            raise TrainConfigError(f"train.amp must be auto, bf16, fp16 or off, got {self.train.amp!r}")
        if self.loss.vtm_negatives not in ("global", "local"):
            raise TrainConfigError(f"loss.vtm_negatives must be global or local, got {self.loss.vtm_negatives!r}")
        if self.train.batch_size < 1 or self.train.grad_accum < 1:
            raise TrainConfigError("train.batch_size and train.grad_accum must be >= 1")
        if self.task == "pretrain" and self.loss.pem > 0 and not self.model.prompter:
            raise TrainConfigError("pretrain with loss.pem > 0 needs model.prompter (run pretrain-prompter first)")
        if self.loss.vtm_pairs < 0:
            raise TrainConfigError(f"loss.vtm_pairs must be >= 0, got {self.loss.vtm_pairs}")
        if not 0.0 <= self.loss.vtm_hard_warmup <= 1.0:
            raise TrainConfigError(f"loss.vtm_hard_warmup must be in [0, 1], got {self.loss.vtm_hard_warmup}")
        if not 0.0 <= self.loss.vtm_hard_ratio <= 1.0:
            raise TrainConfigError(f"loss.vtm_hard_ratio must be in [0, 1], got {self.loss.vtm_hard_ratio}")
        if not 0.0 <= self.loss.mlm_prob <= 1.0:
            raise TrainConfigError(f"loss.mlm_prob must be in [0, 1], got {self.loss.mlm_prob}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `amp: off` stays the string "off" (YAML 1.1 reads a bool)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so YAML stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(cls_name: str, name: str, hint: Any, value: Any) -> Any:
    """Check and convert one YAML value against a dataclass field's type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = f"{cls_name}.{name}"
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(cls_name, name, inner[0], value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(hint, value, prefix=f"{where}.")
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(cls_name, name, args[0], v) for v in value] if args else list(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TrainConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(cls_name, name, a, v) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TrainConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(f"unknown config keys: {', '.join(prefix + k for k in unknown)}")
    values = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in data.items()}
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise TrainConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise TrainConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise TrainConfigError(f"cannot parse the value of override {text!r}: {e}") from e
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise TrainConfigError(f"cannot set {'.'.join(parts)}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_config(path: Union[str, Path, None] = None, overrides: list[str] = (), task: Optional[str] = None,
                base: Optional[dict[str, Any]] = None) -> TrainConfig:
    """YAML file (or `base` dict) + dotted overrides -> validated TrainConfig; relative paths stay as given."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, read_yaml_config(Path(path)))
    for text in overrides:
        apply_override(data, *parse_override(text))
    if task is not None:
        if data.get("task") not in (None, task):
            raise TrainConfigError(f"config is for task {data['task']!r}, the command asks for {task!r}")
        data["task"] = task
    config = _build(TrainConfig, data)
    config.validate()
    return config


def read_yaml_config(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One config file; `extends: other.yaml` (relative to this file) is read first and this file merged over it."""
    try:
        loaded = yaml.load(path.read_text(), Loader=_Loader) or {}
    except (OSError, yaml.YAMLError) as e:
        raise TrainConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(loaded, dict):
        raise TrainConfigError(f"config {path} must be a mapping at the top level")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise TrainConfigError(f"config {path}: `extends` goes round in a circle at {parent_path}")
    return _merge(read_yaml_config(parent_path, (*seen, path.resolve())), loaded)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out
