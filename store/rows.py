"""The rows a part holds besides its vectors: which (video, segment) each vector is, and a copy of what a search
result shows of it (its moment, thumbnail, preview flag, its video's path and duration).

Written as one .npy a column (rows/<column>.npy) and read memory-mapped, so replicas of the service on one
host share the pages and opening a version reads none of them; format-1 versions hold the same columns in
segments.npz, which is read whole (an npz member cannot be mapped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .layout import ROWS_DIR, SEGMENTS_NAME

KEY_COLUMNS = ("ids", "video_pos", "seg_index", "video_ids")
# columns that copy the rows a search result shows (format-1 versions written before them lack them)
ROW_COLUMNS = ("start_s", "end_s", "thumbnail", "video_paths", "video_durations")
# row columns added later: a part without one reads as all False
OPTIONAL_ROW_COLUMNS = ("preview",)
PER_VIDEO = ("video_ids", "video_paths", "video_durations")


class IndexRow(NamedTuple):
    """A segment as a search result shows it, from the index version: its video's path and duration, its
    moment. (A tuple: a search makes one per result, right after a model call, where every allocation counts.)"""

    segment_id: int
    video_id: str
    index: int
    start_s: float
    end_s: float
    has_thumbnail: bool
    path: str
    duration_s: float | None
    preview: bool = False  # DataDir.preview_path(video_id) exists: play it instead of the original


@dataclass
class VideoRows:
    """One video's rows as a version copies them from the SQL metadata, segments by index."""

    video_id: str
    path: str
    duration_s: float | None
    segment_ids: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    thumbnails: list[bool] = field(default_factory=list)  # a thumbnail file exists (DataDir.thumbnail_relpath)
    preview: bool = False  # a preview file exists (DataDir.preview_path)


