"""An opened version: its parts (a base, then deltas) and tombstones, searched and read as one index.

A segment id is served from the newest part that holds it, unless the version tombstones it (store/layout.py);
every other row of a part is hidden: searches leave it out through an ID selector (store/search.py), look-ups
do not find it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from .faiss_build import configure_faiss
from .layout import TOMBSTONES_NAME, manifest_parts
from .lease import VersionLease
from .manifest import IndexManifest, IndexNotFoundError
from .part import Part, open_part
from .rows import IndexRow
from .search import RowMask, RowSelection, merge

_OPEN_TOKEN_FILES = 1024  # memory maps kept open per snapshot (vm.max_map_count is finite)
GPU_K_MAX = 2048  # the largest k a FAISS GPU search takes


class IndexSnapshot:
    """An opened, immutable index version; `search` and `tokens` are safe from several threads."""

    def __init__(self, directory: Path, manifest: IndexManifest, *, use_gpu: bool = False,
                 lease: VersionLease | None = None) -> None:
        configure_faiss()
        self._lease = lease  # released by close(): until then retention keeps this version's files
        self._token_files: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._token_lock = threading.Lock()
        self._gpu: list[faiss.Index] | None = None
        self._parts: list[Part] = []
        self.directory = directory
        self.manifest = manifest
        self.version = manifest.version
        try:
            self._parts = [open_part(directory.parent / name, dim=manifest.dim, search_params=manifest.search_params)
                           for name in manifest_parts(manifest)]
            path = directory / TOMBSTONES_NAME
            tombstones = np.load(path, allow_pickle=False).astype(np.int64) if path.exists() else np.zeros(0, np.int64)
        except IndexNotFoundError:
            self.close()
            raise
        except (OSError, ValueError) as e:
            self.close()
            raise IndexNotFoundError(f"index version {manifest.version} at {directory} is unreadable: {e}") from e
        self._live = self._live_rows(tombstones)
        self._offsets = np.cumsum([0] + [p.num_rows for p in self._parts])  # global row of each part's row 0
        self._video_offsets = np.cumsum([0] + [p.rows.num_videos for p in self._parts])
        self._selection = RowSelection(tuple(None if live is None else RowMask.of(live) for live in self._live),
                                       sum(p.num_rows if live is None else int(live.sum())
                                           for p, live in zip(self._parts, self._live)))
        if self._selection.count != manifest.num_vectors:
            self.close()
            raise IndexNotFoundError(f"index version {manifest.version} is inconsistent: it serves "
                                     f"{self._selection.count} vectors, its manifest says {manifest.num_vectors}")
        self._search_lock: threading.Lock | None = None
        # a compressed (ivfpq) base stays on the CPU: its search re-scores from the fp16 file
        if use_gpu and faiss.get_num_gpus() > 0 and all(p.compressed is None for p in self._parts):
            self._gpu = [faiss.index_cpu_to_all_gpus(p.inner) for p in self._parts]
            self._search_lock = threading.Lock()  # GPU indexes are not safe for concurrent search

    def _live_rows(self, tombstones: np.ndarray) -> list[np.ndarray | None]:
        """Per part, the rows this version serves (None: all of them)."""
        live: list[np.ndarray | None] = [None] * len(self._parts)
        hidden = tombstones
        for i in range(len(self._parts) - 1, -1, -1):
            part = self._parts[i]
            rows = part.rows_of(hidden)
            rows = rows[rows >= 0]
            if len(rows):
                live[i] = np.ones(part.num_rows, dtype=bool)
                live[i][rows] = False
            if i:  # the ids of a newer part shadow those of the older ones
                hidden = np.union1d(hidden, np.asarray(part.rows.ids, dtype=np.int64))
        return live

    # --- what it holds ----------------------------------------------------------------------------

    @property
    def num_vectors(self) -> int:
        return self._selection.count

    @property
    def parts(self) -> tuple[Part, ...]:
        return tuple(self._parts)

    def served_rows(self, part: int) -> np.ndarray | None:
        """bool per row of that part: served by this version (None: every row)."""
        return self._live[part]

    def segment_ids(self) -> np.ndarray:
        """All segment ids this version serves, int64, part by part in insertion order."""
        return np.concatenate([np.asarray(p.rows.ids, np.int64) if live is None else np.asarray(p.rows.ids)[live]
                               for p, live in zip(self._parts, self._live)])

    @property
    def has_rows(self) -> bool:
        """Whether this version carries the rows search results show (`segment_rows` works)."""
        return all(p.rows.has_rows for p in self._parts)

    @property
    def supports_selection(self) -> bool:
        """Whether `select` and `search(..., selection)` work (not on GPU indexes)."""
        return self._gpu is None

    def video_columns(self) -> tuple[np.ndarray, list[str], list[float | None]] | None:
        """Over the rows of all parts, served or not (`select` takes a mask of them): (video of each row, path of
        each video, duration of each video); None for versions written before they carried their rows."""
        if not self.has_rows:
            return None
        video_pos = np.concatenate([np.asarray(p.rows.video_pos, np.int64) + off
                                    for p, off in zip(self._parts, self._video_offsets)])
        paths = [str(v) for p in self._parts for v in p.rows.video_paths]
        durations = [None if np.isnan(d) else float(d) for p in self._parts
                     for d in np.asarray(p.rows.video_durations, np.float64)]
        return video_pos, paths, durations

    # --- search -----------------------------------------------------------------------------------

    def select(self, rows: np.ndarray) -> RowSelection:
        """A selection of the served rows among `rows` (bool over the rows of all parts, as `video_columns`)."""
        rows = np.asarray(rows, dtype=bool)
        if len(rows) != self._offsets[-1]:
            raise ValueError(f"a selection needs {self._offsets[-1]} rows, got {len(rows)}")
        masks = []
        for i, live in enumerate(self._live):
            mine = rows[self._offsets[i]:self._offsets[i + 1]]
            if live is not None:
                mine = mine & live
            masks.append(None if live is None and mine.all() else RowMask.of(mine))
        count = sum(self._parts[i].num_rows if m is None else m.count for i, m in enumerate(masks))
        return RowSelection(tuple(masks), count)

    def search(self, queries: np.ndarray, k: int,
               selection: RowSelection | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) float32 L2-normalised -> scores (Q, k) float32, segment ids (Q, k) int64, over the served rows
        (or the selected ones). Rows are best first; where fewer than k vectors exist the id is -1 and the
        score -inf."""
        q = self.manifest.query_matrix(queries, k)
        masks = (selection or self._selection).masks
        if self._gpu is not None and selection is None:
            return merge([self._search_gpu(i, q, k) for i in range(len(self._parts))], k)
        return merge([p.search(q, k, m) for p, m in zip(self._parts, masks)], k)

    def _search_gpu(self, i: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A GPU index takes no selector: fetch as many more as the part hides, then drop those."""
        part, live, mask = self._parts[i], self._live[i], self._selection.masks[i]
        fetch = k if live is None else min(part.num_rows, k + part.num_rows - mask.count)
        if fetch > GPU_K_MAX:
            return part.search(q, k, mask)
        with self._search_lock:
            scores, rows = self._gpu[i].search(q, max(fetch, 1))
        if live is not None:
            hidden = rows >= 0
            hidden[hidden] = ~live[rows[hidden]]
            rows = np.where(hidden, -1, rows)
            scores = np.where(hidden, -np.inf, scores)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, rows = np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
        found = rows >= 0
        ids = np.where(found, np.asarray(part.rows.ids)[np.where(found, rows, 0)], -1).astype(np.int64)
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        pad = k - ids.shape[1]
        if pad > 0:
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, ids

    # --- rows -------------------------------------------------------------------------------------

    def _find(self, segment_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(part, row) of each served segment id; KeyError naming those this version does not serve."""
        wanted = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
        part_of = np.full(len(wanted), -1, np.int64)
        row_of = np.full(len(wanted), -1, np.int64)
        for i in range(len(self._parts) - 1, -1, -1):  # newest first: it shadows the older ones
            todo = np.flatnonzero(part_of < 0)
            if not len(todo):
                break
            rows = self._parts[i].rows_of(wanted[todo])
            found = rows >= 0
            if self._live[i] is not None:
                found[found] = self._live[i][rows[found]]
            part_of[todo[found]] = i
            row_of[todo[found]] = rows[found]
        missing = part_of < 0
        if missing.any():
            raise KeyError(f"segment ids not in index version {self.version}: {wanted[missing][:10].tolist()}")
        return part_of, row_of

    def _column(self, part_of: np.ndarray, row_of: np.ndarray, name: str, per_video: bool = False) -> np.ndarray:
        """A row column (or, with per_video, a video column) at these (part, row) pairs, in their order."""
        out = None
        for i in np.unique(part_of).tolist():
            at = np.flatnonzero(part_of == i)
            rows = self._parts[i].rows
            index = np.asarray(rows.video_pos)[row_of[at]] if per_video else row_of[at]
            values = np.asarray(getattr(rows, name)[index])
            if out is None:
                out = np.empty(len(part_of), dtype=values.dtype if values.dtype.kind != "U" else object)
            out[at] = values
        return out if out is not None else np.zeros(0)

    def locate(self, segment_ids: Sequence[int]) -> list[tuple[str, int]]:
        """(video_id, segment index) of each segment id, without the database."""
        part_of, row_of = self._find(segment_ids)
        video_ids = self._column(part_of, row_of, "video_ids", per_video=True)
        return [(str(v), s) for v, s in zip(video_ids.tolist(), self._column(part_of, row_of, "seg_index").tolist())]

    def first_hit_per_video(self, segment_ids: Sequence[int]) -> list[int]:
        """Positions in `segment_ids` (hits, best first) of each video's first hit, in hit order."""
        part_of, row_of = self._find(segment_ids)
        if not len(part_of):
            return []
        # a video's served rows are all in one part (a changed video is re-added whole)
        videos = self._column(part_of, row_of, "video_pos").astype(np.int64) + self._video_offsets[part_of]
        _, first = np.unique(videos, return_index=True)
        return np.sort(first).tolist()

    def segment_rows(self, segment_ids: Sequence[int]) -> list[IndexRow]:
        """What a search result shows of each segment, from the version itself (no database)."""
        if not self.has_rows:
            raise LookupError(f"index version {self.version} carries no segment rows; read them from the database")
        part_of, row_of = self._find(segment_ids)
        if not len(part_of):
            return []
        column = lambda name: self._column(part_of, row_of, name).tolist()  # noqa: E731
        video = lambda name: self._column(part_of, row_of, name, per_video=True).tolist()  # noqa: E731
        durations = [None if d != d else float(d) for d in video("video_durations")]  # NaN: unknown
        return [IndexRow(segment_id, str(video_id), index, start, end, bool(thumbnail), str(path), duration,
                         bool(preview))
                for segment_id, video_id, index, start, end, thumbnail, path, duration, preview in zip(
                    np.asarray(segment_ids, dtype=np.int64).tolist(), video("video_ids"), column("seg_index"),
                    column("start_s"), column("end_s"), column("thumbnail"), video("video_paths"), durations,
                    column("preview"))]

    def vectors(self, segment_ids: Sequence[int]) -> np.ndarray:
        """(n, dim) float32 stored vectors of these segments."""
        part_of, row_of = self._find(segment_ids)
        out = np.zeros((len(part_of), self.manifest.dim), np.float32)
        for i in np.unique(part_of).tolist():
            at = np.flatnonzero(part_of == i)
            out[at] = self._parts[i].vectors(row_of[at])
        return out

    def tokens(self, segment_ids: Sequence[int]) -> np.ndarray | None:
        """(n, 1+N, D) float16 token features of these segments when stored, else None."""
        if not self.manifest.has_tokens:
            return None
        part_of, row_of = self._find(segment_ids)
        if not len(part_of):
            shape = tuple(self.manifest.token_shape or (0, 0))
            return np.zeros((0, *shape), np.float16)
        video_ids = self._column(part_of, row_of, "video_ids", per_video=True).tolist()
        seg_index = self._column(part_of, row_of, "seg_index").tolist()
        return np.stack([np.asarray(self._token_file(self._parts[p].token_path(str(v)))[s])
                         for p, v, s in zip(part_of.tolist(), video_ids, seg_index)])

    def _token_file(self, path: Path) -> np.ndarray:
        with self._token_lock:
            arr = self._token_files.get(path)
            if arr is not None:
                self._token_files.move_to_end(path)
                return arr
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except OSError as e:
                raise IndexNotFoundError(f"token file {path} of index version {self.version} is missing") from e
            self._token_files[path] = arr
            if len(self._token_files) > _OPEN_TOKEN_FILES:
                self._token_files.popitem(last=False)
            return arr

    def close(self) -> None:
        with self._token_lock:
            self._token_files.clear()
        self._parts = []  # a part stays open while another snapshot of this process holds it
        self._gpu = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> "IndexSnapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"IndexSnapshot(version={self.version}, vectors={self.num_vectors}, type={self.manifest.index_type}, "
                f"parts={len(self._parts)})")


__all__ = ["IndexSnapshot"]
