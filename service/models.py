"""Checkpoints as the service loads them: a native directory, an official .pt with its BERT config, or a
released checkpoint by name (fetched on first use); strict loading, eval mode, fingerprinted."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from model import AlproModel, Tokenizer, checkpoint_fingerprint, load_model
from model.download import FetchError
from model.hub import is_checkpoint_name, resolve_checkpoint
from model.quantize import quantize_encoders
from store.layout import DataDir
from store.manifest import IndexManifest

from . import schemas
from .errors import StartupError
from .settings import Settings

logger = logging.getLogger(__name__)

@dataclass
class LoadedModel:
    """A checkpoint ready to serve: the network on its device, its tokenizer and its fingerprint."""

    model: AlproModel
    tokenizer: Tokenizer
    fingerprint: str
    path: Path

    @property
    def device(self) -> torch.device:
        return self.model.device

    def info(self) -> schemas.CheckpointInfo:
        config = self.model.config
        return schemas.CheckpointInfo(path=str(self.path), fingerprint=self.fingerprint, num_frames=config.num_frames,
                                      answers=config.num_answers or None)


def load_checkpoint(spec: str | Path, bert_config: Optional[Path], device: str,
                    settings: Optional[Settings] = None) -> LoadedModel:
    """Load a native directory, an official .pt (with its BERT config) or a released checkpoint by name
    (fetched into ALPRO_HOME on first use) strictly, in eval mode."""
    from .settings import checkpoint_not_found  # the message Settings gives for the same mistake

    start = time.perf_counter()
    path = Path(spec).expanduser()
    if not path.exists() and (settings is None or not is_checkpoint_name(str(spec))):
        # a path that is not there, called so (not "neither a path nor a name", nor a loader's complaint), with
        # the setting that named it when it came from one
        field = next((name for name in ("checkpoint", "qa_checkpoint")
                      if settings is not None and getattr(settings, name) == str(spec)), None)
        raise StartupError(checkpoint_not_found(spec, field))
    try:
        if not path.exists():  # a released checkpoint's name
            path = resolve_checkpoint(str(spec), home=settings.home, base_url=settings.checkpoint_url)
        model = load_model(path, bert_config)
    except FileNotFoundError as e:  # it went away while loading
        raise StartupError(checkpoint_not_found(spec)) from e
    except FetchError as e:
        raise StartupError(f"cannot fetch checkpoint {spec}: {e}") from e
    except ValueError as e:  # CheckpointError, ConfigError: already name the bad key or value
        raise StartupError(f"cannot load checkpoint {spec}: {e}") from e
    fingerprint = checkpoint_fingerprint(model)  # of the weights as stored, before any device move or int8
    model = model.to(torch.device(device)).eval()
    if settings is not None and settings.precision == "int8":  # the CPU path: int8 Linear layers (issue 23)
        model = quantize_encoders(model, inplace=True)
    tokenizer = Tokenizer.from_config(model.config)
    logger.info("loaded %s (fingerprint %s, %d frames, text length %d) on %s%s in %.1f s", path, fingerprint,
                model.config.num_frames, tokenizer.max_length, device,
                " in int8" if settings is not None and settings.precision == "int8" else "",
                time.perf_counter() - start)
    return LoadedModel(model, tokenizer, fingerprint, Path(path))


def not_there_yet(spec: str) -> bool:
    """A checkpoint path that does not exist (yet), as opposed to a released checkpoint's name."""
    return not Path(spec).expanduser().exists() and not is_checkpoint_name(spec)


def manifest_checkpoint(manifest: IndexManifest, data_dir: DataDir) -> Path:
    """The checkpoint an index records; a relative path is taken relative to the data dir first."""
    path = Path(manifest.checkpoint)
    if not path.is_absolute() and (data_dir.root / path).exists():
        return data_dir.root / path
    return path
