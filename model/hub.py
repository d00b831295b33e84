"""Released ALPRO checkpoints by name: download once, verify, convert to the native format, cache.

The ALPRO release (Li et al., CVPR 2022; github salesforce/ALPRO) ships every checkpoint in one output.zip;
LAVIS re-hosts each as a single file in its bucket, and those single files are what we download. A name
resolves to HOME/checkpoints/<name>/, a native checkpoint directory (model.safetensors, config.json) with
source.json saying which file made it. The layout under HOME:

    downloads/<file>.part     a transfer in progress (resumed with an HTTP Range request)
    downloads/<file>          a complete download whose archive checks passed
    checkpoints/<name>/       the converted checkpoint; once it exists, fetch never touches the network
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional, Union

from settings import DEFAULT_CHECKPOINT_URL

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from .config import ConfigError
from .download import FetchError, PathLike, RemoteFile, _check_answers, _check_archive, download, read_answers
from .install import SOURCE_NAME, convert_checkpoint, remove_stale_stages

logger = logging.getLogger(__name__)

RELEASE_URL = DEFAULT_CHECKPOINT_URL  # LAVIS's bucket, which hosts the release one file each
BERT_CONFIG = Path(__file__).parent / "assets" / "official" / "bert_config.json"


class UnknownCheckpointError(FetchError):
    """A name that is not in the registry."""


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A checkpoint of the release and what converting it needs that its weights cannot say."""

    name: str
    description: str
    checkpoint: RemoteFile
    bert_config: Union[Path, Mapping[str, Any]] = BERT_CONFIG  # the reference's BERT config (fusion_layer)
    vision_num_heads: int = 12  # TimeSformer heads
    num_frames: int = 8  # frames per clip it was trained with (time_embed is resized to this)
    img_size: int = 224  # frame side in pixels
    max_text_len: int = 40  # tokens per caption or question
    answers: Optional[RemoteFile] = None  # train_ans2label.json ({answer: index}) of a QA checkpoint
    num_answers: int = 0  # outputs of its QA classifier, checked after loading; 0: no QA head

    def files(self) -> tuple[RemoteFile, ...]:
        return (self.checkpoint,) if self.answers is None else (self.checkpoint, self.answers)

    def overrides(self) -> dict[str, Any]:
        return {"vision_num_heads": self.vision_num_heads, "num_frames": self.num_frames,
                "img_size": self.img_size, "max_text_len": self.max_text_len}


# LAVIS's bucket keeps checkpoints under models/ALPRO/ and each dataset's answer list under datasets/<name>/,
# so a mirror of the bucket (ALPRO_CHECKPOINT_URL) serves both. Frames and text lengths are the reference's
# config_release/*.json; answer counts are LAVIS's alpro_qa_*.yaml num_classes.
REGISTRY: Mapping[str, ReleasedCheckpoint] = MappingProxyType({entry.name: entry for entry in (
    ReleasedCheckpoint(
        "alpro-pretrain", "pre-trained on WebVid-2M + CC3M (VTC, VTM, MLM, PEM) with its prompter; "
        "zero-shot retrieval or the start of fine-tuning",
        RemoteFile("alpro_pretrain.pt"), num_frames=4, max_text_len=30),
    ReleasedCheckpoint(
        "msrvtt-retrieval", "text-video retrieval fine-tuned on MSR-VTT",
        RemoteFile("alpro_msrvtt_retrieval.pt"), num_frames=8, max_text_len=40),
    ReleasedCheckpoint(
        "didemo-retrieval", "text-video retrieval fine-tuned on DiDeMo (paragraph queries)",
        RemoteFile("alpro_didemo_retrieval.pt"), num_frames=8, max_text_len=50),
    ReleasedCheckpoint(
        "msrvtt-qa", "video question answering fine-tuned on MSRVTT-QA",
        RemoteFile("alpro_msrvtt_qa.pth"), num_frames=16, max_text_len=40, num_answers=1500,
        answers=RemoteFile("../../datasets/msrvtt/train_ans2label.json", "msrvtt_train_ans2label.json")),
    ReleasedCheckpoint(
        "msvd-qa", "video question answering fine-tuned on MSVD-QA",
        RemoteFile("alpro_msvd_qa.pth"), num_frames=16, max_text_len=40, num_answers=2423,
        answers=RemoteFile("../../datasets/msvd/train_ans2label.json", "msvd_train_ans2label.json")),
)})


def lookup(name: str, registry: Mapping[str, ReleasedCheckpoint] = REGISTRY) -> ReleasedCheckpoint:
    try:
        return registry[name]
    except KeyError:
        raise UnknownCheckpointError(f"unknown checkpoint {name!r}; released checkpoints: "
                                     + ", ".join(sorted(registry))) from None


def is_checkpoint_name(spec: object, registry: Mapping[str, ReleasedCheckpoint] = REGISTRY) -> bool:
    """Whether `spec` names a released checkpoint (it is fetched on first use wherever a checkpoint is read)."""
    return isinstance(spec, str) and spec in registry


def is_fetched(directory: Path) -> bool:
    """A complete fetched checkpoint: the directory appears by rename only after all three files are in it."""
    return all((directory / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME, SOURCE_NAME))


def fetch(name: str, home: PathLike, base_url: str = RELEASE_URL, progress: bool = True, *, force: bool = False,
          registry: Mapping[str, ReleasedCheckpoint] = REGISTRY) -> Path:
    """HOME/checkpoints/<name>/: downloaded, verified and converted on first use; a cache hit (no network) after."""
    entry = lookup(name, registry)
    home = Path(home).expanduser()
    target = home / "checkpoints" / entry.name
    if not force and is_fetched(target):
        return target
    downloads = home / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(downloads / f"{entry.name}.lock"):
        if not force and is_fetched(target):  # another process finished it while we waited
            return target
        remove_stale_stages(target)
        records = [download(remote, base_url, downloads, progress=progress, force=force,
                            check=_check_answers if remote is entry.answers else _check_archive)
                   for remote in entry.files()]
        overrides = entry.overrides()
        if entry.answers is not None:
            overrides["answers"] = read_answers(downloads / entry.answers.filename)
        record = {"name": entry.name, **records[0]}
        if entry.answers is not None:
            record["answers"] = records[1]
        official = downloads / entry.checkpoint.filename
        try:
            convert_checkpoint(official, target, entry.bert_config, overrides, record=record,
                               num_answers=entry.num_answers)
        except (CheckpointError, ConfigError) as e:
            raise FetchError(f"{official} downloaded intact but does not convert as {entry.name}: {e}") from e
    logger.info("%s is ready in %s", entry.name, target)
    return target


def resolve_checkpoint(spec: PathLike, home: PathLike, base_url: str = RELEASE_URL, *, progress: bool = True,
                       registry: Mapping[str, ReleasedCheckpoint] = REGISTRY) -> Path:
    """An existing path as it is, or a released checkpoint's name fetched into HOME (a cache hit after once)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if str(spec) in registry:
        return fetch(str(spec), home, base_url, progress, registry=registry)
    raise UnknownCheckpointError(f"checkpoint {str(spec)!r} is neither an existing path nor a released checkpoint "
                                 f"name ({', '.join(sorted(registry))})")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One fetch of a name at a time across processes (e.g. service and indexer starting on one volume)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
