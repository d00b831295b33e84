"""Released checkpoints by name: download over real loopback HTTP (resume, faults), verify, convert, cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import struct
import sys
import threading
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import pytest
import torch

import model.install
from model import load_official_checkpoint, load_pretrained
from model.checkpoint import convert_official_state_dict, infer_config
from model.config import apply_overrides
from model.download import FetchError, RemoteFile, verify_archive
from model.hub import (BERT_CONFIG, REGISTRY, RELEASE_URL, ReleasedCheckpoint, UnknownCheckpointError, fetch,
                       resolve_checkpoint)
from model.install import install_checkpoint
from tests.conftest import REFERENCE, assert_same_outputs, load_reference

RETRIEVAL = REFERENCE / "retrieval_model_step_best.pt"
QA = REFERENCE / "qa_model_step_best.pt"
BERT = REFERENCE / "base_model.json"
ANSWERS = {"yes": 0, "no": 1, "dog": 2, "cat": 3, "man": 4, "woman": 5, "two": 6}
RETRIEVAL_PATH = "/models/ALPRO/tiny_retrieval.pt"
QA_PATH = "/models/ALPRO/tiny_qa.pth"
ANSWERS_PATH = "/datasets/tiny/train_ans2label.json"


@dataclass
class Served:
    path: str
    range: Optional[str]
    status: int
    sent: int  # body bytes


class ReleaseServer:
    """A loopback HTTP server holding release files, with faults on demand; it records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}  # path -> body bytes before the connection drops, first request only
        self.truncate: dict[str, int] = {}  # path -> body bytes on every request (ranges ignored, full length said)
        self.no_length: set[str] = set()  # answered without Content-Length (the end is the connection closing)
        self.ignore_range = False
        self.requests: list[Served] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.running = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/models/ALPRO"

    def start(self) -> "ReleaseServer":
        self.thread.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()  # returns once serve_forever has stopped
            self.running = False
        self.httpd.server_close()

    def to(self, path: str) -> list[Served]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _record(self, *args) -> None:
        with self._lock:
            self.requests.append(Served(*args))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: one request per connection
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                wanted = self.headers.get("Range")
                data = server.files.get(path)
                if data is None:
                    server._record(path, wanted, 404, 0)
                    self.send_error(404)
                    return
                start, status = 0, 200
                if wanted and not server.ignore_range and path not in server.truncate:
                    start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
                    if start >= len(data):
                        server._record(path, wanted, 416, 0)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                limit = min(server.truncate.get(path, len(body)), server.cut_once.pop(path, len(body)))
                # recorded before the body goes out, so a client that has read it finds the record
                server._record(path, wanted, status, limit)
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if path not in server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:limit])

        return Handler


def tiny_registry(**changes) -> dict[str, ReleasedCheckpoint]:
    """Entries like the real ones, for the tiny official-format fixtures (the real ones are full size)."""
    retrieval = ReleasedCheckpoint("tiny-retrieval", "tiny retrieval", RemoteFile("tiny_retrieval.pt"),
                                   bert_config=BERT, vision_num_heads=4, num_frames=2, img_size=32, max_text_len=12)
    qa = ReleasedCheckpoint("tiny-qa", "tiny QA", RemoteFile("tiny_qa.pth"), bert_config=BERT, vision_num_heads=4,
                            num_frames=2, img_size=32, max_text_len=10, num_answers=7,
                            answers=RemoteFile("../../datasets/tiny/train_ans2label.json", "tiny_train_ans2label.json"))
    return {e.name: replace(e, **changes) for e in (retrieval, qa)}


TINY = tiny_registry()


