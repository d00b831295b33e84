"""Settings of an indexing run: command-line flags over `ALPRO_*` environment variables (the shared layer).

Precedence: flag > environment > default; an empty variable means unset. The environment names are the
flag names upper-cased with dashes as underscores and an ALPRO_ prefix (`--segment-seconds` ->
ALPRO_SEGMENT_SECONDS); the videos folder is ALPRO_VIDEOS_DIR. The shared variables (ALPRO_CHECKPOINT,
ALPRO_DATA_DIR, ALPRO_DATABASE_URL, ALPRO_DEVICE, ALPRO_HOME, ...) are `settings.SharedSettings`, so one
environment configures the indexer and the service alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from settings import ENV_PREFIX, SettingsError, SharedSettings, env_name, load_settings

from store.faiss_build import INDEX_TYPES

IndexType = Literal["auto", "flat", "ivf", "hnsw", "ivfpq"]  # store.faiss_build.INDEX_TYPES


class IndexSettings(SharedSettings):
    """Everything one `alpro-index` run needs."""

    videos_dir: Path  # folder searched recursively for videos
    data_dir: Path  # index, thumbnails, cache, lock (and the SQLite database by default)
    checkpoint: str  # native checkpoint dir, official ALPRO .pt (with bert_config), or a released name
    vision_num_heads: int = Field(12, ge=1)  # TimeSformer heads of an official checkpoint (not in its weights)
    segment_seconds: float = Field(10.0, ge=0)  # target moment length; longer videos are split into windows
    index_type: IndexType = "auto"
    batch_size: Optional[int] = Field(None, ge=1)  # clips per model call (default 32 on GPU, 4 on CPU)
    num_workers: Optional[int] = Field(None, ge=0)  # decoding processes (default: half the CPUs, 1 to 8)
    store_tokens: bool = False  # keep per-segment token features for VTM re-ranking and QA
    prune: bool = False  # drop videos whose files are gone
    reindex: bool = False  # re-embed everything (required to change checkpoint or segmentation)
    retry_failed: bool = False  # try files that failed before even if unchanged
    keep_versions: int = Field(3, ge=1)  # published versions kept on disk
    thumbnail_width: int = Field(320, ge=0)  # thumbnail width in pixels; 0 disables thumbnails
    recall_target: float = Field(0.95, gt=0, le=1)  # recall@10 an approximate index is tuned to reach
    decoder: Optional[Literal["auto", "decord", "pyav"]] = None  # video decoder backend (auto: decord, else PyAV)
    progress: bool = True  # progress bar on stderr
    hash_threads: int = Field(4, ge=1)  # threads hashing new files
    # browser previews (indexer.preview): auto for videos a browser cannot play, all, or off
    previews: Literal["auto", "all", "off"] = "auto"
    preview_height: int = Field(360, ge=16)  # preview height in pixels (never upscaled)

    @field_validator("videos_dir", "data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("videos_dir")
    @classmethod
    def _videos_exist(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"videos folder {value} does not exist or is not a folder")
        return value

    @model_validator(mode="after")
    def _checkpoint_usable(self) -> "IndexSettings":
        from model.hub import is_checkpoint_name

        path = Path(self.checkpoint).expanduser()
        if not path.exists() and not is_checkpoint_name(self.checkpoint):
            raise ValueError(f"ALPRO_CHECKPOINT (--checkpoint) {self.checkpoint} does not exist and is not the "
                             f"name of a released checkpoint (alpro-fetch --list)")
        if path.is_file() and self.bert_config is None:
            raise ValueError(f"{self.checkpoint} is an official checkpoint file: pass --bert-config "
                             f"(its model_config.json) or convert it with alpro-convert")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# flag of each field whose flag is not simply its name with dashes
_FLAGS = {name: "--" + name.replace("_", "-") for name in IndexSettings.model_fields}
_FLAGS["videos_dir"] = "VIDEOS_DIR"
_FLAGS["progress"] = "--no-progress"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpro-index",
        description="Index a folder of videos for ALPRO text search: decode, embed, write FAISS + SQL metadata. "
                    "Every flag can also be set as ALPRO_<FLAG> in the environment (e.g. ALPRO_CHECKPOINT); "
                    "an empty variable means unset.",
    )
    parser.add_argument("videos_dir", nargs="?", help="folder searched recursively for videos [ALPRO_VIDEOS_DIR]")
    parser.add_argument("--data-dir", help="output data directory [ALPRO_DATA_DIR]")
    parser.add_argument("--checkpoint", help="native checkpoint dir, official .pt or a released checkpoint's name "
                                             "(alpro-fetch --list) [ALPRO_CHECKPOINT]")
    parser.add_argument("--bert-config", help="BERT config JSON of an official checkpoint [ALPRO_BERT_CONFIG]")
    parser.add_argument("--vision-num-heads", type=int, help="TimeSformer heads of an official checkpoint (12)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: sqlite in the data dir)")
    parser.add_argument("--segment-seconds", type=float, help="target moment length in seconds (10); 0: no split")
    parser.add_argument("--index-type", choices=INDEX_TYPES,
                        help="base index type (auto: by size; ivfpq: compressed, re-scored exactly)")
    parser.add_argument("--vector-store", choices=("faiss", "pgvector"),
                        help="where vectors live: faiss (files in the data dir, default) or pgvector (the "
                             "PostgreSQL metadata database, which needs the pgvector extension)")
    parser.add_argument("--batch-size", type=int, help="clips per model call (32 on GPU, 4 on CPU)")
    parser.add_argument("--num-workers", type=int, help="decoding processes (0: decode in the main process)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                        help="auto: bf16/fp16 on a GPU, fp32 on the CPU; int8: int8 encoders on the CPU")
    parser.add_argument("--keep-versions", type=int, help="index versions kept on disk (3)")
    parser.add_argument("--thumbnail-width", type=int, help="thumbnail width in pixels (320; 0: none)")
    parser.add_argument("--recall-target", type=float, help="recall@10 an approximate index is tuned to (0.95)")
    parser.add_argument("--decoder", choices=("auto", "decord", "pyav"), help="video decoder backend")
    parser.add_argument("--hash-threads", type=int, help="threads hashing new files (4)")
    parser.add_argument("--previews", choices=("auto", "all", "off"),
                        help="browser-playable MP4 previews: auto (of videos a browser cannot play), all, off")
    parser.add_argument("--preview-height", type=int, help="preview height in pixels (360; never upscaled)")
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


def settings_from(args: argparse.Namespace) -> IndexSettings:
    """Merge parsed flags with the environment into validated settings (SettingsError names a bad value)."""
    values = {name: getattr(args, name, None) for name in IndexSettings.model_fields}
    return load_settings(IndexSettings, values, flags=_FLAGS)


__all__ = ["ENV_PREFIX", "IndexSettings", "SettingsError", "build_parser", "env_name", "settings_from"]
