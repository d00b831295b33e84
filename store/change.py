"""What changed between the rows a version serves and the rows the next one should serve, video by video.

A video is unchanged when it is served with exactly the wanted rows: the same segment ids, each at the same
index with the same moment, thumbnail and preview flag, and the same path and duration. Anything else makes it
changed: re-added whole to a delta (a rename re-adds the same ids with the new path; a re-embedded video new
ids), its old served ids tombstoned. Comparing costs O(library) rows in numpy (about a second at a million
rows), no vector: the vectors read are those of the changed videos only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rows import SegmentRows
from .snapshot import IndexSnapshot


@dataclass
class Change:
    added: np.ndarray  # positions in the wanted rows' video_ids of videos to add: new, and changed ones
    removed_ids: np.ndarray  # int64, sorted: served segment ids that go (removed videos, changed videos' old rows)
    removed_videos: int  # served videos not wanted any more
    changed_videos: int  # served videos re-added with other rows

    @property
    def empty(self) -> bool:
        return not len(self.added) and not len(self.removed_ids)


def served_rows(snapshot: IndexSnapshot) -> SegmentRows:
    """The rows a version serves, as one table (every part's served videos; the same columns as the parts)."""
    tables = []
    for i, part in enumerate(snapshot.parts):
        live = snapshot.served_rows(i)
        rows = part.rows
        if live is None:
            tables.append(rows)
            continue
        videos = np.unique(np.asarray(rows.video_pos)[live])  # a served video is served whole
        tables.append(rows.take_videos(videos))
    return SegmentRows.concat(tables) if len(tables) > 1 else tables[0]


def diff(served: SegmentRows, wanted: SegmentRows) -> Change:
    """The change from `served` (rows with has_rows) to `wanted`, grouped by video."""
    names, codes = np.unique(np.concatenate([np.asarray(served.video_ids, dtype=str),
                                             np.asarray(wanted.video_ids, dtype=str)]), return_inverse=True)
    s_video, w_video = codes[:served.num_videos], codes[served.num_videos:]
    s_code, w_code = s_video[np.asarray(served.video_pos)], w_video[np.asarray(wanted.video_pos)]
    changed = np.zeros(len(names), dtype=bool)

    # videos on both sides: their path or duration
    s_at = np.full(len(names), -1, np.int64)
    s_at[s_video] = np.arange(served.num_videos)
    both = np.flatnonzero(s_at[w_video] >= 0)  # positions in wanted
    theirs = s_at[w_video[both]]
    path_differs = np.asarray(served.video_paths)[theirs] != np.asarray(wanted.video_paths)[both]
    s_dur, w_dur = np.asarray(served.video_durations)[theirs], np.asarray(wanted.video_durations)[both]
    duration_differs = ~((s_dur == w_dur) | (np.isnan(s_dur) & np.isnan(w_dur)))
    changed[w_video[both[path_differs | duration_differs]]] = True

    # segments: a row on one side only, or a row that differs, changes its videos on both sides
    s_ids, w_ids = np.asarray(served.ids, np.int64), np.asarray(wanted.ids, np.int64)
    _, si, wi = np.intersect1d(s_ids, w_ids, assume_unique=True, return_indices=True)
    differs = s_code[si] != w_code[wi]
    for name in ("seg_index", "start_s", "end_s", "thumbnail", "preview"):
        differs |= np.asarray(getattr(served, name))[si] != np.asarray(getattr(wanted, name))[wi]
    changed[s_code[si[differs]]] = True
    changed[w_code[wi[differs]]] = True
    only_served = np.ones(len(s_ids), bool)
    only_served[si] = False
    only_wanted = np.ones(len(w_ids), bool)
    only_wanted[wi] = False
    changed[s_code[only_served]] = True
    changed[w_code[only_wanted]] = True

    is_wanted = np.zeros(len(names), dtype=bool)
    is_wanted[w_video] = True
    changed[s_video[~is_wanted[s_video]]] = True  # removed videos (with no rows: still removed)
    added = np.flatnonzero(changed[w_video])
    removed_ids = np.sort(s_ids[changed[s_code]])
    removed_videos = int((~is_wanted[s_video]).sum())
    return Change(added=added, removed_ids=removed_ids, removed_videos=removed_videos,
                  changed_videos=int(changed[s_video].sum()) - removed_videos)


__all__ = ["Change", "diff", "served_rows"]
