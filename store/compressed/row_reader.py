"""Rows of a 2-d .npy file read with pread (the fp16 vectors a compressed index re-scores from)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np


class RowReader:
    """Rows of a 2-d .npy file read with pread: served from the kernel's page cache (shared by every process
    reading the file) without mapping them into this process, so they never count in its RSS.

    Mapped instead, a file page already cached is mapped with its neighbours (fault-around, large folios): each
    fault makes 64 KiB or more resident, and the whole fp16 file ends up in every replica's RSS after a few
    thousand queries though each re-scores ~100 rows. Reading them costs a system call per row (~1-2 us)."""

    def __init__(self, path: Union[str, Path]) -> None:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # parses the header; nothing is read
        if mapped.ndim != 2 or not mapped.flags.c_contiguous:
            raise ValueError(f"{path}: expected a C-ordered 2-d array, got shape {mapped.shape}")
        self.shape, self.dtype, self.offset = mapped.shape, mapped.dtype, int(mapped.offset)
        del mapped
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead around single rows

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed), as an array (len(rows), d)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * len(rows):  # dense (a filter's rows, a block of an exact search): one read of the span
            span = np.frombuffer(self._read(lo, hi - lo), dtype=self.dtype).reshape(hi - lo, self.shape[1])
            out[:] = span[rows - lo]
            return out
        view = out.view(np.uint8).reshape(len(rows), self.row_bytes)
        size, base, fd = self.row_bytes, self.offset, self.fd
        for i, r in enumerate(rows.tolist()):
            n = os.preadv(fd, [view[i]], base + r * size)
            if n != size:
                raise OSError(f"short read of row {r}: {n} of {size} bytes")
        return out

    def _read(self, row: int, count: int) -> bytes:
        want = count * self.row_bytes
        data = os.pread(self.fd, want, self.offset + row * self.row_bytes)
        if len(data) != want:
            raise OSError(f"short read of rows {row}..{row + count}: {len(data)} of {want} bytes")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


__all__ = ["RowReader"]
