"""A thread-safe LRU cache of tensors bounded by their total size in bytes (token features per video).

Sizes are those of the storage each tensor keeps alive, not of its view: a row sliced from a batch holds the
whole batch. Callers should store owned, contiguous copies, so that what is counted is what is needed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, TypeVar

import torch

K = TypeVar("K", bound=Hashable)


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes the tensor keeps allocated: its whole storage (a view of a batch counts the batch)."""
    return tensor.untyped_storage().nbytes()


class ByteLRU(Generic[K]):
    """Keeps the most recently used tensors while their sizes add up to at most `max_bytes`."""

    def __init__(self, max_bytes: int, on_lookup: Optional[Callable[[bool], None]] = None) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[K, torch.Tensor] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self._on_lookup = on_lookup
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> Optional[torch.Tensor]:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if self._on_lookup is not None:
            self._on_lookup(value is not None)
        return value

    def put(self, key: K, value: torch.Tensor) -> None:
        size = tensor_nbytes(value)
        if size > self.max_bytes:  # would evict everything and still not fit
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= tensor_nbytes(old)
            self._items[key] = value
            self._nbytes += size
            while self._nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._nbytes -= tensor_nbytes(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