@dataclass
class SegmentRows:
    """Rows grouped by video, in insertion order (a video's segments are consecutive, by index)."""

    ids: np.ndarray  # int64 (n,) segment ids
    video_pos: np.ndarray  # int (n,) position in video_ids
    seg_index: np.ndarray  # int (n,)
    video_ids: np.ndarray  # str (v,)
    start_s: np.ndarray | None = None  # float64 (n,); None: a format-1 version from before the row copy
    end_s: np.ndarray | None = None  # float64 (n,)
    thumbnail: np.ndarray | None = None  # bool (n,)
    preview: np.ndarray | None = None  # bool (n,): its video has a preview
    video_paths: np.ndarray | None = None  # str (v,)
    video_durations: np.ndarray | None = None  # float64 (v,), NaN unknown

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def has_rows(self) -> bool:
        """Whether the rows a search result shows are here (not only the (video, segment) keys)."""
        return self.start_s is not None

    def video_counts(self) -> np.ndarray:
        """Segments per video (int64 (v,))."""
        return np.bincount(np.asarray(self.video_pos, np.int64), minlength=self.num_videos)

    # --- building ---------------------------------------------------------------------------------

    @classmethod
    def of_videos(cls, videos: Sequence[VideoRows]) -> "SegmentRows":
        counts = [len(v.segment_ids) for v in videos]
        return cls(
            ids=np.asarray([i for v in videos for i in v.segment_ids], dtype=np.int64),
            video_pos=np.repeat(np.arange(len(videos), dtype=np.int32), counts),
            seg_index=np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if videos
            else np.zeros(0, np.int32),
            video_ids=_strings([v.video_id for v in videos]),
            start_s=np.asarray([t for v in videos for t in v.starts], dtype=np.float64),
            end_s=np.asarray([t for v in videos for t in v.ends], dtype=np.float64),
            thumbnail=np.asarray([t for v in videos for t in v.thumbnails], dtype=bool),
            preview=np.repeat(np.asarray([v.preview for v in videos], dtype=bool), counts),
            video_paths=_strings([v.path for v in videos]),
            video_durations=np.asarray([np.nan if v.duration_s is None else v.duration_s for v in videos],
                                       dtype=np.float64),
        )

    def take_videos(self, positions: np.ndarray) -> "SegmentRows":
        """These videos (positions in video_ids, in the order given) with their rows, renumbered."""
        positions = np.asarray(positions, dtype=np.int64)
        counts = self.video_counts()
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # first row of each video
        taken_counts = counts[positions]
        # row j of the result is row j - (its video's first row in the result) + (its first row here)
        shift = np.repeat(first[positions] - (np.cumsum(taken_counts) - taken_counts), taken_counts)
        rows = np.arange(int(taken_counts.sum()), dtype=np.int64) + shift
        taken = SegmentRows(
            ids=np.asarray(self.ids[rows], np.int64),
            video_pos=np.repeat(np.arange(len(positions), dtype=np.int32), taken_counts),
            seg_index=np.asarray(self.seg_index[rows], np.int32),
            video_ids=np.asarray(self.video_ids[positions]))
        if self.has_rows:
            taken.start_s, taken.end_s = np.asarray(self.start_s[rows]), np.asarray(self.end_s[rows])
            taken.thumbnail, taken.preview = np.asarray(self.thumbnail[rows]), np.asarray(self.preview[rows])
            taken.video_paths = np.asarray(self.video_paths[positions])
            taken.video_durations = np.asarray(self.video_durations[positions])
        return taken

    @classmethod
    def concat(cls, parts: Sequence["SegmentRows"]) -> "SegmentRows":
        """One table of several (each keeps its videos; positions shift)."""
        if not parts:
            return cls.of_videos([])
        shift = np.cumsum([0] + [p.num_videos for p in parts[:-1]])
        out = cls(ids=np.concatenate([p.ids for p in parts]).astype(np.int64),
                  video_pos=np.concatenate([np.asarray(p.video_pos, np.int64) + s for p, s in zip(parts, shift)])
                  .astype(np.int32),
                  seg_index=np.concatenate([p.seg_index for p in parts]).astype(np.int32),
                  video_ids=_strings([str(v) for p in parts for v in p.video_ids]))
        if all(p.has_rows for p in parts):
            out.start_s = np.concatenate([p.start_s for p in parts]).astype(np.float64)
            out.end_s = np.concatenate([p.end_s for p in parts]).astype(np.float64)
            out.thumbnail = np.concatenate([p.thumbnail for p in parts]).astype(bool)
            out.preview = np.concatenate([p.preview for p in parts]).astype(bool)
            out.video_paths = _strings([str(v) for p in parts for v in p.video_paths])
            out.video_durations = np.concatenate([p.video_durations for p in parts]).astype(np.float64)
        return out

    # --- files ------------------------------------------------------------------------------------

    def save(self, directory: Path) -> list[Path]:
        """Write rows/<column>.npy under `directory`; returns the files (to fsync)."""
        if not self.has_rows:
            raise ValueError("a new part needs the rows a search result shows")
        rows = directory / ROWS_DIR
        rows.mkdir()
        written = []
        for name, values in self._columns().items():
            path = rows / f"{name}.npy"
            np.save(path, np.ascontiguousarray(values), allow_pickle=False)
            written.append(path)
        return written

    def _columns(self) -> dict[str, np.ndarray]:
        return {"ids": np.asarray(self.ids, np.int64), "video_pos": np.asarray(self.video_pos, np.int32),
                "seg_index": np.asarray(self.seg_index, np.int32), "video_ids": _strings(self.video_ids),
                "start_s": np.asarray(self.start_s, np.float64), "end_s": np.asarray(self.end_s, np.float64),
                "thumbnail": np.asarray(self.thumbnail, bool), "preview": np.asarray(self.preview, bool),
                "video_paths": _strings(self.video_paths),
                "video_durations": np.asarray(self.video_durations, np.float64)}

    @classmethod
    def load(cls, directory: Path) -> "SegmentRows":
        """A part's rows: rows/*.npy memory-mapped, or a format-1 version's segments.npz read whole.
        Raises OSError, KeyError or ValueError when they are missing or inconsistent."""
        rows_dir = directory / ROWS_DIR
        if rows_dir.is_dir():
            columns = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False) for p in rows_dir.glob("*.npy")}
        else:
            with np.load(directory / SEGMENTS_NAME, allow_pickle=False) as data:
                columns = {name: data[name] for name in data.files}
        table = cls(**{name: columns[name] for name in KEY_COLUMNS})
        if all(name in columns for name in ROW_COLUMNS):
            table.start_s, table.end_s = columns["start_s"], columns["end_s"]
            table.thumbnail = columns["thumbnail"]
            table.preview = columns["preview"] if "preview" in columns else np.zeros(len(table.ids), bool)
            table.video_paths, table.video_durations = columns["video_paths"], columns["video_durations"]
        table._check()
        return table

    def _check(self) -> None:
        n, v = len(self.ids), len(self.video_ids)
        if not len(self.video_pos) == len(self.seg_index) == n:
            raise ValueError("segment key columns differ in length")
        if self.has_rows and (not len(self.start_s) == len(self.end_s) == len(self.thumbnail) == len(self.preview) == n
                              or not len(self.video_paths) == len(self.video_durations) == v):
            raise ValueError("segment row columns do not match the vector count or the video count")


def _strings(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Fixed-width unicode (memory-mappable, unlike object arrays)."""
    values = [str(v) for v in values]
    return np.array(values, dtype=f"<U{max([1, *map(len, values)])}")


__all__ = ["KEY_COLUMNS", "OPTIONAL_ROW_COLUMNS", "ROW_COLUMNS", "IndexRow", "SegmentRows", "VideoRows"]