@pytest.fixture
def server():
    release = ReleaseServer()
    release.files[RETRIEVAL_PATH] = RETRIEVAL.read_bytes()
    release.files[QA_PATH] = QA.read_bytes()
    release.files[ANSWERS_PATH] = json.dumps(ANSWERS).encode()
    release.start()
    yield release
    release.stop()


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if anything reaches strict loading (corrupt downloads must be refused before it)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a refused download reached load_official_checkpoint")
    monkeypatch.setattr(model.install, "load_official_checkpoint", refuse)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_retrieval_fetched(path: Path, home: Path) -> None:
    assert path == home / "checkpoints" / "tiny-retrieval"
    direct = load_official_checkpoint(RETRIEVAL, BERT, vision_num_heads=4, max_text_len=12)
    assert_same_outputs(load_pretrained(path), direct)
    record = json.loads((path / "source.json").read_text())
    assert record["sha256"] == sha256(RETRIEVAL.read_bytes()) and record["size"] == RETRIEVAL.stat().st_size
    assert record["name"] == "tiny-retrieval" and record["url"].endswith(RETRIEVAL_PATH)
    assert (home / "downloads" / "tiny_retrieval.pt").read_bytes() == RETRIEVAL.read_bytes()
    assert not list((home / "downloads").glob("*.part"))
    assert not list((home / "checkpoints").glob(".*"))  # no stage left behind


# --------------------------------------------------------------------------------------------------
# The registry


def full_size_state_dict(table: str) -> dict[str, torch.Tensor]:
    """Meta tensors with the shapes of the official full-size checkpoints (tests/fixtures/.../*.tsv)."""
    out = {}
    for line in (REFERENCE / table).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        if ".predictions.decoder." in key:  # tied copies; equality cannot be checked on meta tensors
            continue
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        out[key] = torch.empty(dims, device="meta")
    return out


@pytest.mark.parametrize("name, table, classes", [
    ("alpro-pretrain", "full_size_keys_pretrain.tsv", None),
    ("msrvtt-retrieval", "full_size_keys_retrieval.tsv", None),
    ("didemo-retrieval", "full_size_keys_retrieval.tsv", None),
    ("msrvtt-qa", "full_size_keys_qa.tsv", 1500),
    ("msvd-qa", "full_size_keys_qa.tsv", 2423),
])
def test_each_entry_describes_the_full_size_official_model(name, table, classes):
    entry = REGISTRY[name]
    official = full_size_state_dict(table)
    if classes is not None:
        official["classifier.2.weight"] = torch.empty(classes, 1536, device="meta")
        official["classifier.2.bias"] = torch.empty(classes, device="meta")
    config = infer_config(convert_official_state_dict(official), json.loads(BERT_CONFIG.read_text()),
                          vision_num_heads=entry.vision_num_heads)  # raises if the BERT facts disagree
    config = apply_overrides(config, **entry.overrides())
    assert config.vision.num_heads == 12 and config.text.fusion_layer == 6 and config.text.num_layers == 12
    assert config.num_answers == entry.num_answers
    assert (entry.answers is not None) == bool(entry.num_answers)


def test_registry_names_the_release_files():
    urls = {name: [f.url(RELEASE_URL) for f in entry.files()] for name, entry in REGISTRY.items()}
    models = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/ALPRO/"
    datasets = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/"
    assert urls == {
        "alpro-pretrain": [models + "alpro_pretrain.pt"],
        "msrvtt-retrieval": [models + "alpro_msrvtt_retrieval.pt"],
        "didemo-retrieval": [models + "alpro_didemo_retrieval.pt"],
        "msrvtt-qa": [models + "alpro_msrvtt_qa.pth", datasets + "msrvtt/train_ans2label.json"],
        "msvd-qa": [models + "alpro_msvd_qa.pth", datasets + "msvd/train_ans2label.json"],
    }
    frames = {name: (e.num_frames, e.max_text_len) for name, e in REGISTRY.items()}
    assert frames == {"alpro-pretrain": (4, 30), "msrvtt-retrieval": (8, 40), "didemo-retrieval": (8, 50),
                      "msrvtt-qa": (16, 40), "msvd-qa": (16, 40)}
    downloads = [f.filename for e in REGISTRY.values() for f in e.files()]
    assert len(set(downloads)) == len(downloads)  # one downloads/ directory holds them all


# --------------------------------------------------------------------------------------------------
# Downloading and converting


def test_plain_download_converts_to_a_native_checkpoint(server, tmp_path):
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert_retrieval_fetched(path, tmp_path)
    assert [(r.range, r.status) for r in server.to(RETRIEVAL_PATH)] == [(None, 200)]


