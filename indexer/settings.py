"""Settings of an indexing run: command-line flags, each also readable from an ALPRO_* environment variable.

Precedence: flag > environment > default. The environment names are the flag names upper-cased with
dashes as underscores and an ALPRO_ prefix (`--segment-seconds` -> ALPRO_SEGMENT_SECONDS); the videos
folder is ALPRO_VIDEOS_DIR. ALPRO_CHECKPOINT, ALPRO_DATA_DIR and ALPRO_DATABASE_URL are shared with the
service, so one environment configures both.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .faiss_index import INDEX_TYPES

ENV_PREFIX = "ALPRO_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A flag or environment value is missing or invalid."""


@dataclass(frozen=True)
class IndexSettings:
    """Everything one `alpro-index` run needs."""

    videos_dir: Path  # folder searched recursively for videos
    data_dir: Path  # index, thumbnails, cache, lock (and the SQLite database by default)
    checkpoint: Path  # native checkpoint directory, or an official ALPRO .pt (with bert_config)
    bert_config: Path | None = None  # the official checkpoint's BERT config JSON
    vision_num_heads: int = 12  # TimeSformer heads of an official checkpoint (not readable from weights)
    database_url: str | None = None  # any SQLAlchemy URL; default sqlite at DATA_DIR/metadata.sqlite3
    segment_seconds: float = 10.0  # target moment length; longer videos are split into windows
    index_type: str = "auto"  # auto | flat | ivf | hnsw
    batch_size: int | None = None  # clips per model call (default 32 on GPU, 4 on CPU)
    num_workers: int | None = None  # decoding processes (default: half the CPUs, 1 to 8)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16/fp16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    store_tokens: bool = False  # keep per-segment token features for VTM re-ranking and QA
    prune: bool = False  # drop videos whose files are gone
    reindex: bool = False  # re-embed everything (required to change checkpoint or segmentation)
    retry_failed: bool = False  # try files that failed before even if unchanged
    keep_versions: int = 3  # published versions kept on disk
    thumbnail_width: int = 320  # thumbnail width in pixels; 0 disables thumbnails
    recall_target: float = 0.95  # recall@10 an approximate index is tuned to reach
    decoder: str | None = None  # auto | decord | pyav (else $ALPRO_DECODER)
    progress: bool = True  # progress bar on stderr
    hash_threads: int = 4  # threads hashing new files

    def validate(self) -> None:
        if not self.videos_dir.is_dir():
            raise SettingsError(f"videos folder {self.videos_dir} does not exist or is not a folder")
        if not self.checkpoint.exists():
            raise SettingsError(f"checkpoint {self.checkpoint} does not exist")
        if self.checkpoint.is_file() and self.bert_config is None:
            raise SettingsError(f"{self.checkpoint} is an official checkpoint file: pass --bert-config "
                                f"(its model_config.json) or convert it with alpro-convert")
        if self.index_type not in INDEX_TYPES:
            raise SettingsError(f"--index-type must be one of {INDEX_TYPES}, got {self.index_type!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise SettingsError(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        for name in ("batch_size", "num_workers"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "batch_size" else 0):
                raise SettingsError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.keep_versions < 1:
            raise SettingsError(f"--keep-versions must be >= 1, got {self.keep_versions}")
        if not 0 < self.recall_target <= 1:
            raise SettingsError(f"--recall-target must be in (0, 1], got {self.recall_target}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v) for f in fields(self)}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={text!r} is not a boolean (use 1/0, true/false)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpro-index",
        description="Index a folder of videos for ALPRO text search: decode, embed, write FAISS + SQL metadata. "
                    "Every flag can also be set as ALPRO_<FLAG> in the environment (e.g. ALPRO_CHECKPOINT).",
    )
    parser.add_argument("videos_dir", nargs="?", help="folder searched recursively for videos [ALPRO_VIDEOS_DIR]")
    parser.add_argument("--data-dir", help="output data directory [ALPRO_DATA_DIR]")
    parser.add_argument("--checkpoint", help="native checkpoint dir or official .pt [ALPRO_CHECKPOINT]")
    parser.add_argument("--bert-config", help="BERT config JSON of an official checkpoint [ALPRO_BERT_CONFIG]")
    parser.add_argument("--vision-num-heads", type=int, help="TimeSformer heads of an official checkpoint (12)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: sqlite in the data dir)")
    parser.add_argument("--segment-seconds", type=float, help="target moment length in seconds (10); 0: no split")
    parser.add_argument("--index-type", choices=INDEX_TYPES, help="FAISS index type (auto: by size)")
    parser.add_argument("--batch-size", type=int, help="clips per model call (32 on GPU, 4 on CPU)")
    parser.add_argument("--num-workers", type=int, help="decoding processes (0: decode in the main process)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--keep-versions", type=int, help="index versions kept on disk (3)")
    parser.add_argument("--thumbnail-width", type=int, help="thumbnail width in pixels (320; 0: none)")
    parser.add_argument("--recall-target", type=float, help="recall@10 an approximate index is tuned to (0.95)")
    parser.add_argument("--decoder", choices=("auto", "decord", "pyav"), help="video decoder backend")
    parser.add_argument("--hash-threads", type=int, help="threads hashing new files (4)")
    for flag, text in (("store-tokens", "store per-segment token features (fp16) for re-ranking and QA"),
                       ("prune", "drop videos whose files are gone"),
                       ("reindex", "re-embed everything (needed to change checkpoint or segmentation)"),
                       ("retry-failed", "retry files that failed before even if unchanged")):
        parser.add_argument(f"--{flag}", action="store_true", default=None, help=text)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar [ALPRO_PROGRESS=0]")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> IndexSettings:
    """Merge parsed flags with the environment into validated settings."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(IndexSettings):
        value = getattr(args, f.name, None)
        if value is None and env_name(f.name) in env:
            raw = env[env_name(f.name)]
            value = _convert(f.name, raw, f.type)
        if value is not None:
            values[f.name] = value
    missing = [name for name in ("videos_dir", "data_dir", "checkpoint") if name not in values]
    if missing:
        raise SettingsError("missing " + ", ".join(f"{n.upper() if n == 'videos_dir' else '--' + n.replace('_', '-')}"
                                                  f" (or {env_name(n)})" for n in missing))
    for name in ("videos_dir", "data_dir", "checkpoint", "bert_config"):
        if name in values and values[name] is not None:
            values[name] = Path(values[name]).expanduser().absolute()
    settings = IndexSettings(**values)
    settings.validate()
    return settings


def _convert(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    try:
        if "bool" in text:
            return parse_bool(raw, env_name(name))
        if "int" in text:
            return int(raw)
        if "float" in text:
            return float(raw)
    except ValueError as e:
        raise SettingsError(f"{env_name(name)}={raw!r}: {e}") from e
    return raw


__all__ = ["ENV_PREFIX", "IndexSettings", "SettingsError", "build_parser", "env_name", "parse_bool", "settings_from"]
