"""Service settings: the shared `ALPRO_*` layer (settings.SharedSettings) plus the service's own variables.

Flags of `alpro-serve` win over the environment; an empty variable means unset. Hard request limits live in
`service.schemas` (they shape the OpenAPI schema); the fields here may only tighten them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from settings import SharedSettings, flag_and_variable

from . import schemas

# flag of `alpro-serve` for each field that has one (the rest are ALPRO_* variables only)
FLAGS = {"data_dir": "--data-dir", "host": "--host", "port": "--port", "checkpoint": "--checkpoint",
         "bert_config": "--bert-config", "qa_checkpoint": "--qa-checkpoint", "device": "--device",
         "vector_store": "--vector-store", "precision": "--precision"}


class Settings(SharedSettings):
    """What `alpro-serve` serves and how; see README "Configuration" for the environment variables.

    Shared with the indexer: data_dir (required here), database_url, checkpoint (default: the one the index
    manifest records), bert_config, device, precision (int8: the models' Linear layers in int8 on the CPU),
    home, checkpoint_url.
    """

    data_dir: Path  # the indexer's data dir (index/, metadata.sqlite3, thumbnails/)
    qa_checkpoint: Optional[str] = None  # QA checkpoint (native dir, official .pt or a released name); unset: 501
    qa_bert_config: Optional[Path] = None  # BERT config of an official QA .pt; default bert_config

    # --- network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: Optional[SecretStr] = None  # when set, every route but health, the page and docs needs it
    cors_origins: Annotated[list[str], NoDecode] = []  # JSON list or comma-separated; empty = CORS off
    docs: bool = True  # serve /docs, /redoc and /openapi.json
    search_fast_path: bool = True  # answer plain POST /search below the framework (service.fastpath)

    # --- limits (at most the hard caps of service.schemas)
    max_query_chars: int = Field(schemas.MAX_QUERY_CHARS, ge=1, le=schemas.MAX_QUERY_CHARS)
    max_top_k: int = Field(schemas.MAX_TOP_K, ge=1, le=schemas.MAX_TOP_K)
    max_body_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)  # larger request bodies get 413
    rerank_default: int = Field(20, ge=1, le=schemas.MAX_RERANK)  # candidates re-ranked for `"rerank": true`
    overfetch: int = Field(4, ge=1, le=64)  # FAISS hits fetched per wanted video, before grouping
    max_fetch: int = Field(4096, ge=1)  # FAISS hits fetched at most per query (filters search passing rows only)
    max_image_bytes: int = Field(8 * 2**20, ge=1024, le=64 * 2**20)  # an image query's file; /search bodies may
    # be this much larger (base64) than max_body_bytes
    max_image_pixels: int = Field(40_000_000, ge=1, le=400_000_000)  # an image query's width x height

    # --- question answering on long videos (grounded answers) and zero-shot labels
    qa_segments: int = Field(3, ge=1, le=16)  # a long video's segments most similar to the question answered on
    qa_min_confidence: float = Field(0.1, ge=0, le=1)  # a grounded answer below this probability abstains (measured:
    # on joined synthetic clips a higher cut lowered coverage without raising accuracy, docs/beyond_text.md)
    prompt_cache_size: int = Field(20_000, ge=0)  # prompt text features kept (one vector each)

    # --- concurrency
    batch_window_ms: Optional[float] = Field(None, ge=0, le=100)  # wait for more queries; None: 2 on GPU, 0 on CPU
    max_batch: int = Field(32, ge=1, le=1024)  # queries per encoder call (1 turns batching off)
    max_queue: int = Field(64, ge=1)  # model jobs waiting at most; beyond: 503 + Retry-After
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of an overload 503
    decode_workers: int = Field(2, ge=1, le=64)  # threads decoding videos for re-ranking and QA
    max_decode_jobs: int = Field(16, ge=1)  # video decodes admitted at once (queued or running); beyond: 503
    request_timeout_s: float = Field(60.0, gt=0)  # a /qa or re-ranking request past this gets 504, its work stops
    db_workers: int = Field(4, ge=1, le=64)  # threads running metadata-DB look-ups
    torch_threads: Optional[int] = Field(None, ge=1)  # torch intra-op threads; None keeps torch's default

    # --- caches (bytes of token features kept)
    token_cache_mb: float = Field(256, ge=0)  # decoded-and-encoded segment tokens for re-ranking
    qa_cache_mb: float = Field(512, ge=0)  # per-video QA token features
    row_cache_size: int = Field(100_000, ge=0)  # segment rows kept in memory (about 300 bytes each); 0: off

    # --- index updates
    index_poll_s: float = Field(1.0, gt=0)  # how often index/CURRENT is checked for a new version
    warmup: bool = True  # run each model once at start-up
    shutdown_grace_s: float = Field(20, gt=0)  # on SIGTERM: how long in-flight requests may take to finish

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("qa_checkpoint", mode="before")
    @classmethod
    def _qa_path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("data_dir")
    @classmethod
    def _data_dir_exists(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_dir():
            raise ValueError(f"data dir {value} does not exist or is not a directory")
        return value.resolve()

    @model_validator(mode="after")
    def _checkpoint_exists(self) -> "Settings":
        # checked here, so a typo stops alpro-serve at once with exit code 2 (as the indexer's settings do),
        # not after the server started and the lifespan failed; a released name is fetched at start-up. (A QA
        # checkpoint may appear later: /qa answers 503 until it does.)
        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().exists():
            from model.hub import is_checkpoint_name

            if not is_checkpoint_name(self.checkpoint):
                raise ValueError(checkpoint_not_found(self.checkpoint, "checkpoint"))
        return self

    @model_validator(mode="after")
    def _api_key_not_blank(self) -> "Settings":
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("ALPRO_API_KEY is set but blank; unset it (or leave it empty) to turn the key off")
        if self.api_key is not None and self.api_key.get_secret_value() != self.api_key.get_secret_value().strip():
            raise ValueError("ALPRO_API_KEY starts or ends with whitespace, which an HTTP header cannot carry")
        return self

    @property
    def search_body_bytes(self) -> int:
        """The body limit of POST /search: room for the largest image in base64 (and a data: URL prefix)."""
        return self.max_body_bytes + 4 * -(-self.max_image_bytes // 3) + 64

    @property
    def resolved_device(self) -> str:
        return self.resolved_device_name()

    @property
    def batch_window_s(self) -> float:
        if self.batch_window_ms is not None:
            return self.batch_window_ms / 1000
        # a GPU encodes 32 queries in about the time of one, so a short wait pays; a CPU does not gain
        # from waiting (queries that queued up meanwhile are still batched)
        return 0.002 if self.resolved_device.startswith("cuda") else 0.0


def checkpoint_not_found(spec: object, field: Optional[str] = None) -> str:
    """`checkpoint not found: PATH (--checkpoint / ALPRO_CHECKPOINT)`: the setting that named it, when one did."""
    source = f" ({flag_and_variable(field, FLAGS)})" if field else ""
    return f"checkpoint not found: {spec}{source}"