def test_qa_download_brings_its_answer_list(server, tmp_path):
    path = fetch("tiny-qa", tmp_path, server.base_url, progress=False, registry=TINY)
    model = load_pretrained(path)
    assert model.config.answers == tuple(sorted(ANSWERS, key=ANSWERS.get))
    assert model.config.preprocess.max_text_len == 10
    video = load_reference("video.pt")
    ids, mask = load_reference("qa_input_ids.pt"), load_reference("qa_attention_mask.pt")
    with torch.no_grad():
        torch.testing.assert_close(model.answer_logits(video, ids, mask),
                                   load_reference("qa_outputs.pt")["answer_logits"], atol=1e-4, rtol=1e-4)
    record = json.loads((path / "source.json").read_text())
    assert record["answers"]["url"] == f"http://127.0.0.1:{server.httpd.server_address[1]}{ANSWERS_PATH}"
    assert record["answers"]["sha256"] == sha256(server.files[ANSWERS_PATH])


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    size = len(server.files[RETRIEVAL_PATH])
    cut = size // 3
    server.cut_once[RETRIEVAL_PATH] = cut
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    served = server.to(RETRIEVAL_PATH)
    assert [(r.range, r.status) for r in served] == [(None, 200), (f"bytes={cut}-", 206)]
    assert sum(r.sent for r in served) == size < 2 * size
    assert_retrieval_fetched(path, tmp_path)


def test_a_part_left_by_an_earlier_run_is_resumed(server, tmp_path):
    data = server.files[RETRIEVAL_PATH]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "tiny_retrieval.pt.part").write_bytes(data[:1000])
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert [(r.range, r.status, r.sent) for r in server.to(RETRIEVAL_PATH)] == [
        ("bytes=1000-", 206, len(data) - 1000)]
    assert_retrieval_fetched(path, tmp_path)


def test_a_server_that_ignores_ranges_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "tiny_retrieval.pt.part").write_bytes(b"\0" * 1000)  # not even the right bytes
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert [(r.range, r.status) for r in server.to(RETRIEVAL_PATH)] == [("bytes=1000-", 200)]
    assert_retrieval_fetched(path, tmp_path)


@pytest.mark.parametrize("extra, expected", [
    (0, [416]),  # the part is the whole file: nothing left to send, the checks pass it
    (7, [416, 200]),  # the part is longer than the file: not this file, start over
])
def test_416_means_complete_or_start_over(server, tmp_path, extra, expected):
    data = server.files[RETRIEVAL_PATH]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "tiny_retrieval.pt.part").write_bytes(data + b"x" * extra)
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert [r.status for r in server.to(RETRIEVAL_PATH)] == expected
    assert_retrieval_fetched(path, tmp_path)


def assert_nothing_kept(home: Path, filename: str = "tiny_retrieval.pt") -> None:
    downloads = home / "downloads"
    assert not (downloads / filename).exists() and not (downloads / f"{filename}.part").exists()
    assert not (home / "checkpoints" / "tiny-retrieval").exists()


