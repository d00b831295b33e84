"""Finding video files under a folder, by extension and by content, and giving each a content id.

A file is a candidate when its extension is a video one (then a broken file is a recorded failure), or
when its extension is unknown and either its first bytes carry a video container's signature or PyAV
finds a video stream in it. Known non-video extensions (text, images, audio, archives) and hidden files
(including macOS `._name.mp4` resource forks) are skipped without a failure.

Symbolic links: the walk never descends into a linked folder (so a link cycle cannot loop it, and nothing
outside the folder or inside an excluded or hidden folder is reached through one), and it follows a linked
file only when the link resolves inside the folder (its real path, compared by path components) and
outside every excluded folder. Links that lead elsewhere are reported in `Discovery.outside` and not
indexed: the service streams only files inside the folders the indexer walked, so indexing them would
only make videos that cannot be played. Paths keep the folder as it was given (not resolved).

The content id is the SHA-256 of the whole file (first 32 hex digits): renaming or moving a file keeps
its id. Hashes are cached by (path, size, mtime_ns) so unchanged files are never read twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import av

logger = logging.getLogger(__name__)

ID_HEX_DIGITS = 32
VIDEO_EXTENSIONS = frozenset({
    "mp4", "m4v", "mov", "qt", "mkv", "webm", "avi", "wmv", "asf", "flv", "f4v", "mpg", "mpeg", "m2v", "mpe",
    "ts", "m2ts", "mts", "3gp", "3g2", "ogv", "vob", "mxf", "divx", "y4m", "dv", "h264", "hevc", "265", "264",
    "rm", "rmvb", "nut", "ivf", "mjpeg", "mjpg",
})
NON_VIDEO_EXTENSIONS = frozenset({
    # text, data and documents
    "txt", "md", "rst", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg", "conf", "csv", "tsv", "xml", "html",
    "htm", "log", "nfo", "pdf", "doc", "docx", "odt", "rtf", "py", "sh", "js", "css", "sql", "db", "sqlite",
    "sqlite3", "npy", "npz", "pt", "pth", "safetensors", "faiss", "lock", "tmp", "part", "crdownload",
    # subtitles
    "srt", "vtt", "ass", "ssa", "sub", "idx", "sbv",
    # images
    "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "heif", "avif", "svg", "ico", "raw", "cr2",
    "nef", "psd",
    # audio
    "mp3", "wav", "flac", "aac", "m4a", "ogg", "oga", "opus", "wma", "aiff", "aif", "mid", "midi", "ac3",
    # archives and binaries
    "zip", "tar", "gz", "bz2", "xz", "7z", "rar", "zst", "iso", "dmg", "exe", "dll", "so", "bin", "whl",
})
# ISO-BMFF brands that are still images, not video
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis", b"crx ", b"jp2 ")
# FFmpeg demuxers that turn single images or text into a "video" stream
_NON_VIDEO_FORMATS = ("image2", "tty", "gif", "apng", "webp_pipe")
_IMAGE_CODECS = frozenset({"mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpeg2000", "ansi", "apng"})
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FoundFile:
    """A candidate video file."""

    path: str  # absolute
    size: int  # bytes
    mtime_ns: int  # st_mtime_ns
    by: str  # "extension" | "signature" | "probe": why it is a candidate

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


@dataclass
class Discovery:
    """What a walk found."""

    files: list[FoundFile] = field(default_factory=list)
    skipped: int = 0  # files that are not videos (not failures)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (path, error type, reason)
    outside: list[str] = field(default_factory=list)  # file links that resolve outside the folder (not followed)


def extension(path: str) -> str:
    name = os.path.basename(path)
    return name.rsplit(".", 1)[1].lower() if "." in name.lstrip(".") else ""


def sniff_container(head: bytes) -> str | None:
    """The video container named by a file's first bytes (at least 12; 189 for MPEG-TS), or None."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else "isobmff"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "mpeg"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    if head.startswith(b"YUV4MPEG2"):
        return "y4m"
    if head.startswith(b"DKIF"):
        return "ivf"
    return None


def probe_has_video(path: str) -> bool:
    """Whether FFmpeg (PyAV) finds a real video stream (not a still image or text) in a file."""
    try:
        with av.open(path) as container:
            name = container.format.name or ""
            if any(part in name for part in _NON_VIDEO_FORMATS) or name.endswith("_pipe"):
                return False
            for stream in container.streams.video:
                if stream.codec_context.name not in _IMAGE_CODECS:
                    return True
            return False
    except (av.FFmpegError, OSError, ValueError, RuntimeError, IndexError):
        return False


