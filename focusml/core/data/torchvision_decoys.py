"""`decoy-mnist` and `decoy-fashion`: MNIST / Fashion-MNIST with the DecoyMNIST shortcut.

The recipe of Ross et al. (2017), exactly as `decoy-digits` applies it: a 4×4 patch in a random
corner, shade `255 − 25·y` in train/val/test_confounded and the shade of a uniformly drawn
class in `test`; masks mark exactly the patch; clean splits are the images without it.
MNIST frames its digits in the central 20×20, so the corners are background; Fashion-MNIST's
garments can reach a corner, where the patch simply covers them (the mask still marks exactly
the patch).

Splits: the 60,000 training images are shuffled with `DataOptions.seed`; the last twelfth
(5,000) forms `val` and the rest `train`, optionally cut to its first `train_size` images
(`--train-size`, for a CPU budget). The 10,000 test images form `test`, `test_confounded` and
`test_clean`.

The four idx files (plain, or gzip'd as distributed) are read directly, from the first folder
that has them: with `--data-root`, that folder itself or its `<MNIST|FashionMNIST>/raw/`
(torchvision's layout); without, `$FOCUSML_CACHE/torchvision/<...>/raw/` and then the Debian
package's folder (`apt-get install dataset-fashion-mnist` → /usr/share/datasets/fashion-mnist/). Nothing is
downloaded unless `--download` is given (then torchvision fetches them into the cache).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from focusml import FocusmlError
from focusml.core.cache import cache_dir
from focusml.core.data.base import Dataset, Split
from focusml.core.data.decoy_digits import add_decoys
from focusml.core.data.draw import make_split
from focusml.core.data.registry import DataOptions, register

VAL_SHARE = 12  # val = 1/12 of the training images: 5,000 of MNIST's 60,000
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
SYSTEM_DIRS = {"MNIST": Path("/usr/share/datasets/mnist"), "FashionMNIST": Path("/usr/share/datasets/fashion-mnist")}


def default_root() -> Path:
    return cache_dir() / "torchvision"


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (plain or gzip'd) of unsigned bytes as a NumPy array; FocusmlError if it is not one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise FocusmlError(f"could not read {path} ({e}); replace the file.") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise FocusmlError(f"{path} is not an idx file of unsigned bytes (bad header); replace the file.")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) != offset + int(np.prod(shape)):
        raise FocusmlError(f"{path} is truncated or corrupt (header says {shape}); replace the file.")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _read(folder_name: str, options: DataOptions, name: str):
    """(train images, train labels, test images, test labels) from the first folder that has all four files."""
    if options.root:  # the user's folder, and nothing else
        candidates = [Path(options.root), Path(options.root) / folder_name / "raw"]
    else:
        candidates = [default_root() / folder_name / "raw", SYSTEM_DIRS[folder_name]]
    for folder in candidates:
        files = [_find(folder, stem) for stem in RAW_FILES]
        if all(files):
            return tuple(read_idx(f) for f in files)
    if options.download:
        import torchvision.datasets  # only to download: it is slow to import

        try:
            getattr(torchvision.datasets, folder_name)(os.fspath(default_root()), train=True, download=True)
            getattr(torchvision.datasets, folder_name)(os.fspath(default_root()), train=False, download=True)
        except (RuntimeError, OSError, ValueError) as e:
            raise FocusmlError(f"{name}: the download failed ({e}).") from None
        return _read(folder_name, DataOptions(seed=options.seed), name)
    where = candidates[-1] if options.root else candidates[0]
    missing = [stem for stem in RAW_FILES if not _find(where, stem)]
    hint = " (`apt-get install dataset-fashion-mnist` installs them)" if folder_name == "FashionMNIST" else ""
    raise FocusmlError(
        f"{name} needs the four idx files ({', '.join(RAW_FILES)}, plain or .gz) in one of: "
        f"{', '.join(map(str, candidates))}; missing in {where}: {', '.join(missing)}{hint}. Point --data-root "
        "at the folder that holds them, or pass --download.")


def build(name: str, classes: list[str], arrays, seed: int, train_size: int | None = None) -> Dataset:
    """The DecoyMNIST splits of (train images, train labels, test images, test labels)."""
    x_train, y_train, x_test, y_test = arrays
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise FocusmlError(f"{name}: images and labels differ in number ({len(x_train)}/{len(y_train)} train, "
                           f"{len(x_test)}/{len(y_test)} test); the idx files do not belong together.")
    n_val = len(y_train) // VAL_SHARE
    if x_train.ndim != 3 or x_train.shape[1:] != (28, 28) or n_val < 1 or len(x_test) < 1:
        raise FocusmlError(f"{name}: expected at least {VAL_SHARE} training and 1 test image of 28×28, "
                           f"got {x_train.shape} and {x_test.shape}.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_train))
    train = order[:-n_val][:train_size]
    parts = {"train": (x_train[train], y_train[train]),
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
                   params={"seed": seed, "shortcut_classes": shown, "train_size": train_size})


def _load(options: DataOptions, name: str, folder_name: str, classes: list[str]) -> Dataset:
    return build(name, classes, _read(folder_name, options, name), options.seed, options.train_size)


@register(
    "decoy-mnist",
    description="MNIST idx files from --data-root (55,000 train / 5,000 val / 10,000 test), 28×28 grey",
    shortcut="4×4 patch in a random corner, shade 255−25·label in train/val, random class in test",
    builtin=False,
)
def load_decoy_mnist(options: DataOptions) -> Dataset:
    return _load(options, "decoy-mnist", "MNIST", [str(i) for i in range(10)])


@register(
    "decoy-fashion",
    description="Fashion-MNIST idx files (Debian's dataset-fashion-mnist or --data-root; 55,000 train / 5,000 val / "
                "10,000 test), 28×28 grey",
    shortcut="4×4 patch in a random corner, shade 255−25·label in train/val, random class in test",
    builtin=False,
)
def load_decoy_fashion(options: DataOptions) -> Dataset:
    return _load(options, "decoy-fashion", "FashionMNIST", FASHION_CLASSES)
