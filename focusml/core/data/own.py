"""Your own data as a focusml `Dataset`: a folder, tensors or arrays, or a `torch.utils.data.Dataset` per split.

`as_dataset(train, val, test)` converts each split once to what every run works on (`base.Split`):
uint8 images N×C×H×W, uint8 masks N×H×W (1 = irrelevant, all-zero = not annotated) and int64 labels.
A split is a `Split`, a tuple `(images, labels)` or `(images, masks, labels)`, or a `torch.utils.data.Dataset`
(anything with `__len__` and `__getitem__`) whose items are `(image, mask or None, label)` or `(image, label)`.
Images are C×H×W (or H×W) tensors or arrays, uint8 in [0, 255] or float in [0, 1], or PIL images; a mask is H×W, any
non-zero pixel irrelevant. val and test are separate splits: the test split must break the shortcut
for the metrics to mean what docs/methods.md says; a clean train split (`train_clean`) gives the upper bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from focusml import FocusmlError
from focusml.core.data.base import Dataset, Split
from focusml.core.data.registry import DataOptions, load


def _tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise FocusmlError(f"{what} is a {type(x).__name__}; give a torch tensor or a numpy array.")


def _image(x, what: str) -> torch.Tensor:
    """One image as C×H×W (or H×W): a tensor or array as it is, a PIL image (H×W×C) channels first."""
    if hasattr(x, "getbands"):  # PIL, e.g. a torchvision dataset without transforms
        t = torch.from_numpy(np.array(x))
        return t.permute(2, 0, 1) if t.ndim == 3 else t
    return _tensor(x, what)


def _pixels(images, what: str) -> torch.Tensor:
    """uint8 N×C×H×W from uint8 or [0, 1] float images N×C×H×W (N×H×W: one channel)."""
    t = _tensor(images, what)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise FocusmlError(f"{what} have shape {tuple(t.shape)}; give N×C×H×W (or N×H×W) images, channels first.")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.is_floating_point():
        raise FocusmlError(f"{what} are {t.dtype}; give uint8 (0-255) or float images in [0, 1].")
    if len(t) and (float(t.min()) < 0 or float(t.max()) > 1):
        raise FocusmlError(f"{what} are floats in [{float(t.min()):.3g}, {float(t.max()):.3g}]; give them in [0, 1] "
                           "(not normalised) or as uint8: the model's input scaling is focusml's own.")
    return (t.float() * 255).round().to(torch.uint8).contiguous()


def _split(rows, name: str) -> Split:
    if isinstance(rows, Split):
        return rows
    if isinstance(rows, tuple) and len(rows) in (2, 3):
        images = _pixels(rows[0], f"the {name} images")
        masks = None if len(rows) == 2 or rows[1] is None else _tensor(rows[1], f"the {name} masks")
        labels = _tensor(rows[-1], f"the {name} labels").long().flatten()
    elif hasattr(rows, "__len__") and hasattr(rows, "__getitem__"):
        items = [rows[i] for i in range(len(rows))]
        if not items:
            raise FocusmlError(f"the {name} split is empty; give it at least one image.")
        if any(not isinstance(it, (tuple, list)) or len(it) not in (2, 3) for it in items):
            raise FocusmlError(f"the {name} dataset must yield (image, mask or None, label) or (image, label); "
                               f"item 0 is a {type(items[0]).__name__}.")
        pixels = [_image(it[0], f"a {name} image") for it in items]
        if len({tuple(t.shape) for t in pixels}) > 1:
            raise FocusmlError(f"the {name} images differ in size ({', '.join(sorted({str(tuple(t.shape)) for t in pixels})[:3])}"
                               "); resize them to one size (e.g. torchvision.transforms.Resize), or give a folder "
                               "with image_size.")
        images = _pixels(torch.stack(pixels), f"the {name} images")
        h, w = images.shape[-2:]
        masks = torch.stack([torch.zeros(h, w, dtype=torch.uint8) if len(it) == 2 or it[1] is None
                             else _tensor(it[1], f"a {name} mask").reshape(h, w) for it in items])
        labels = torch.as_tensor([int(it[-1]) for it in items], dtype=torch.int64)
    else:
        raise FocusmlError(f"the {name} split is a {type(rows).__name__}; give a torch Dataset yielding (image, mask or "
                           "None, label), a tuple (images, labels) or (images, masks, labels), or a focusml Split.")
    if masks is None:
        masks = torch.zeros(len(images), *images.shape[-2:], dtype=torch.uint8)
    masks = _tensor(masks, f"the {name} masks")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    try:
        return Split(images, (masks != 0).to(torch.uint8), labels)
    except ValueError as e:
        raise FocusmlError(f"the {name} split: {e} (images {tuple(images.shape)}, masks {tuple(masks.shape)}, "
                           f"labels {tuple(labels.shape)}).") from None


def as_dataset(train, val=None, test=None, *, classes: list[str] | None = None, name: str = "own",
               image_size: int | None = None, **more) -> Dataset:
    """A focusml `Dataset` from your data. `train` is a folder path (focusml's folder layout, docs/datasets.md),
    a focusml `Dataset` (returned as is), or the train split, with `val` and `test` (and, optionally, other
    splits by name in `more`: `train_clean`, `test_confounded`, ...) given the same way. `classes`: the class
    names, label i → classes[i] (default "0", "1", ...)."""
    if isinstance(train, Dataset):
        return train
    if isinstance(train, (str, Path)):
        if not Path(train).is_dir():
            raise FocusmlError(f"data {str(train)!r} is not a folder; give a folder of images (docs/datasets.md), "
                               "a focusml dataset name, or the splits themselves.")
        return load("folder", DataOptions(root=Path(train), image_size=image_size))
    if val is None or test is None:
        raise FocusmlError("give the val and test splits too (val chooses the checkpoint, test measures it with the "
                           "shortcut broken): as_dataset(train, val, test).")
    splits = {key: _split(rows, key) for key, rows in {"train": train, "val": val, "test": test, **more}.items()}
    shapes = {key: tuple(s.images.shape[1:]) for key, s in splits.items()}
    if len(set(shapes.values())) > 1:
        raise FocusmlError(f"the splits' images differ in shape ({shapes}); give every split the same C×H×W.")
    n = max(int(s.labels.max()) + 1 if len(s) else 0 for s in splits.values())
    if int(min(int(s.labels.min()) if len(s) else 0 for s in splits.values())) < 0:
        raise FocusmlError("labels must be 0, 1, ..., num_classes − 1; found a negative one.")
    classes = [str(i) for i in range(n)] if classes is None else [str(c) for c in classes]
    if len(classes) < n:
        raise FocusmlError(f"{len(classes)} class names for labels up to {n - 1}; give one name per label.")
    return Dataset(name, classes, splits, description=f"your own data ({', '.join(splits)})")