def _is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether a resolved path is root or below it, by whole components (/media/lib2 is not in /media/lib)."""
    return Path(path).is_relative_to(root)


def walk_files(root: Path, exclude: Sequence[Path] = (),
               on_outside: Callable[[str], None] | None = None) -> Iterable[tuple[str, os.stat_result]]:
    """(absolute path, stat) of every regular, non-hidden file below root, sorted for determinism.

    Linked folders are not entered; a linked file is followed only when it resolves inside root and outside
    `exclude`, else its path goes to `on_outside` (see the module docstring).
    """
    top = os.path.abspath(root)
    real_root = os.path.realpath(top)
    excluded = {os.path.abspath(p) for p in exclude}
    real_excluded = [os.path.realpath(p) for p in exclude]
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and os.path.join(dirpath, d) not in excluded)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if not _is_inside(real, real_root) or any(_is_inside(real, e) for e in real_excluded):
                    logger.debug("not following %s: it leads outside %s", path, top)
                    if on_outside is not None:
                        on_outside(path)
                    continue
            try:
                st = os.stat(path)  # follows file symlinks (inside root, checked above)
            except OSError as e:
                logger.debug("cannot stat %s: %s", path, e)
                continue
            if os.path.isfile(path):
                yield path, st


def discover(root: Path, exclude: Sequence[Path] = (), *, probe_unknown: bool = True) -> Discovery:
    """Walk root recursively and classify every file (see the module docstring)."""
    result = Discovery()
    for path, st in walk_files(root, exclude, on_outside=result.outside.append):
        ext = extension(path)
        if ext in VIDEO_EXTENSIONS:
            result.files.append(FoundFile(path, st.st_size, st.st_mtime_ns, "extension"))
            continue
        if ext in NON_VIDEO_EXTENSIONS or st.st_size == 0:
            result.skipped += 1
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(256)
        except OSError as e:
            # an unreadable file of unknown type: probably not a video; say so, but no failure row
            logger.info("skipping unreadable file %s: %s", path, e)
            result.skipped += 1
            continue
        if sniff_container(head):
            result.files.append(FoundFile(path, st.st_size, st.st_mtime_ns, "signature"))
        elif probe_unknown and probe_has_video(path):
            result.files.append(FoundFile(path, st.st_size, st.st_mtime_ns, "probe"))
        else:
            result.skipped += 1
    if result.outside:
        logger.warning("not indexing %d symbolic links that lead outside %s (e.g. %s)", len(result.outside),
                       os.path.abspath(root), result.outside[0])
    return result


def content_id(path: str) -> str:
    """SHA-256 of a file's bytes, first 32 hex digits (128 bits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)  # releases the GIL, so threads hash files in parallel
    return digest.hexdigest()[:ID_HEX_DIGITS]


@dataclass
class HashResult:
    ids: dict[str, str] = field(default_factory=dict)  # path -> content id
    hashed: int = 0  # files actually read (not served from the cache)
    failures: list[tuple[FoundFile, str, str]] = field(default_factory=list)  # (file, error type, reason)


def hash_files(files: Sequence[FoundFile], cached: Mapping[str, tuple[int, int, str]], *, threads: int = 4,
               on_progress: Callable[[int], None] | None = None) -> HashResult:
    """Content ids of files; `cached` maps path -> (size, mtime_ns, id) from earlier runs."""
    result = HashResult()
    todo: list[FoundFile] = []
    for f in files:
        hit = cached.get(f.path)
        if hit is not None and hit[0] == f.size and hit[1] == f.mtime_ns:
            result.ids[f.path] = hit[2]
        else:
            todo.append(f)

    def one(f: FoundFile) -> tuple[FoundFile, str | None, OSError | None]:
        try:
            return f, content_id(f.path), None
        except OSError as e:
            return f, None, e

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="hash") as pool:
        for f, cid, err in pool.map(one, todo):
            if err is not None:
                result.failures.append((f, type(err).__name__, f"cannot read file: {err.strerror or err}"))
            else:
                assert cid is not None
                result.ids[f.path] = cid
                result.hashed += 1
            if on_progress is not None:
                on_progress(1)
    return result


__all__ = ["Discovery", "FoundFile", "HashResult", "NON_VIDEO_EXTENSIONS", "VIDEO_EXTENSIONS", "content_id",
           "discover", "extension", "hash_files", "probe_has_video", "sniff_container", "walk_files"]
