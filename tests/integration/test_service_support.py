"""Shared helpers of the service tests (no tests here): checkpoints, videos, data dirs and a live server.

The shared data dirs are built by the indexer itself (`index_videos`). `DataDirWriter` writes one in the
format-1 layout of store/layout.py (still read: the version directory is its one part) from the indexer's
pieces (ORM, segment windows, content ids, thumbnails, FAISS builder) where a test needs control: vectors
it chooses, rows whose file is gone, a foreign checkpoint fingerprint. `run_server` starts the real app under uvicorn on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

import faiss
import numpy as np
import pytest
import torch

from store.layout import CURRENT_NAME, FAISS_NAME, MANIFEST_NAME, SEGMENTS_NAME, TOKENS_DIR, DataDir, version_name
from store.manifest import IndexManifest
from indexer.discover import content_id
from store.faiss_build import build_index
from indexer.reader import encode_jpeg, segment_windows
from store.tables import Segment, Video, create_engine_for, init_db
from model import AlproModel, checkpoint_fingerprint, create_model, load_video, probe_video
from model.decode import decode_frames
from tests.pg_server import PGVECTOR, backend_settings, publish_copy
from tests.video_factory import solid_frames, write_video

COLORS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "yellow": (230, 220, 30),
          "black": (10, 10, 10)}
QA_ANSWERS = ("red", "blue", "green", "yellow", "black")


def make_checkpoints(root: Path) -> tuple[Path, Path]:
    """A tiny retrieval checkpoint and a tiny QA checkpoint (5 colour answers, 4 frames), saved native."""
    torch.manual_seed(0)
    retrieval = create_model("tiny").save_pretrained(root / "retrieval")
    torch.manual_seed(1)
    # fusion over every frame's tokens, placed by their position and time embeddings, as configs/learn_qa.yaml
    # trains QA checkpoints
    qa = create_model("tiny", num_answers=len(QA_ANSWERS), answers=QA_ANSWERS, num_frames=4,
                      vision_time_segments=4, vision_fusion_pos=True, vision_time_init_std=0.5,
                      mlm_head=False).save_pretrained(root / "qa")
    return retrieval, qa


def make_videos(directory: Path, names: Sequence[str] = ("red", "blue", "green", "yellow"), seconds: float = 2.0,
                fps: int = 10, size: int = 64) -> list[Path]:
    """Real h264 mp4 files, one solid colour each (the frame count of `seconds`)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        frames = solid_frames([COLORS[name]] * int(seconds * fps), width=size, height=size)
        paths.append(write_video(directory / f"{name}.mp4", len(frames), fps=fps, width=size, height=size,
                                 frames=frames))
    return paths


def write_colour_videos(directory: Path, files: dict[str, Sequence[str]], fps: int = 10, width: int = 64,
                        height: int = 48) -> dict[str, Path]:
    """Real h264 files whose every second is one solid colour: relative path -> the colour of each second."""
    written = {}
    for rel, colours in files.items():
        frames = solid_frames([COLORS[c] for c in colours for _ in range(fps)], width=width, height=height)
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        written[rel] = write_video(directory / rel, len(frames), fps=fps, width=width, height=height, frames=frames)
    return written


@dataclass
class _VideoEntry:
    video_id: str
    segment_ids: list[int]
    vectors: np.ndarray  # (S, D)
    tokens: np.ndarray  # (S, 1 + N, D) float16