def test_a_short_body_under_a_full_content_length_is_refused(server, tmp_path, no_loading):
    size = len(server.files[RETRIEVAL_PATH])
    server.truncate[RETRIEVAL_PATH] = size // 2  # every time, whatever the range asked
    with pytest.raises(FetchError, match=r"truncated.*deleted it"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert [(r.range, r.sent) for r in server.to(RETRIEVAL_PATH)] == [(None, size // 2),
                                                                      (f"bytes={size // 2}-", size // 2)]
    assert_nothing_kept(tmp_path)


def test_a_truncated_file_without_content_length_is_refused(server, tmp_path, no_loading):
    server.files[RETRIEVAL_PATH] = server.files[RETRIEVAL_PATH][: len(server.files[RETRIEVAL_PATH]) * 2 // 3]
    server.no_length.add(RETRIEVAL_PATH)
    with pytest.raises(FetchError, match=r"corrupt or truncated \(not a readable zip archive"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert_nothing_kept(tmp_path)


def test_a_whole_file_without_content_length_is_accepted(server, tmp_path):
    server.no_length.add(RETRIEVAL_PATH)
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert_retrieval_fetched(path, tmp_path)


def flip_inside_largest_member(data: bytes) -> bytes:
    """The same bytes with 16 flipped in the middle of the largest member's data (its CRC no longer matches)."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    middle = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    flipped = bytearray(data)
    for i in range(middle, middle + 16):
        flipped[i] ^= 0xFF
    return bytes(flipped)


def test_flipped_bytes_are_refused_by_their_crc(server, tmp_path, no_loading):
    server.files[RETRIEVAL_PATH] = flip_inside_largest_member(server.files[RETRIEVAL_PATH])
    with pytest.raises(FetchError, match=r"corrupt or truncated \(the CRC-32 of member .* does not match"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    assert_nothing_kept(tmp_path)


def test_verify_archive_accepts_the_fixture_and_refuses_a_pickle(tmp_path):
    verify_archive(RETRIEVAL)
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(FetchError, match="pre-1.6"):
        verify_archive(legacy)


def test_a_known_digest_that_does_not_match_is_refused(server, tmp_path, no_loading):
    registry = tiny_registry(checkpoint=RemoteFile("tiny_retrieval.pt", sha256="0" * 64))
    with pytest.raises(FetchError, match="corrupt or truncated.*sha256"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=registry)
    assert_nothing_kept(tmp_path)


def test_a_corrupt_answer_list_is_refused(server, tmp_path):
    server.files[ANSWERS_PATH] = b'{"yes": 0, "no"'
    with pytest.raises(FetchError, match="train_ans2label.json is corrupt or truncated"):
        fetch("tiny-qa", tmp_path, server.base_url, progress=False, registry=TINY)
    assert not (tmp_path / "downloads" / "tiny_train_ans2label.json").exists()
    assert not (tmp_path / "checkpoints" / "tiny-qa").exists()


def test_an_intact_file_that_does_not_fit_its_entry_is_kept_and_reported(server, tmp_path):
    registry = tiny_registry(bert_config=BERT_CONFIG)  # full-size BERT facts for tiny weights
    with pytest.raises(FetchError, match="downloaded intact but does not convert as tiny-retrieval.*hidden_size"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=registry)
    assert (tmp_path / "downloads" / "tiny_retrieval.pt").read_bytes() == RETRIEVAL.read_bytes()
    assert not (tmp_path / "checkpoints" / "tiny-retrieval").exists()


def test_http_errors_name_the_url(server, tmp_path):
    registry = tiny_registry(checkpoint=RemoteFile("absent.pt"))
    with pytest.raises(FetchError, match=r"cannot download http://127\.0\.0\.1:\d+/models/ALPRO/absent\.pt: HTTP 404"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=registry)


def test_an_unreachable_server_is_a_fetch_error(server, tmp_path):
    server.stop()
    with pytest.raises(FetchError, match=r"cannot download http://127\.0\.0\.1:\d+/models/ALPRO/tiny_retrieval\.pt"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)


def test_a_file_url_mirror_of_the_bucket_works(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "models" / "ALPRO").mkdir(parents=True)
    (mirror / "datasets" / "tiny").mkdir(parents=True)
    (mirror / "models" / "ALPRO" / "tiny_qa.pth").write_bytes(QA.read_bytes())
    (mirror / "datasets" / "tiny" / "train_ans2label.json").write_text(json.dumps(ANSWERS))
    path = fetch("tiny-qa", tmp_path / "home", (mirror / "models" / "ALPRO").as_uri(), progress=False, registry=TINY)
    assert load_pretrained(path).config.answers == tuple(sorted(ANSWERS, key=ANSWERS.get))


# --------------------------------------------------------------------------------------------------
# The cache


def test_a_second_fetch_is_a_cache_hit_without_network(server, tmp_path, monkeypatch):
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    weights = (path / "model.safetensors").stat().st_mtime_ns
    server.stop()

    def offline(*args, **kwargs):
        raise AssertionError("a cache hit opened a connection")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY) == path
    assert resolve_checkpoint("tiny-retrieval", tmp_path, server.base_url, registry=TINY) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == weights
    assert len(server.to(RETRIEVAL_PATH)) == 1


def test_force_downloads_and_converts_again(server, tmp_path):
    fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY)
    path = fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, force=True, registry=TINY)
    assert len(server.to(RETRIEVAL_PATH)) == 2
    assert_retrieval_fetched(path, tmp_path)


def test_concurrent_fetches_download_once(server, tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(fetch("tiny-retrieval", tmp_path, server.base_url, progress=False, registry=TINY))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [tmp_path / "checkpoints" / "tiny-retrieval"] * 2
    assert len(server.to(RETRIEVAL_PATH)) == 1


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_goes_to_stderr_or_the_log(server, tmp_path, monkeypatch, caplog, capsys, tqdm_installed):
    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    with caplog.at_level("INFO", logger="model.download"):
        fetch("tiny-retrieval", tmp_path, server.base_url, progress=True, registry=TINY)
    captured = capsys.readouterr()
    assert captured.out == ""
    if tqdm_installed:
        assert "tiny_retrieval.pt" in captured.err
    else:
        assert any(m.startswith("downloaded tiny_retrieval.pt") for m in caplog.messages)


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(UnknownCheckpointError, match="unknown checkpoint 'msrvtt'.*msrvtt-qa, msrvtt-retrieval"):
        fetch("msrvtt", tmp_path, "http://127.0.0.1:9")
    assert isinstance(UnknownCheckpointError("x"), FetchError) and issubclass(FetchError, ValueError)


def test_resolve_checkpoint_takes_a_path_or_a_name(server, tmp_path):
    assert resolve_checkpoint(str(RETRIEVAL), tmp_path / "home", server.base_url) == RETRIEVAL
    assert resolve_checkpoint(REFERENCE, tmp_path / "home", server.base_url) == REFERENCE
    assert resolve_checkpoint("tiny-qa", tmp_path, server.base_url, progress=False, registry=TINY) == (
        tmp_path / "checkpoints" / "tiny-qa")
    with pytest.raises(FetchError, match="neither an existing path nor a released checkpoint name.*msvd-qa"):
        resolve_checkpoint(str(tmp_path / "nothing-here"), tmp_path, server.base_url)
    assert not server.to(RETRIEVAL_PATH)


# --------------------------------------------------------------------------------------------------
# Installing a checkpoint directory elsewhere (alpro-fetch --output)


@pytest.fixture
def fetched(server, tmp_path) -> Path:
    return fetch("tiny-retrieval", tmp_path / "home", server.base_url, progress=False, registry=TINY)


def test_install_replaces_an_older_checkpoint_whole(fetched, tmp_path):
    dest = tmp_path / "models" / "retrieval"
    install_checkpoint(fetched, dest)
    (dest / "stale.txt").write_text("from an older checkpoint")
    assert install_checkpoint(fetched, dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "source.json"]
    assert_same_outputs(load_pretrained(dest), load_pretrained(fetched))
    assert [p.name for p in dest.parent.iterdir()] == ["retrieval"]


def test_install_into_a_mount_point_replaces_its_files(fetched, tmp_path, monkeypatch):
    dest = tmp_path / "volume"
    dest.mkdir()
    (dest / "stale.txt").write_text("x")
    (dest / "config.json").write_text((fetched / "config.json").read_text())  # an older checkpoint there
    rename = os.rename

    def busy(src, dst):
        if Path(src) == dest:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        return rename(src, dst)
    monkeypatch.setattr(os, "rename", busy)
    inode = dest.stat().st_ino
    install_checkpoint(fetched, dest)
    assert dest.stat().st_ino == inode
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "source.json"]
    assert_same_outputs(load_pretrained(dest), load_pretrained(fetched))


def test_install_refuses_to_replace_other_data(fetched, tmp_path):
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(FetchError, match="refusing to replace"):
        install_checkpoint(fetched, dest)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".precious")]
