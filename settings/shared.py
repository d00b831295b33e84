"""The `ALPRO_*` variables every program reads, and how a program builds its settings from them.

Every program (alpro-serve, alpro-index, alpro-train, alpro-fetch) subclasses `SharedSettings` with its own
fields. Precedence: a command-line flag > the environment > the default. An empty environment variable means
"unset" (compose passes `${VAR:-}` as an empty string), so every optional setting falls back to its default;
an invalid value is a `SettingsError` that names the variable (and its flag) and says what is wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .logs import demote_library_logs

ENV_PREFIX = "ALPRO_"
# The ALPRO release's checkpoints as LAVIS hosts them, one file each (model.hub names the files).
DEFAULT_CHECKPOINT_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/ALPRO"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

S = TypeVar("S", bound="SharedSettings")


class SettingsError(ValueError):
    """A flag or environment value is missing or invalid; the message names it."""


def default_home() -> Path:
    """Where fetched checkpoints are kept unless ALPRO_HOME says otherwise: $XDG_CACHE_HOME/alpro."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "alpro"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_and_variable(field_name: str, flags: Optional[Mapping[str, str]] = None) -> str:
    """How a user sets a field: `--checkpoint / ALPRO_CHECKPOINT`, or the variable alone if it has no flag."""
    flag = (flags or {}).get(field_name)
    return f"{flag} / {env_name(field_name)}" if flag else env_name(field_name)


class SharedSettings(BaseSettings):
    """The settings every entry point shares; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    data_dir: Optional[Path] = None  # the index's data dir (index/, thumbnails/, the SQLite database)
    database_url: Optional[str] = None  # SQLAlchemy URL of the metadata DB; default sqlite in the data dir
    checkpoint: Optional[str] = None  # native dir, official .pt, or a released checkpoint's name (alpro-fetch)
    bert_config: Optional[Path] = None  # model_config.json of an official .pt
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    home: Path = Field(default_factory=default_home)  # fetched checkpoints live in HOME/checkpoints
    checkpoint_url: str = DEFAULT_CHECKPOINT_URL  # where released checkpoints are downloaded from
    # Where segment vectors live (issue 21): FAISS files in the data dir (embedded, the default), or PostgreSQL
    # with pgvector, in the metadata database itself (store/pgvector/), so API replicas share only the database
    vector_store: Literal["faiss", "pgvector"] = "faiss"
    # How the encoders run (issue 23): auto = bf16/fp16 autocast on a GPU, fp32 on the CPU; int8 = the CPU path
    # with int8 Linear layers (model/quantize.py), which `auto` devices resolve to the CPU for. The precision an
    # index's vectors were made in is part of its identity.
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("database_url", "checkpoint")
    @classmethod
    def _not_blank(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.strip():
            raise ValueError("is blank; leave it unset for the default")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _int8_runs_on_the_cpu(self) -> "SharedSettings":
        if self.precision == "int8" and self.device not in ("auto", "cpu"):
            raise ValueError(f"ALPRO_PRECISION=int8 (--precision) runs on the CPU only, and ALPRO_DEVICE (--device) "
                             f"is {self.device}: use cpu (or auto), or bf16/fp16 on a GPU")
        return self

    def resolved_device_name(self) -> str:
        """The device to run on: `auto` is CUDA when present, except for int8, which runs on the CPU."""
        if self.device != "auto":
            return self.device
        if self.precision == "int8":
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @model_validator(mode="after")
    def _pgvector_needs_postgresql(self) -> "SharedSettings":
        # pgvector keeps the vectors beside the metadata: the metadata database must be PostgreSQL
        url = self.database_url or ""
        if self.vector_store == "pgvector" and not url.startswith(("postgresql:", "postgresql+")):
            raise ValueError(
                f"ALPRO_VECTOR_STORE=pgvector (--vector-store) keeps the vectors in the metadata database, which "
                f"must be PostgreSQL with the pgvector extension: set ALPRO_DATABASE_URL to a "
                f"postgresql+psycopg://... URL (it is {'unset' if not url else repr(url.split(':', 1)[0] + ':...')})")
        return self

    @field_validator("checkpoint_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://", "file://")):
            raise ValueError("must be an http(s):// or file:// URL")
        return value

    @field_validator("home", "data_dir", "bert_config")
    @classmethod
    def _expand(cls, value: Optional[Path]) -> Optional[Path]:
        return value.expanduser() if value is not None else None


def describe_error(error: ValidationError, flags: Mapping[str, str]) -> str:
    """One line per bad value: the variable (and flag), the value, the problem."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        if not field:  # a model-level check: its message names what it checks
            problems.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        name = env_name(field) + (f" ({flags[field]})" if field in flags else "")
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{name} is required")
        else:
            problems.append(f"{name}={item.get('input')!r}: {message}")
    return "; ".join(problems)


def load_settings(cls: type[S], values: Optional[Mapping[str, Any]] = None, *,
                  flags: Optional[Mapping[str, str]] = None) -> S:
    """Build `cls` from `values` (e.g. parsed flags; None means not given) over the environment.

    `flags` maps field names to the flag that sets them (`--data-dir`), so an error can name both.
    """
    # every program builds its settings here first thing, so its logging is tidied here too, before the
    # heavy imports (FAISS among them) that the settings decide about
    demote_library_logs()
    given = {k: v for k, v in (values or {}).items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as e:
        raise SettingsError(describe_error(e, flags or {})) from e
