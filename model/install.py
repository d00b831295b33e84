"""Writing checkpoint directories: staged next to the target, fsynced, renamed into place.

A directory appears whole or not at all; a mount point (a docker volume), which cannot be renamed, gets its
files replaced one by one, config.json last. Used by model.hub and alpro-fetch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from .checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_official_checkpoint, read_native_config,
                         save_pretrained)
from .download import FetchError, PathLike, _fsync_dir, _fsync_file

SOURCE_NAME = "source.json"  # inside a fetched checkpoint: which file(s) made it


# --------------------------------------------------------------------------------------------------
# Writing checkpoint directories: staged next to the target, fsynced, renamed into place


def convert_checkpoint(official: PathLike, dest: PathLike, bert_config: Union[PathLike, Mapping[str, Any]],
                       overrides: Optional[Mapping[str, Any]] = None, *, record: Optional[Mapping[str, Any]] = None,
                       num_answers: Optional[int] = None) -> Path:
    """An official .pt converted (strictly) into the native directory `dest`, which appears whole or not at all."""
    dest = Path(dest)
    model = load_official_checkpoint(official, bert_config, **dict(overrides or {}))
    if num_answers is not None and model.config.num_answers != num_answers:
        raise CheckpointError(f"{official} has a {model.config.num_answers}-way answer classifier where "
                              f"{num_answers} was expected")
    with _staged(dest) as stage:
        save_pretrained(model, stage)
        if record is not None:
            (stage / SOURCE_NAME).write_text(json.dumps(record, indent=2) + "\n")
        publish_directory(stage, dest)
    return dest


def install_checkpoint(source: PathLike, dest: PathLike) -> Path:
    """Copy the native checkpoint directory `source` to `dest` (replacing a checkpoint there) atomically."""
    source, dest = Path(source), Path(dest)
    read_native_config(source)
    if not (source / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{source} has no {WEIGHTS_NAME}")
    if dest.exists() and dest.resolve() == source.resolve():
        return dest
    with _staged(dest) as stage:
        for path in source.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, stage / path.name)
        publish_directory(stage, dest)
    return dest


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when it was published


def _remove_stale_stages(dest: Path) -> None:
    """Stages a killed process left behind (called under the lock, so none is in use)."""
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def publish_directory(stage: Path, dest: Path) -> None:
    """Rename the filled `stage` to `dest`; an existing `dest` must be empty or a native checkpoint."""
    _fsync_tree(stage)
    if not (dest.exists() or dest.is_symlink()):
        os.rename(stage, dest)
        _fsync_dir(dest.parent)
        return
    _check_replaceable(dest)
    old = dest.with_name(f".{dest.name}.{os.getpid()}-{time.monotonic_ns()}.old.tmp")
    try:
        os.rename(dest, old)
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
            raise
        # A mount point (a docker volume) cannot be renamed: replace its files, config.json last.
        _replace_files(stage, dest)
        return
    os.rename(stage, dest)
    _fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        if not any(dest.iterdir()):
            return
        try:
            read_native_config(dest)
            return
        except (ValueError, TypeError, KeyError):  # CheckpointError and ConfigError are ValueErrors
            pass
    raise FetchError(f"refusing to replace {dest}: it is not an ALPRO checkpoint directory (nor empty)")


def _replace_files(stage: Path, dest: Path) -> None:
    names = sorted((p.name for p in stage.iterdir()), key=lambda n: (n == CONFIG_NAME, n))
    for name in names:  # each file lands whole: copied beside its final name, then renamed over it
        tmp = dest / f".{name}.tmp"
        shutil.copyfile(stage / name, tmp)
        _fsync_file(tmp)
        os.replace(tmp, dest / name)
    for path in dest.iterdir():
        if path.is_file() and path.name not in names:
            path.unlink()
    _fsync_dir(dest)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            _fsync_file(path)
    _fsync_dir(directory)
