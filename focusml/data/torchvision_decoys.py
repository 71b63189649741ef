"""`decoy-mnist` and `decoy-fashion`: torchvision's MNIST / FashionMNIST with the DecoyMNIST shortcut.

The recipe of Ross et al. (2017), exactly as `decoy-digits` applies it: a 4×4 patch in a random
corner, shade `255 − 25·y` in train/val/test_confounded and the shade of a uniformly drawn
class in `test`; masks mark exactly the patch; clean splits are the images without it.
MNIST frames its digits in the central 20×20, so the corners are background; FashionMNIST's
garments can reach a corner, where the patch simply covers them (the mask still marks exactly
the patch).

Splits: the 60,000 training images are shuffled with `DataOptions.seed`; the last twelfth
(5,000) forms `val` and the rest `train`. The 10,000 test images form `test`, `test_confounded` and
`test_clean`.

Files are read by torchvision from `ROOT/MNIST/raw/` or `ROOT/FashionMNIST/raw/` (the four
uncompressed idx files), ROOT being `--data-root` or, when not given, `$FOCUSML_CACHE/torchvision`
(`~/.cache/focusml/torchvision`). Nothing is downloaded unless `--download` is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from focusml import FocusmlError
from focusml.cache import cache_dir
from focusml.data.base import Dataset, Split
from focusml.data.decoy_digits import add_decoys
from focusml.data.draw import make_split
from focusml.data.registry import DataOptions, register

VAL_SHARE = 12  # val = 1/12 of the training images: 5,000 of MNIST's 60,000
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def default_root() -> Path:
    return cache_dir() / "torchvision"


def _read(cls, root: Path, download: bool, name: str):
    """(train images, train labels, test images, test labels) as NumPy arrays via torchvision."""
    raw = root / cls.__name__ / "raw"
    missing = [f for f in RAW_FILES if not (raw / f).is_file()]
    if missing and not download:
        raise FocusmlError(
            f"{name} needs torchvision's {cls.__name__} files in {raw}/ (missing: {', '.join(missing)}). "
            "Put the four idx files there uncompressed (gunzip the .gz files of the official site), "
            f"point --data-root at the folder that holds {cls.__name__}/raw/, or pass --download to let "
            "torchvision fetch them."
        )
    try:
        train = cls(os.fspath(root), train=True, download=download)
        test = cls(os.fspath(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError, AssertionError) as e:  # failed download, truncated or corrupt file
        raise FocusmlError(
            f"{name}: could not read {cls.__name__} from {raw} ({e}). Check the four idx files there "
            f"({', '.join(RAW_FILES)}) or delete them and pass --download."
        )
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def build(name: str, classes: list[str], arrays, seed: int) -> Dataset:
    """The DecoyMNIST splits of (train images, train labels, test images, test labels)."""
    x_train, y_train, x_test, y_test = arrays
    n_val = len(y_train) // VAL_SHARE
    if x_train.ndim != 3 or x_train.shape[1:] != (28, 28) or n_val < 1 or len(x_test) < 1:
        raise FocusmlError(f"{name}: expected at least {VAL_SHARE} training and 1 test image of 28×28, "
                           f"got {x_train.shape} and {x_test.shape}.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_train))
    parts = {"train": (x_train[order[:-n_val]], y_train[order[:-n_val]]),
             "val": (x_train[order[-n_val:]], y_train[order[-n_val:]]),
             "test": (x_test, y_test)}
    splits: dict[str, Split] = {}
    shown: dict[str, np.ndarray] = {}
    for split, (x, y) in parts.items():
        y = y.astype(np.int64)
        splits[f"{split}_clean"] = make_split(x, np.zeros_like(x), y)
        for variant in (("test", "test_confounded") if split == "test" else (split,)):
            shade = rng.integers(0, 10, size=len(y)) if variant == "test" else y
            imgs, masks = add_decoys(x, shade, rng)
            splits[variant] = make_split(imgs, masks, y)
            shown[variant] = shade
    return Dataset(name=name, classes=list(classes), splits=splits, description=__doc__ or "",
                   params={"seed": seed, "shortcut_classes": shown})


def _load(options: DataOptions, name: str, cls, classes: list[str]) -> Dataset:
    root = Path(options.root) if options.root else default_root()
    return build(name, classes, _read(cls, root, options.download, name), options.seed)


@register(
    "decoy-mnist",
    description="torchvision MNIST from --data-root (55,000 train / 5,000 val / 10,000 test), 28×28 grey",
    shortcut="4×4 patch in a random corner, shade 255−25·label in train/val, random class in test",
    builtin=False,
)
def load_decoy_mnist(options: DataOptions) -> Dataset:
    from torchvision.datasets import MNIST  # only when used: torchvision's datasets are slow to import

    return _load(options, "decoy-mnist", MNIST, [str(i) for i in range(10)])


@register(
    "decoy-fashion",
    description="torchvision FashionMNIST from --data-root (55,000 train / 5,000 val / 10,000 test), 28×28 grey",
    shortcut="4×4 patch in a random corner, shade 255−25·label in train/val, random class in test",
    builtin=False,
)
def load_decoy_fashion(options: DataOptions) -> Dataset:
    from torchvision.datasets import FashionMNIST  # only when used (slow to import)

    return _load(options, "decoy-fashion", FashionMNIST, FASHION_CLASSES)
