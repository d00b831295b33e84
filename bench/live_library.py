"""The live library that bench/beyond_text.py measures: long videos, one data dir, alpro-serve, an HTTP client.

From the demo's synthetic corpus and checkpoints (`DEMO_INSTALL=0 bash scripts/demo.sh --check` makes them):
1. long videos: `join` held-out (test split) clips end to end per video (training/long_videos.py), with the
   held-out questions that only one part answers;
2. one library, one data dir: every corpus video under library/corpus/ and the long videos under library/long/
   (hard links), indexed by `alpro-index --segment-seconds <clip length>` so each part of a long video is one
   segment;
3. `alpro-serve` with both checkpoints on loopback, polled on /readyz, and a sequential JSON client that keeps
   each route's latency.
`serve_library` does all three and tears them down (the work dir is kept, and reused, only when asked); the
`LiveLibrary` it yields reads the held-out clips, the long videos' parts and their questions for the measures.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
logger = logging.getLogger("bench.live_library")

READY_TIMEOUT_S = 300
MISSING_HINT = ("make them with `DEMO_INSTALL=0 bash scripts/demo.sh --check` (or run the steps in scripts/demo.sh: "
                "alpro-synth, alpro-train pretrain / finetune-qa, alpro-eval); the bench does not train")


class BenchError(RuntimeError):
    """The bench cannot run or a request failed."""


# -- inputs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    corpus: Path  # alpro-synth corpus (videos/, annotations/, corpus.json)
    checkpoint: Path  # retrieval checkpoint (native dir)
    qa_checkpoint: Path  # QA checkpoint (native dir)
    eval_json: Optional[Path]  # alpro-eval retrieval output, for the text-to-video R@1 beside /classify


def resolve_inputs(demo_dir: Path, corpus: Optional[Path] = None, checkpoint: Optional[Path] = None,
                   qa_checkpoint: Optional[Path] = None, eval_json: Optional[Path] = None) -> Inputs:
    """The explicit paths, else the demo's; BenchError naming what is missing."""
    demo = Path(demo_dir)
    inputs = Inputs(corpus=Path(corpus or demo / "corpus"),
                    checkpoint=Path(checkpoint or demo / "runs" / "retrieval" / "final"),
                    qa_checkpoint=Path(qa_checkpoint or demo / "runs" / "qa" / "final"),
                    eval_json=Path(eval_json) if eval_json else demo / "eval.json")
    missing = [str(p) for p in (inputs.corpus / "corpus.json", inputs.checkpoint / "config.json",
                                inputs.qa_checkpoint / "config.json") if not p.is_file()]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: {MISSING_HINT}")
    return inputs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_long(work: Path, corpus: Path, join: int, seed: int) -> Path:
    """The long videos (reused from a kept work dir when made from the same corpus with the same settings)."""
    from training.long_videos import LONG_VERSION, make_long_videos

    out = work / "long"
    manifest = out / "long.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if (m.get("version"), m.get("source"), m.get("join"), m.get("seed")) == (LONG_VERSION, str(corpus), join, seed):
            return out
    make_long_videos(out, corpus, join=join, split="test", seed=seed, overwrite=True)
    return out


def middle_frame_png(path: Path) -> str:
    """The middle frame of a video file, as base64 PNG."""
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    buffer = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- library and index ----------------------------------------------------------------------------------------
def link_tree(src: Path, dst: Path) -> None:
    """dst/<name> for every mp4 of src, hard-linked (copied across file systems)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.mp4")):
        target = dst / path.name
        if target.exists():
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def clean_env() -> dict[str, str]:
    """The environment without the caller's ALPRO_* settings (the bench passes what it means)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}


