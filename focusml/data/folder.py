"""`folder`: a user's own images, masks and optional clean images on disk.

Layout (every path below ROOT; `focusml datasets export NAME DIR` writes an example)::

    ROOT/images/<split>/<class>/<name>.<png|jpg|jpeg|bmp|gif|tif|tiff|webp>
    ROOT/masks/<split>/<class>/<name>.png     same relative path, extension .png;
                                              single channel, non-zero = irrelevant,
                                              all black = not annotated
    ROOT/clean/<split>/<class>/<name>.<ext>   optional: the image without the shortcut

Splits `train`, `val` and `test` are required, `test_confounded` is optional; the classes are the
sub-folders of `images/train` (sorted), and every split must use only those. Images are
converted to greyscale when every training image is greyscale, else to RGB. With
`image_size`, images are resized (bilinear) and masks with them (nearest neighbour); without
it every image must have the size of the first one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from focusml import FocusmlError
from focusml.data.base import SPLITS, Dataset, Split
from focusml.data.registry import DataOptions, register

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
REQUIRED_SPLITS = ("train", "val", "test")


def mask_path(root: Path, split: str, cls: str, image_name: str) -> Path:
    return root / "masks" / split / cls / (Path(image_name).stem + ".png")


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as e:
        raise FocusmlError(f"{what} {path} is not a readable image ({e}). Remove it or replace it with a PNG/JPEG.")


def _list_images(split_dir: Path, classes: list[str], split: str) -> list[tuple[str, Path]]:
    if not split_dir.is_dir():
        raise FocusmlError(f"folder dataset: split folder {split_dir} is missing. Create {split_dir}/<class>/ with images.")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    stray_files = sorted(p.name for p in split_dir.iterdir() if not p.is_dir())
    if stray_files:
        raise FocusmlError(
            f"folder dataset: {split_dir / stray_files[0]} is outside the expected layout: images go in "
            f"{split_dir}/<class>/<file>. Move or delete it."
        )
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise FocusmlError(
            f"folder dataset: class folder {split_dir / unknown[0]} is not a class of images/train "
            f"({', '.join(classes)}). Rename it or add that class to images/train."
        )
    items: list[tuple[str, Path]] = []
    for cls in classes:
        cdir = split_dir / cls
        files = sorted(cdir.iterdir()) if cdir.is_dir() else []
        images = []
        for f in files:
            if f.is_dir():
                raise FocusmlError(f"folder dataset: {f} is a folder inside a class folder; the layout is one level deep. Move its images up.")
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise FocusmlError(
                    f"folder dataset: {f} is not an image file (allowed: {', '.join(sorted(IMAGE_EXTENSIONS))}). Remove it."
                )
            images.append((cls, f))
        if not images and split == "train":
            raise FocusmlError(f"folder dataset: class '{cls}' has no training images in {cdir}. Add images or remove the folder.")
        items.extend(images)
    if not items:
        raise FocusmlError(f"folder dataset: split '{split}' in {split_dir} is empty. Add images to its class folders.")
    return items


def _to_array(img: Image.Image, mode: str, size: tuple[int, int] | None, resample) -> np.ndarray:
    img = img.convert(mode)
    if size is not None and img.size != size:
        img = img.resize(size, resample)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _load_mask(path: Path, size: tuple[int, int], resized: bool) -> np.ndarray:
    if not path.is_file():
        raise FocusmlError(
            f"folder dataset: mask {path} is missing. Draw it with `focusml masks serve`, or save an all-black "
            "single-channel PNG of the image's size there to mean 'no annotation'."
        )
    m = _open(path, "mask")
    if m.mode not in ("1", "L", "P", "I", "I;16"):
        raise FocusmlError(
            f"folder dataset: mask {path} has {len(m.getbands())} channels ({m.mode}); masks must be single-channel "
            "(greyscale) PNGs. Convert it, e.g. `PIL.Image.open(p).convert('L').save(p)`."
        )
    if m.size != size and not resized:
        raise FocusmlError(
            f"folder dataset: mask {path} is {m.size[0]}×{m.size[1]} but its image is {size[0]}×{size[1]}. "
            "Redraw the mask at the image's size."
        )
    if m.size != size:
        m = m.resize(size, Image.NEAREST)
    return (np.asarray(m.convert("L")) > 0).astype(np.uint8)


def _load_split(root: Path, split: str, classes: list[str], mode: str, size, resize: bool, tree: str) -> Split:
    items = _list_images(root / tree / split, classes, split)
    images, masks, labels = [], [], []
    for cls, path in items:
        img = _open(path, "image")
        if size is None:
            size = img.size
        if img.size != size and not resize:
            raise FocusmlError(
                f"folder dataset: image {path} is {img.size[0]}×{img.size[1]}, others are {size[0]}×{size[1]}. "
                "Pass --image-size N to resize every image (and mask) to N×N."
            )
        images.append(_to_array(img, mode, size, Image.BILINEAR))
        if tree == "images":
            masks.append(_load_mask(mask_path(root, split, cls, path.name), img.size if not resize else size, resize))
        else:
            masks.append(np.zeros(size[::-1], dtype=np.uint8))
        labels.append(classes.index(cls))
    return Split(
        torch.from_numpy(np.stack(images)),
        torch.from_numpy(np.stack(masks)),
        torch.tensor(labels, dtype=torch.int64),
    )


def _resolve_root(root: Path | None) -> Path:
    if root is None:
        raise FocusmlError("the folder dataset needs its root: pass --data-root DIR (layout: see `focusml datasets list`).")
    root = Path(root)
    if not (root / "images").is_dir():
        raise FocusmlError(f"folder dataset: {root / 'images'} is missing. Expected layout: ROOT/images/<split>/<class>/<file>.")
    return root


@register(
    "folder",
    description="your own images from --data-root (images/, masks/, optional clean/; see README)",
    shortcut="whatever your masks mark",
    builtin=False,
)
def load_folder(options: DataOptions) -> Dataset:
    root = _resolve_root(options.root)
    train_dir = root / "images" / "train"
    if not train_dir.is_dir():
        raise FocusmlError(f"folder dataset: {train_dir} is missing. Put training images in {train_dir}/<class>/.")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise FocusmlError(f"folder dataset: {train_dir} has no class folders. Create {train_dir}/<class>/ for each class.")
    first = next((f for c in classes for f in sorted((train_dir / c).iterdir()) if f.is_file()), None)
    if first is None:
        raise FocusmlError(f"folder dataset: {train_dir} holds no images.")
    resize = options.image_size is not None
    size = (options.image_size, options.image_size) if resize else None
    grey = all(
        _open(f, "image").mode in ("1", "L", "I", "I;16")
        for c in classes
        for f in sorted((train_dir / c).iterdir())[:20]
        if f.suffix.lower() in IMAGE_EXTENSIONS
    )
    mode = "L" if grey else "RGB"
    if size is None:
        size = _open(first, "image").size
    splits = {}
    for split in SPLITS:
        if split not in REQUIRED_SPLITS and not (root / "images" / split).is_dir():
            continue
        splits[split] = _load_split(root, split, classes, mode, size, resize, "images")
    if (root / "clean").is_dir():
        for split in REQUIRED_SPLITS:
            if (root / "clean" / split).is_dir():
                splits[f"{split}_clean"] = _load_split(root, split, classes, mode, size, resize, "clean")
    return Dataset(name="folder", classes=classes, splits=splits, description=__doc__ or "",
                   params={"root": os.fspath(root), "image_size": options.image_size})


def export(dataset: Dataset, out: Path) -> Path:
    """Write `dataset` in the folder layout under `out`; returns `out`."""
    out = Path(out)
    for split_name, split in dataset.splits.items():
        tree, split_dir = ("clean", split_name[: -len("_clean")]) if split_name.endswith("_clean") else ("images", split_name)
        for i in range(len(split)):
            cls = dataset.classes[int(split.labels[i])]
            name = f"{i:05d}.png"
            img = split.images[i].numpy()
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            path = out / tree / split_dir / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            if tree == "images":
                mp = mask_path(out, split_dir, cls, name)
                mp.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(split.masks[i].numpy() * 255).save(mp)
    return out
