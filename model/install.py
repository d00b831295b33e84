"""Writing checkpoint directories: staged next to the target, fsynced, renamed into place.

A directory appears whole or not at all; a mount point (a docker volume), which cannot be renamed, gets its
files replaced one by one, config.json last. A replaced directory is renamed aside until the new one is in, so
a writer killed in between leaves the old one whole under a temporary name, which `remove_stale_stages` puts
back. Temporaries are hidden: `.<name>.<pid>-<random>.tmp` (a stage) and `...old.tmp` (a replaced copy).
Used by save_pretrained, model.hub, alpro-fetch and the trainer's checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from .checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_official_checkpoint, read_native_config,
                         write_native_files)
from .download import FetchError, PathLike, _fsync_dir, _fsync_file

logger = logging.getLogger(__name__)

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
    with staged_directory(dest) as stage:
        write_native_files(model, stage)
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
    with staged_directory(dest) as stage:
        for path in source.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, stage / path.name)
        publish_directory(stage, dest)
    return dest


class ReplaceRefusedError(FetchError, CheckpointError):
    """The directory where a checkpoint goes holds something else; a FetchError for alpro-fetch, a
    CheckpointError for save_pretrained's callers."""


def _temporary_name(dest: Path, kind: str) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}{kind}.tmp")


@contextlib.contextmanager
def staged_directory(dest: PathLike) -> Iterator[Path]:
    """An empty hidden directory beside `dest` to fill and then `publish_directory`; removed if not published."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = _temporary_name(dest, "")
    stage.mkdir()  # not mkdtemp: its mode 0700 would survive the rename and hide the checkpoint from other users
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when it was published


def remove_stale_stages(dest: PathLike) -> None:
    """Clean up after writers of `dest` that were killed; call it while no other writer of `dest` runs.

    A checkpoint renamed aside for a replacement that never came in goes back to `dest` (the newest such copy
    that is a whole native checkpoint); every other stage and old copy is deleted.
    """
    dest = Path(dest)
    stale = list(dest.parent.glob(f".{dest.name}.*.tmp"))
    if not (dest.exists() or dest.is_symlink()):
        aside = [p for p in stale if p.name.endswith(".old.tmp") and _is_native_checkpoint(p)]
        if aside:
            newest = max(aside, key=lambda p: (p / CONFIG_NAME).stat().st_mtime_ns)
            os.rename(newest, dest)
            _fsync_dir(dest.parent)
            stale.remove(newest)
            logger.warning("put %s back from %s: a replacement of it was interrupted", dest, newest.name)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, left by a checkpoint save that did not finish", path)




def _is_native_checkpoint(directory: Path) -> bool:
    try:
        read_native_config(directory)
    except (ValueError, TypeError, KeyError):  # CheckpointError and ConfigError are ValueErrors
        return False
    return (directory / WEIGHTS_NAME).is_file()


def publish_directory(stage: Path, dest: Path) -> None:
    """Rename the filled `stage` to `dest`; an existing `dest` must be empty or a native checkpoint."""
    _fsync_tree(stage)
    if not (dest.exists() or dest.is_symlink()):
        os.rename(stage, dest)
        _fsync_dir(dest.parent)
        return
    _check_replaceable(dest)
    old = _temporary_name(dest, ".old")
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
    raise ReplaceRefusedError(f"refusing to replace {dest}: it is not an ALPRO checkpoint directory (nor empty)")


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