def index_library(library: Path, data: Path, checkpoint: Path, segment_seconds: float) -> dict[str, Any]:
    cmd = [str(BIN / "alpro-index"), str(library), "--data-dir", str(data), "--checkpoint", str(checkpoint),
           "--segment-seconds", f"{segment_seconds:g}", "--previews", "off", "--no-progress", "--json"]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise BenchError(f"alpro-index failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- server ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """alpro-serve in a subprocess on loopback; its log goes to a file in the work dir."""

    def __init__(self, data: Path, checkpoint: Path, qa_checkpoint: Path, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [str(BIN / "alpro-serve"), "--data-dir", str(data), "--checkpoint", str(checkpoint),
               "--qa-checkpoint", str(qa_checkpoint), "--host", "127.0.0.1", "--port", str(self.port),
               "--no-access-log", "--log-level", "warning"]
        self._log_file = log.open("w")
        self.process = subprocess.Popen(cmd, env=clean_env(), cwd=ROOT, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        import httpx

        start = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise BenchError(f"alpro-serve exited ({self.process.returncode}): {self.log_tail()}")
            if time.monotonic() - start > timeout_s:
                raise BenchError(f"alpro-serve not ready after {timeout_s:.0f} s: {self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()


# -- HTTP -----------------------------------------------------------------------------------------------------
class Client:
    """Sequential JSON requests; the server's took_ms kept per route for the latency summary."""

    def __init__(self, base: str):
        import httpx

        self.http = httpx.Client(base_url=base, timeout=120)
        self.took: dict[str, list[float]] = {}

    def request(self, method: str, path: str, route: str, body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        response = self.http.request(method, path, json=body, params=params)
        if response.status_code != 200:
            raise BenchError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        self.took.setdefault(route, []).append((time.perf_counter() - start) * 1000)
        return response.json()

    def latency(self) -> dict[str, dict[str, float]]:
        return {route: {"requests": len(v), "p50_ms": round(statistics.median(v), 1),
                        "max_ms": round(max(v), 1)} for route, v in self.took.items() if v}

    def close(self) -> None:
        self.http.close()


def video_ids(client: Client) -> dict[str, str]:
    """relative path in the library ("corpus/test_000001.mp4") -> video id, over every indexed video."""
    ids: dict[str, str] = {}
    offset = 0
    while True:
        page = client.request("GET", "/videos", "videos", params={"offset": offset, "limit": 200})
        for video in page["videos"]:
            ids[video["relative_path"]] = video["video_id"]
        offset += len(page["videos"])
        if not page["videos"] or offset >= page["total"]:
            return ids


# -- all of it ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """A held-out clip of the library."""

    name: str  # file name, e.g. test_000003.mp4
    video: str  # path in the corpus, e.g. videos/test_000003.mp4
    video_id: str
    spec: Any  # training.synth.ClipSpec
    duration: float  # seconds


@dataclass(frozen=True)
class LiveLibrary:
    """A served library: the corpus and its long videos in one data dir, and a client of the server."""

    corpus: Path  # the source corpus, resolved
    long_dir: Path  # the long videos (training/long_videos.py layout)
    root: Path  # the library: corpus/ and long/
    clip_seconds: float  # one clip, one segment, one part of a long video
    index_summary: dict[str, Any]  # alpro-index --json
    client: Client
    ids: dict[str, str]  # relative path in the library -> video id
    seconds: dict[str, float]  # long_videos, index, server_ready

    @property
    def corpus_root(self) -> str:
        """The corpus videos' folder, as a `path_prefix` search filter."""
        return str((self.root / "corpus").resolve())

    def held_out(self, limit: Optional[int] = None) -> list[Clip]:
        """The corpus's test clips (the first `limit`), in annotation order."""
        from training.synth import ClipSpec

        rows = read_jsonl(self.corpus / "annotations" / "test.jsonl")[:limit]
        return [Clip(name=Path(r["video"]).name, video=r["video"], video_id=self.ids[f"corpus/{Path(r['video']).name}"],
                     spec=ClipSpec.from_dict(r["spec"]), duration=self.clip_seconds) for r in rows]

    def holders(self) -> dict[str, str]:
        """Clip file name -> the long video file name holding it, over every long video."""
        rows = read_jsonl(self.long_dir / "annotations" / "long.jsonl")
        return {Path(p["clip"]).name: Path(row["video"]).name for row in rows for p in row["parts"]}

    def long_questions(self, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """The long videos' kept questions (the first `limit`; training/long_videos.py fields)."""
        return read_jsonl(self.long_dir / "annotations" / "qa_long.jsonl")[:limit]


@contextmanager
def serve_library(inputs: Inputs, join: int, seed: int, keep: Optional[Path] = None,
                  port: Optional[int] = None) -> Iterator[LiveLibrary]:
    """Make, index and serve the library in `keep` (reused there) or a temporary dir removed afterwards."""
    corpus = inputs.corpus.resolve()
    config = json.loads((corpus / "corpus.json").read_text())["config"]
    clip_seconds = config["frames_per_video"] / config["fps"]
    work = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="bench-beyond-text-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    server = client = None
    try:
        start = time.perf_counter()
        long_dir = make_long(work, corpus, join, seed)
        seconds["long_videos"] = round(time.perf_counter() - start, 2)
        library = work / "library"
        link_tree(corpus / "videos", library / "corpus")
        link_tree(long_dir / "videos", library / "long")
        start = time.perf_counter()
        summary = index_library(library, work / "data", inputs.checkpoint, clip_seconds)
        seconds["index"] = round(time.perf_counter() - start, 2)

        server = Server(work / "data", inputs.checkpoint, inputs.qa_checkpoint, work / "serve.log", port)
        seconds["server_ready"] = round(server.wait_ready(), 2)
        client = Client(server.base)
        yield LiveLibrary(corpus=corpus, long_dir=long_dir, root=library, clip_seconds=clip_seconds,
                          index_summary=summary, client=client, ids=video_ids(client), seconds=seconds)
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