@dataclass
class DataDirWriter:
    """Writes videos, segments, thumbnails and published index versions, as the indexer lays them out."""

    root: Path
    model: AlproModel
    checkpoint: Path
    segment_seconds: float = 1.0
    videos: dict[str, _VideoEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = DataDir(self.root, backend_settings(self.root).get("database_url"))  # pgvector: its DB
        self.data_dir.enable_writes()
        init_db(create_engine_for(self.data_dir.database_url))
        self.engine = create_engine_for(self.data_dir.database_url)
        self.fingerprint = checkpoint_fingerprint(self.model)
        self._next_segment_id = 1

    def add_video(self, path: Path, *, thumbnails: bool = True) -> str:
        """Probe, cut into windows, embed each window with the model, write rows and thumbnails."""
        info = probe_video(path)
        video_id = content_id(str(path))
        windows = segment_windows(info, self.segment_seconds)
        vectors, tokens, ids = [], [], []
        with torch.inference_mode():
            for window in windows:
                clip = load_video(path, self.model.config, window=window)  # (T, 3, H, W)
                token = self.model.video_tokens(clip[None])  # (1, 1 + N, D)
                vectors.append(self.model.video_features(token)[0].numpy())
                tokens.append(token[0].half().numpy())
        st = path.stat()
        rows = []
        for i, (start, end) in enumerate(windows):
            thumb = None
            if thumbnails:
                mid = int((start + end) / 2 * info.fps)
                frame = decode_frames(path, [min(mid, info.num_frames - 1)])[0]  # (H, W, 3) uint8
                target = self.data_dir.thumbnail_path(video_id, i)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(encode_jpeg(frame))
                thumb = self.data_dir.thumbnail_relpath(video_id, i)
            ids.append(self._next_segment_id)
            rows.append(Segment(id=self._next_segment_id, video_id=video_id, index=i, start_s=start, end_s=end,
                                thumbnail=thumb))
            self._next_segment_id += 1
        with self.data_dir.session() as session:
            session.add(Video(id=video_id, path=str(path.resolve()), size_bytes=st.st_size, mtime=st.st_mtime,
                              duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height,
                              num_frames=info.num_frames, checkpoint_fingerprint=self.fingerprint, codec=info.codec))
            session.add_all(rows)
            session.commit()
        self.videos[video_id] = _VideoEntry(video_id, ids, np.stack(vectors), np.stack(tokens))
        return video_id

    def add_fake_video(self, path: str, num_segments: int = 1, duration_s: float = 1.0) -> str:
        """A DB row (and vectors) for a video whose file does not exist."""
        video_id = f"{abs(hash(path)):032x}"[:32]
        d = self.model.config.embed_dim
        n = 1 + self.model.config.vision.num_patches
        ids = list(range(self._next_segment_id, self._next_segment_id + num_segments))
        self._next_segment_id += num_segments
        with self.data_dir.session() as session:
            session.add(Video(id=video_id, path=path, size_bytes=0, mtime=0.0, duration_s=duration_s, fps=10.0,
                              width=64, height=64, num_frames=int(10 * duration_s),
                              checkpoint_fingerprint=self.fingerprint))
            session.add_all([Segment(id=s, video_id=video_id, index=i, start_s=i * duration_s / num_segments,
                                     end_s=(i + 1) * duration_s / num_segments, thumbnail=None)
                             for i, s in enumerate(ids)])
            session.commit()
        rng = np.random.default_rng(len(self.videos))
        vectors = rng.standard_normal((num_segments, d)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.videos[video_id] = _VideoEntry(video_id, ids, vectors, np.zeros((num_segments, n, d), np.float16))
        return video_id

    def publish(self, *, vectors: Optional[dict[str, np.ndarray]] = None, store_tokens: bool = False,
                video_ids: Optional[Sequence[str]] = None, fingerprint: Optional[str] = None) -> int:
        """Write the next index version over the given (default: all) videos and point CURRENT at it.

        `vectors` replaces the embeddings of some videos ((S, D) each, normalised here).
        """
        chosen = list(video_ids) if video_ids is not None else list(self.videos)
        all_ids, all_vectors, video_pos, seg_index = [], [], [], []
        for pos, vid in enumerate(chosen):
            entry = self.videos[vid]
            vecs = entry.vectors if vectors is None or vid not in vectors else np.asarray(vectors[vid], np.float32)
            vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
            all_ids.extend(entry.segment_ids)
            all_vectors.append(vecs)
            video_pos.extend([pos] * len(entry.segment_ids))
            seg_index.extend(range(len(entry.segment_ids)))
        d = self.model.config.embed_dim
        matrix = np.concatenate(all_vectors).astype(np.float32) if all_vectors else np.zeros((0, d), np.float32)
        ids = np.asarray(all_ids, dtype=np.int64)
        built = build_index(matrix, ids, "flat")
        version = (self.data_dir.current_version() or 0) + 1
        tmp = self.data_dir.index_dir / f".tmp-{version_name(version)}"
        tmp.mkdir(parents=True)
        faiss.write_index(built.index, str(tmp / FAISS_NAME))
        np.savez(tmp / SEGMENTS_NAME, ids=ids, video_pos=np.asarray(video_pos, np.int32),
                 seg_index=np.asarray(seg_index, np.int32), video_ids=np.asarray(chosen, dtype=str))
        token_shape = None
        if store_tokens:
            (tmp / TOKENS_DIR).mkdir()
            for vid in chosen:
                np.save(tmp / TOKENS_DIR / f"{vid}.npy", self.videos[vid].tokens)
            token_shape = tuple(self.videos[chosen[0]].tokens.shape[1:]) if chosen else None
        manifest = IndexManifest(
            version=version, created_at=datetime.now(timezone.utc).isoformat(),
            checkpoint_fingerprint=fingerprint or self.fingerprint, checkpoint=str(self.checkpoint),
            model_config=self.model.config.to_dict(), dim=d, num_vectors=len(ids), num_videos=len(chosen),
            index_type="flat", metric="ip", has_tokens=store_tokens, recall_at_10=1.0 if len(ids) else None,
            segment_seconds=self.segment_seconds, token_shape=token_shape)
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        tmp.rename(self.data_dir.version_dir(version))
        current_tmp = self.data_dir.index_dir / f".{CURRENT_NAME}.tmp"
        current_tmp.write_text(version_name(version))
        os.replace(current_tmp, self.data_dir.current_file)
        if PGVECTOR:  # ALPRO_TEST_VECTOR_STORE=pgvector: the same version in the vector tables
            publish_copy(self.data_dir, ids, matrix, manifest)
        return version


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class LiveServer:
    url: str
    app: object
    server: object

    @property
    def engine(self):
        return self.app.state.engine


@contextlib.contextmanager
def run_server(settings, *, timeout: float = 60.0) -> Iterator[LiveServer]:
    """The real app under uvicorn (httptools, asyncio) on 127.0.0.1 and a free port, in a thread."""
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the server did not start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("the server did not start in time")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def manifest_of(root: Path) -> dict:
    data_dir = DataDir(root)
    return json.loads((data_dir.version_dir(data_dir.current_version()) / MANIFEST_NAME).read_text())


# --------------------------------------------------------------------------------------------------
# Fixtures (import them into a test module by name; the environment is built once per session)

_SESSION: dict[str, "ServiceEnv"] = {}


@dataclass
class ServiceEnv:
    root: Path
    retrieval: Path  # tiny retrieval checkpoint (native dir)
    qa: Path  # tiny QA checkpoint
    videos: dict[str, Path]  # colour -> file
    ids: dict[str, str]  # colour -> video id
    data: Path  # data dir, version 1, no stored tokens
    data_tokens: Path  # same videos, version 1 with stored tokens

    def settings(self, data: Optional[Path] = None, **overrides):
        from service.settings import Settings

        values = dict(data_dir=data or self.data, qa_checkpoint=self.qa, index_poll_s=0.1, decode_workers=1)
        values.update(backend_settings(data or self.data))  # ALPRO_TEST_VECTOR_STORE
        values.update(overrides)
        return Settings(**values)

    def writer(self, root: Path) -> DataDirWriter:
        from model import load_pretrained

        return DataDirWriter(root, load_pretrained(self.retrieval), self.retrieval)


def index_videos(videos: Path, data: Path, checkpoint: Path, *, store_tokens: bool = False, **overrides) -> int:
    """Run the real indexer (`alpro-index`'s pipeline) over a folder, on the backend under test unless `overrides`
    say otherwise (IndexSettings fields); returns the published version."""
    from indexer.pipeline import run_index
    from indexer.settings import IndexSettings

    values = dict(videos_dir=videos, data_dir=data, checkpoint=checkpoint, segment_seconds=1.0, num_workers=0,
                  progress=False, store_tokens=store_tokens, **backend_settings(data))
    values.update(overrides)
    summary = run_index(IndexSettings(**values))
    assert summary.failed == 0 and summary.published, summary.to_dict()
    return summary.index_version


def build_service_env(root: Path) -> ServiceEnv:
    """Checkpoints, four 2-second videos, and two data dirs the indexer built (1-second moments)."""
    retrieval, qa = make_checkpoints(root / "checkpoints")
    paths = make_videos(root / "videos")
    videos = {p.stem: p for p in paths}
    index_videos(root / "videos", root / "data", retrieval)
    index_videos(root / "videos", root / "data_tokens", retrieval, store_tokens=True)
    ids = {name: content_id(str(path)) for name, path in videos.items()}
    return ServiceEnv(root, retrieval, qa, videos, ids, root / "data", root / "data_tokens")


@pytest.fixture(scope="session")
def service_env(tmp_path_factory) -> ServiceEnv:
    if "env" not in _SESSION:
        _SESSION["env"] = build_service_env(tmp_path_factory.mktemp("service"))
    return _SESSION["env"]
