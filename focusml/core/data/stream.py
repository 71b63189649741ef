"""Data larger than memory: split rows read from disk on demand, batches read by worker processes.

A streamed split holds `Rows` instead of tensors: a read-only, tensor-like stack (len, shape,
`rows[index]`) that decodes the rows asked for and keeps nothing but what it needs to find them
(file paths; per mask split one flag per row, "annotated", computed once). Every consumer of a
split works unchanged through `Split.batch` and indexing; passes over a whole split go through
`batches`, which reads batches in DataLoader worker processes while the caller computes.

`streams(mode, nbytes)` is the `--data-loading auto` rule (docs/datasets.md): stream when the
decoded dataset would take more than `memory.MEMORY_SHARE` of the memory available now.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from focusml import FocusmlError
from focusml.core import memory
from focusml.core.options import option

MODES = option("data_loading").choices  # declared with the option (focusml.core.options)


def available_memory() -> int:
    """Bytes of memory available to new allocations now (`focusml.core.memory.available`: FOCUSML_MEMORY_AVAILABLE,
    else MemAvailable, page cache counted as free)."""
    return memory.available()


def streams(mode: str, nbytes: int) -> bool:
    """Whether a dataset of `nbytes` decoded bytes is streamed under `--data-loading mode`."""
    if mode not in MODES:
        raise FocusmlError(f"--data-loading is {mode!r}; choose one of {', '.join(MODES)}.")
    if mode != "auto":
        return mode == "stream"
    return memory.streams(mode, nbytes, available_memory())


def workers() -> int:
    """Worker processes that decode batches: one core is left to the training process, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores - 1))


def _as_index(key, n: int) -> torch.Tensor:
    """An int64 row tensor for an int, slice, list, array or (bool) tensor key; IndexError out of range."""
    if isinstance(key, slice):
        return torch.arange(n)[key]
    index = torch.as_tensor(key)
    if index.dtype == torch.bool:
        return torch.nonzero(index).flatten()
    index = index.long().flatten()
    index = torch.where(index < 0, index + n, index)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return index


class Rows:
    """A read-only uint8 stack of rows (N×…) read on demand; subclasses define `read`."""

    dtype = torch.uint8

    def __init__(self, shape):
        self.shape = torch.Size(shape)
        self._annotated: torch.Tensor | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The rows `index` (int64, in range) as a uint8 tensor len(index)×…"""
        raise NotImplementedError

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0
                                                   and key.dtype != torch.bool):
            return self.read(_as_index([int(key)], len(self)))[0]
        return self.read(_as_index(key, len(self)))

    def chunks(self, size: int = 256) -> Iterator[torch.Tensor]:
        """Every row in order, `size` rows at a time, read by worker processes."""
        order = torch.arange(len(self))
        for _, part in batches(self, order, size):
            yield part

    def annotated(self) -> torch.Tensor:
        """Bool per row: any non-zero value (for masks: the image is annotated). One pass, then kept."""
        if self._annotated is None:
            flags = [c.flatten(1).amax(1) > 0 for c in self.chunks()] if len(self) else []
            self._annotated = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
        return self._annotated


class FileRows(Rows):
    """Rows decoded from files: row i is `reader(*items[i])` (a picklable callable returning a uint8 array)."""

    def __init__(self, items: list[tuple], shape, reader: Callable[..., np.ndarray]):
        super().__init__((len(items), *shape))
        self.items, self.reader = items, reader

    def read(self, index: torch.Tensor) -> torch.Tensor:
        if len(index) == 0:
            return torch.zeros((0, *self.shape[1:]), dtype=self.dtype)
        return torch.from_numpy(np.stack([self.reader(*self.items[i]) for i in index.tolist()]))


class Zeros(Rows):
    """All-zero rows (the masks of a clean split): nothing stored."""

    def read(self, index: torch.Tensor) -> torch.Tensor:
        return torch.zeros((len(index), *self.shape[1:]), dtype=self.dtype)

    def annotated(self) -> torch.Tensor:
        return torch.zeros(len(self), dtype=torch.bool)


def streamed(t) -> bool:
    return isinstance(t, Rows)


class _Reader(TorchDataset):
    """What a worker process reads: a batch of rows of a split (or of one `Rows`), by index tensor.

    A FocusmlError (an unreadable file) comes back as its message, so the caller raises it as one line."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: torch.Tensor):
        try:
            s = self.source
            return s[index] if isinstance(s, Rows) else (s.images[index], s.masks[index], s.labels[index])
        except FocusmlError as e:
            return str(e)


def batches(source, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, object]]:
    """(index, rows) for consecutive `batch_size` slices of `order`, in that order.

    `source` is a `Rows` (rows: a tensor) or a split (rows: uint8 images, masks, labels). Streamed
    data is read by `workers()` worker processes, a few batches ahead; in-memory data is indexed here.
    """
    chunks = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    images = source if isinstance(source, Rows) else source.images
    if not streamed(images) or len(chunks) <= 1:
        reader = _Reader(source)
        for idx in chunks:
            yield idx, _checked(reader[idx])
        return
    loader = DataLoader(_Reader(source), batch_size=None, sampler=chunks, num_workers=workers(), prefetch_factor=4)
    for idx, rows in zip(chunks, loader):
        yield idx, _checked(rows)


def _checked(rows):
    if isinstance(rows, str):
        raise FocusmlError(rows)
    return rows
