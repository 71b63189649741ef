"""Name → loader registry for datasets; `load` is the one entry point the rest of focusml uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from focusml import FocusmlError
from focusml.core.data.base import Dataset


@dataclass(frozen=True)
class DataOptions:
    """Options every loader receives; a loader ignores those that do not apply to it."""

    seed: int = 0  # generation seed of built-in datasets (not the training seed)
    root: Path | None = None  # folder dataset root, or where torchvision files live
    download: bool = False  # torchvision sets only: allowed to download
    image_size: int | None = None  # resize folder images (and masks) to this square size
    train_size: int | None = None  # decoy-mnist / decoy-fashion: keep the first N (shuffled) training images
    loading: str = "auto"  # folder: auto | memory | stream (read from disk on demand; focusml.core.data.stream)
    #: folder: called before anything is decoded with (channels, height, width, classes, the decoded bytes,
    #: streamed); raises FocusmlError when the run cannot fit in memory (`focusml.core.memory.check`)
    fits: Callable[[int, int, int, int, int, bool], None] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[[DataOptions], Dataset]
    description: str
    shortcut: str
    builtin: bool = True  # generated, no files needed


DATASETS: dict[str, DatasetInfo] = {}


def register(name: str, description: str, shortcut: str, builtin: bool = True):
    """Decorator that adds a loader to the registry under `name`."""

    def wrap(fn):
        DATASETS[name] = DatasetInfo(name, fn, description, shortcut, builtin)
        return fn

    return wrap


def load(name: str, options: DataOptions | None = None) -> Dataset:
    """Load dataset `name`; raise FocusmlError naming the known datasets for an unknown one.

    Every loader is registered by then: importing this module runs `focusml.core.data/__init__`,
    which imports each loader module."""
    if name not in DATASETS:
        raise FocusmlError(
            f"unknown dataset '{name}'. Known datasets: {', '.join(sorted(DATASETS))} "
            "(see `focusml datasets list`)."
        )
    return DATASETS[name].loader(options or DataOptions())
