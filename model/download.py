"""Downloading one file of a release: resumable (HTTP Range), length-checked, archive-checked, atomic.

A transfer goes to DIR/<file>.part and is renamed to DIR/<file> only after its checks pass: the announced
length, a size or sha256 the registry knows, and for a PyTorch checkpoint every member's CRC in its zip
archive, all before anything unpickles it. Used by model.hub.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

CHUNK_BYTES = 1 << 20
MAX_ATTEMPTS = 5  # transfers per file in one fetch, as long as each gets further than the last
TIMEOUT_S = 60.0  # per socket operation, not per file
LOG_EVERY_S = 10.0  # progress lines when tqdm is missing
# A PyTorch file from before 1.6 (a bare pickle, no zip): protocol 2 + the legacy magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class FetchError(ValueError):
    """A released checkpoint could not be downloaded, verified or converted; the message says which and why."""


class _Corrupt(Exception):
    """A downloaded file failed its checks; the caller deletes it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the release."""

    path: str  # relative to the base URL ("../" climbs out of it, as URLs do), or an absolute URL
    filename: str = ""  # its name under HOME/downloads; default the last part of `path`
    size: Optional[int] = None  # bytes, where known: checked before the file is used
    sha256: Optional[str] = None  # hex digest, where known: checked before the file is used

    def __post_init__(self) -> None:
        if not self.filename:
            object.__setattr__(self, "filename", self.path.rstrip("/").rsplit("/", 1)[-1])

    def url(self, base_url: str) -> str:
        return urllib.parse.urljoin(base_url.rstrip("/") + "/", self.path)


# --------------------------------------------------------------------------------------------------
# Downloading


def download(remote: RemoteFile, base_url: str, directory: Path, *, progress: bool = True, force: bool = False,
             check=None) -> dict[str, Any]:
    """directory/<filename>, downloaded (resuming a .part) and checked unless already there; returns its record."""
    url = remote.url(base_url)
    final = directory / remote.filename
    part = final.with_name(final.name + ".part")
    if force:
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    if not final.is_file():
        _transfer(url, part, progress)
        try:
            if remote.size is not None and part.stat().st_size != remote.size:
                raise _Corrupt(f"{part.stat().st_size} bytes where the release has {remote.size}")
            if remote.sha256 is not None and sha256_file(part) != remote.sha256.lower():
                raise _Corrupt(f"sha256 {sha256_file(part)} where the release has {remote.sha256}")
            if check is not None:
                check(part)
        except _Corrupt as e:
            part.unlink(missing_ok=True)
            raise FetchError(f"the download of {url} is corrupt or truncated ({e}); deleted it, run again to "
                             "download it afresh") from None
        _fsync_file(part)
        os.replace(part, final)
        _fsync_dir(directory)
    return {"url": url, "file": remote.filename, "size": final.stat().st_size, "sha256": sha256_file(final)}


def _transfer(url: str, part: Path, progress: bool) -> None:
    """Bring `part` to the full file, resuming while each attempt gets further than the one before."""
    size = total = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        before = _size(part)
        total, problem = _request(url, part, progress)
        size = _size(part)
        if total is not None and size > total:
            part.unlink(missing_ok=True)
            raise FetchError(f"the download of {url} is corrupt: {size} bytes where the server announced {total}; "
                             "deleted it")
        if problem is None and (total is None or size == total):
            return
        why = problem or f"the connection closed at {size} of {total} bytes"
        if attempt > 1 and size <= before:  # the server's file is cut short, or it restarts from zero each time
            part.unlink(missing_ok=True)
            raise FetchError(f"the download of {url} is truncated ({why}) and retrying got no further; deleted it")
        logger.warning("download of %s interrupted (%s); resuming from byte %d (attempt %d of %d)",
                       url, why, size, attempt + 1, MAX_ATTEMPTS)
    raise FetchError(f"the download of {url} was interrupted {MAX_ATTEMPTS} times, last at {size} of {total} bytes; "
                     "run again to resume from there")


def _request(url: str, part: Path, progress: bool) -> tuple[Optional[int], Optional[str]]:
    """One GET appending to (or restarting) `part`; returns (the file's total size if known, what went wrong)."""
    offset = _size(part)
    headers = {"User-Agent": "alpro-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # nothing past our part: it is complete, or not this file at all
            total = _total_of(e.headers.get("Content-Range"))
            if total is None or total == offset:
                return total, None  # the archive checks decide
            logger.warning("partial %s (%d bytes) does not match the server's %d; starting over", part, offset, total)
            part.unlink()
            return _request(url, part, progress)
        raise FetchError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot download {url}: {reason}") from e
    with response:
        status = response.status or 200  # file:// answers without one
        length = _int(response.headers.get("Content-Length"))
        if offset and status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                logger.warning("server answered range %s with %s; starting over", offset, start)
                part.unlink()
                return _request(url, part, progress)
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        else:
            if offset:
                logger.info("server ignored the range request for %s; downloading it from the start", url)
            offset, total, mode = 0, length, "wb"
        problem = None
        meter = _Progress(part.name.removesuffix(".part"), total, offset, progress)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (http.client.HTTPException, OSError) as e:  # reset, timeout, bad chunking
                        problem = f"{type(e).__name__}: {e}"
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    meter.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        finally:
            meter.close()
    return total, problem


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """'bytes START-END/TOTAL' -> (START, TOTAL); TOTAL may be '*'."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    return int(match.group(1)), (None if match.group(2) == "*" else int(match.group(2)))


def _total_of(value: Optional[str]) -> Optional[int]:
    """'bytes */TOTAL' (the answer to an unsatisfiable range) -> TOTAL."""
    match = re.fullmatch(r"\s*bytes\s+(?:\*|\d+-\d+)/(\d+)\s*", value or "")
    return int(match.group(1)) if match else None


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else a log line every LOG_EVERY_S seconds."""

    def __init__(self, label: str, total: Optional[int], initial: int, enabled: bool) -> None:
        self.label, self.total, self.done = label, total, initial
        self.started = self.last = time.monotonic()
        self.bar = None
        self.enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            logger.info("downloading %s (%s)", label, _mib(total) if total else "size unknown")
            return
        self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                        file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= LOG_EVERY_S:
            self.last = time.monotonic()
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            logger.info("downloading %s: %s of %s%s", self.label, _mib(self.done),
                        _mib(self.total) if self.total else "?", share)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            logger.info("downloaded %s: %s in %.0f s", self.label, _mib(self.done), time.monotonic() - self.started)


def _mib(n: Optional[int]) -> str:
    return f"{(n or 0) / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------------
# Checks of downloaded files (before anything unpickles them)


def verify_archive(path: PathLike) -> None:
    """Raise FetchError unless `path` is an intact PyTorch zip archive (every member's CRC-32 verifies)."""
    try:
        _check_archive(Path(path))
    except _Corrupt as e:
        raise FetchError(f"{path} is corrupt or truncated ({e})") from None


def _check_archive(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        raise _Corrupt("a PyTorch file in the pre-1.6 format, which carries no checksums to verify a download by; "
                       "download it yourself and convert it with alpro-fetch FILE --bert-config")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = archive.testzip()  # reads every member: a CRC mismatch names it
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise _Corrupt(f"not a readable zip archive: {e}") from None
    if bad is not None:
        raise _Corrupt(f"the CRC-32 of member {bad} does not match its data")
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise _Corrupt("a zip archive without data.pkl, so not a PyTorch checkpoint")


def _check_answers(path: Path) -> None:
    try:
        _answers_by_index(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise _Corrupt(f"not an answer list: {e}") from None


def _answers_by_index(mapping: Any) -> tuple[str, ...]:
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError("expected a non-empty JSON object {answer: index}")
    indices = list(mapping.values())
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise ValueError("every index must be a non-negative integer")
    if len(set(indices)) != len(indices):
        raise ValueError("two answers share an index")
    answers = [""] * (max(indices) + 1)  # a gap stays "", as the classifier output it stands for has no answer
    for answer, index in mapping.items():
        answers[index] = answer
    return tuple(answers)


def read_answers(path: PathLike) -> tuple[str, ...]:
    """Answer strings by classifier index from a train_ans2label.json ({answer: index})."""
    try:
        return _answers_by_index(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise FetchError(f"cannot read the answer list {path}: {e}") from e


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: PathLike, source: str) -> dict[str, Any]:
    """What source.json says of a file a checkpoint was made from."""
    path = Path(path)
    return {"url": source, "file": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
