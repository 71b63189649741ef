"""`folder`: a user's own images, masks and optional clean images on disk.

Layout (every path below ROOT; `focusml datasets export NAME DIR` writes an example)::

    ROOT/images/<split>/<class>/<name>.<png|jpg|jpeg|bmp|gif|tif|tiff|webp>
    ROOT/masks/<split>/<class>/<name>.png     optional per image: same relative path, extension
                                              .png; single channel, non-zero = irrelevant; no
                                              file (or no masks/ at all) or all black = not annotated
    ROOT/clean/<split>/<class>/<name>.<ext>   optional: the image without the shortcut

Splits `train`, `val` and `test` are required, `test_confounded` is optional; the classes are the
sub-folders of `images/train` (sorted), and every split must use only those. Images are
converted to greyscale when every training image is greyscale, else to RGB; 16-bit greyscale
images are scaled to 8 bits (÷257). With `image_size`, images are resized (bilinear) and masks
with them (nearest neighbour, so a mask stays binary); without it every image must have the
size of the first one. A mask must always have its own image's size.

Refused, each with the offending path and the fix: a missing split, an empty split, a
class with no images in any split (every class of images/train needs images in train, val, test
and test_confounded when present), a symbolic link (file or folder) that resolves outside the
dataset root (links that stay inside it are followed), a file that is not a readable image (corrupt, truncated, not an image at all), a mask that is not
single-channel or not its image's size, and anything outside the layout (a file where a folder
belongs, an unknown split or class folder, a folder inside a class folder, a non-image file,
two images sharing a name stem and so a mask, a mask without an image, a clean image without
a counterpart in images/ or the other way round). Hidden entries (names starting with '.',
e.g. .DS_Store) are ignored everywhere.
"""

from __future__ import annotations

import os
import struct
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from focusml import FocusmlError
from focusml.core.data.base import SPLITS, Dataset, Split
from focusml.core.data.registry import DataOptions, register
from focusml.core.data.stream import FileRows, Zeros, streams

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
REQUIRED_SPLITS = ("train", "val", "test")
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
MASK_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# What PIL raises for unreadable files: not an image, truncated, bad chunk, bad zlib stream, bomb.
READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
                Image.DecompressionBombError)


def mask_path(root: Path, split: str, cls: str, image_name: str) -> Path:
    """Where the mask of image `image_name` lives: masks/<split>/<class>/<stem>.png (the mask tool's too)."""
    return root / "masks" / split / cls / (Path(image_name).stem + ".png")


def _is_link(path: Path) -> bool:
    return path.is_symlink() or bool(getattr(os.path, "isjunction", lambda p: False)(path))


def _check_inside(path: Path, root: Path) -> Path:
    """`path` if it is no link, or a link whose target stays inside the dataset root; else FocusmlError."""
    if _is_link(path):
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(path))
        if real != real_root and real_root not in real.parents:
            raise FocusmlError(
                f"folder dataset: {path} is a symbolic link to {real}, outside the dataset root {real_root}. "
                "Copy what it points to into the dataset (e.g. `cp -rL`), or pass a --data-root that contains it."
            )
    return path


def _entries(folder: Path, root: Path) -> list[Path]:
    """Sorted entries of a folder, hidden ones (.DS_Store, ...) left out; links leaving `root` refused."""
    return [_check_inside(p, root) for p in sorted(folder.iterdir()) if not p.name.startswith(".")]


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except READ_ERRORS as e:
        raise FocusmlError(
            f"folder dataset: {what} {path} is not a readable image ({type(e).__name__}: {e}). "
            "Remove it or replace it with a valid PNG/JPEG."
        )


def _check_top(root: Path, tree: str) -> None:
    """ROOT/<tree>/ may hold only split folders."""
    for p in _entries(root / tree, root):
        if not p.is_dir():
            raise FocusmlError(
                f"folder dataset: {p} is outside the expected layout: {root / tree}/ holds only split folders "
                f"({', '.join(SPLITS)}). Move or delete it."
            )
        if p.name not in SPLITS:
            raise FocusmlError(
                f"folder dataset: {p} is not a split folder; {root / tree}/ may hold only {', '.join(SPLITS)}. "
                "Rename or remove it."
            )


def _list_images(split_dir: Path, classes: list[str], split: str, root: Path) -> list[tuple[str, Path]]:
    """(class, image path) of a split folder, in a fixed order; refuses anything outside the layout."""
    if not split_dir.is_dir():
        raise FocusmlError(f"folder dataset: split folder {split_dir} is missing. Create {split_dir}/<class>/ with images.")
    entries = _entries(split_dir, root)
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise FocusmlError(
            f"folder dataset: {stray[0]} is outside the expected layout: images go in "
            f"{split_dir}/<class>/<file>. Move or delete it."
        )
    unknown = [p for p in entries if p.name not in classes]
    if unknown:
        raise FocusmlError(
            f"folder dataset: class folder {unknown[0]} is not a class of images/train "
            f"({', '.join(classes)}). Rename it or add that class to images/train."
        )
    items: list[tuple[str, Path]] = []
    empty: list[str] = []
    for cls in classes:
        cdir = split_dir / cls
        stems: dict[str, Path] = {}
        for f in _entries(cdir, root) if cdir.is_dir() else []:
            if f.is_dir():
                raise FocusmlError(f"folder dataset: {f} is a folder inside a class folder; the layout is one level "
                                   "deep. Move its images up.")
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                raise FocusmlError(f"folder dataset: {f} is not an image file (allowed: "
                                   f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Remove it.")
            if f.stem in stems:
                raise FocusmlError(f"folder dataset: {stems[f.stem]} and {f} share the name '{f.stem}' and so the mask "
                                   f"{f.stem}.png. Rename one of them.")
            stems[f.stem] = f
            items.append((cls, f))
        if not stems:
            empty.append(cls)
    if not items:
        raise FocusmlError(f"folder dataset: split '{split}' in {split_dir} is empty. Add images to its class folders.")
    if empty:
        cls, cdir = empty[0], split_dir / empty[0]
        if split == "train":
            raise FocusmlError(f"folder dataset: class '{cls}' has no training images in {cdir}. Add images or remove "
                               "the folder.")
        where = f"{cdir} is empty" if cdir.is_dir() else f"{cdir} is missing"
        raise FocusmlError(f"folder dataset: class '{cls}' has no images in split '{split}' ({where}). Every class "
                           f"of images/train needs images in every split: add some to {cdir}, or remove the class "
                           "from every split.")
    return items


def _is_grey(img: Image.Image) -> bool:
    if img.mode == "P":
        pal = np.asarray(img.getpalette() or [], dtype=np.int32).reshape(-1, 3)
        return bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
    return img.mode in GREY_MODES


def eight_bit(img: Image.Image, mode: str) -> Image.Image:
    """`img` as an 8-bit 'L' or 'RGB' image; 16-bit and float greyscale are scaled, not clipped.

    The one decoding of a user's image: the loader, the logged model (`focusml.core.preprocess`) and the mask
    tool all go through it, so what a user draws on is what the model trains on."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        elif arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return img.convert(mode)


def image_array(img: Image.Image, mode: str, size: tuple[int, int]) -> np.ndarray:
    """`img` as the dataset stores it: 8-bit `mode` ('L' or 'RGB'), resized (bilinear) to `size` (w, h), uint8 C×H×W.
    The logged model applies the same to the images it is given (`focusml.core.preprocess`)."""
    img = eight_bit(img, mode)
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _check_mask(m: Image.Image, path: Path, image_path: Path, image_size: tuple[int, int]) -> None:
    """Refuse a mask that is not single-channel or not its image's size."""
    if m.mode not in MASK_MODES:
        raise FocusmlError(
            f"folder dataset: mask {path} has {len(m.getbands())} channels ({m.mode}); masks must be single-channel "
            "(greyscale) PNGs. Convert it, e.g. `PIL.Image.open(p).convert('L').save(p)`."
        )
    if m.size != image_size:
        raise FocusmlError(
            f"folder dataset: mask {path} is {m.size[0]}×{m.size[1]} but its image {image_path} is "
            f"{image_size[0]}×{image_size[1]}. Redraw the mask at the image's size."
        )


def _load_mask(path: Path | None, image_path: Path, image_size: tuple[int, int],
               size: tuple[int, int]) -> np.ndarray:
    """The binary mask of an image of `image_size`, taken to `size` by nearest neighbour; all zero (not
    annotated) when the image has no mask file (`path` None or missing)."""
    if path is None or not path.is_file():
        return np.zeros((size[1], size[0]), dtype=np.uint8)
    m = _open(path, "mask")
    _check_mask(m, path, image_path, image_size)
    arr = (np.asarray(m) > 0).astype(np.uint8)
    if m.size != size:
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.NEAREST))
    return arr


def _check_orphan_masks(root: Path, split: str, items: list[tuple[str, Path]]) -> None:
    """Every file in masks/<split>/ must be the mask of an image of that split."""
    mdir = root / "masks" / split
    if not mdir.is_dir():
        return
    expected = {(cls, p.stem) for cls, p in items}
    classes = {cls for cls, _ in items}
    for cdir in _entries(mdir, root):
        if not cdir.is_dir():
            raise FocusmlError(f"folder dataset: {cdir} is outside the expected layout: masks go in "
                               f"{mdir}/<class>/<name>.png. Move or delete it.")
        for f in _entries(cdir, root):
            if (cdir.name, Path(f.name).stem) not in expected or f.suffix.lower() != ".png" or f.is_dir():
                hint = "" if cdir.name in classes else " (no such class folder in images/)"
                raise FocusmlError(
                    f"folder dataset: {f} is not the mask of any image: expected masks/{split}/<class>/<stem>.png "
                    f"for an image images/{split}/<class>/<stem>.<ext>{hint}. Rename or delete it."
                )


def _load_split(root: Path, split: str, classes: list[str], mode: str, size: tuple[int, int], resize: bool,
                items: list[tuple[str, Path]], stream: bool) -> Split:
    _check_orphan_masks(root, split, items)
    if stream:
        return _stream_split(root, split, classes, mode, size, resize, items)
    images, masks, labels = [], [], []
    for cls, path in items:
        img = _open(path, "image")
        if img.size != size and not resize:
            raise _size_error(path, img.size, size, "image")
        images.append(image_array(img, mode, size))
        masks.append(_load_mask(mask_path(root, split, cls, path.name), path, img.size, size))
        labels.append(classes.index(cls))
    return Split(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)),
                 torch.tensor(labels, dtype=torch.int64))


def _size_error(path: Path, got: tuple[int, int], size: tuple[int, int], what: str) -> FocusmlError:
    return FocusmlError(
        f"folder dataset: {what} {path} is {got[0]}×{got[1]}, others are {size[0]}×{size[1]}. "
        "Pass --image-size N to resize every image (and mask) to N×N."
    )


def _load_clean(root: Path, split: str, classes: list[str], reference: list[tuple[str, Path]], mode: str,
                size: tuple[int, int], resize: bool, stream: bool) -> Split:
    """The clean twin of `split`: one clean image per image of images/<split>, same class and name stem."""
    cdir = root / "clean" / split
    found = {(cls, p.stem): p for cls, p in _list_images(cdir, classes, split, root)}
    twins = []
    for cls, path in reference:
        twin = found.pop((cls, path.stem), None)
        if twin is None:
            raise FocusmlError(f"folder dataset: image {path} has no clean twin {cdir / cls / path.stem}.<ext>. "
                               f"Add it, or remove {cdir} if this split has no clean version.")
        twins.append(twin)
    if found:
        extra = next(iter(found.values()))
        raise FocusmlError(f"folder dataset: clean image {extra} has no counterpart in images/{split}/ (same class, "
                           "same name stem). Remove it or add the image.")
    labels = torch.tensor([classes.index(cls) for cls, _ in reference], dtype=torch.int64)
    if stream:
        for twin in twins:
            got, _ = _peek(twin, "clean image")
            if got != size and not resize:
                raise _size_error(twin, got, size, "clean image")
        images = FileRows([(os.fspath(t),) for t in twins], (_channels(mode), size[1], size[0]),
                          partial(_read_image, _real(root), mode, size, "clean image"))
        return Split(images, Zeros((len(twins), size[1], size[0])), labels)
    arrays = []
    for twin in twins:
        img = _open(twin, "clean image")
        if img.size != size and not resize:
            raise _size_error(twin, img.size, size, "clean image")
        arrays.append(image_array(img, mode, size))
    return Split(torch.from_numpy(np.stack(arrays)), torch.zeros((len(arrays), size[1], size[0]), dtype=torch.uint8),
                 labels)


# -- streamed splits: files checked from their headers now, decoded on demand (focusml.core.data.stream) ---------

def _channels(mode: str) -> int:
    return 1 if mode == "L" else 3


def _real(root: Path) -> str:
    return os.path.realpath(root)


def _peek(path: Path, what: str) -> tuple[tuple[int, int], Image.Image]:
    """(size, header-only image) of a file, without decoding its pixels; FocusmlError if it is no image."""
    try:
        with Image.open(path) as img:
            return img.size, img
    except READ_ERRORS as e:
        raise FocusmlError(
            f"folder dataset: {what} {path} is not a readable image ({type(e).__name__}: {e}). "
            "Remove it or replace it with a valid PNG/JPEG."
        )


def _inside(path: str, real_root: str) -> Path:
    """`path` if it resolves inside the dataset root now (checked at every streamed read), else FocusmlError."""
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise FocusmlError(
            f"folder dataset: {path} resolves to {real}, outside the dataset root {real_root} (a link changed "
            "after loading?). Copy what it points to into the dataset, or pass a --data-root that contains it."
        )
    return Path(path)


def _read_image(real_root: str, mode: str, size: tuple[int, int], what: str, path: str) -> np.ndarray:
    """One streamed image row, decoded exactly as an in-memory one."""
    return image_array(_open(_inside(path, real_root), what), mode, size)


def _read_mask(real_root: str, size: tuple[int, int], path: str | None, image_path: str,
               image_size: tuple[int, int]) -> np.ndarray:
    """One streamed mask row, decoded exactly as an in-memory one (`path` None: the image had no mask file
    when the split was loaded, an all-zero row)."""
    return _load_mask(None if path is None else _inside(path, real_root), Path(image_path), image_size, size)


def _stream_split(root: Path, split: str, classes: list[str], mode: str, size: tuple[int, int], resize: bool,
                  items: list[tuple[str, Path]]) -> Split:
    """A split whose rows are read on demand; every image and mask header is checked here."""
    image_rows, mask_rows, labels = [], [], []
    for cls, path in items:
        got, _ = _peek(path, "image")
        if got != size and not resize:
            raise _size_error(path, got, size, "image")
        mp = mask_path(root, split, cls, path.name)
        if mp.is_file():
            _, header = _peek(mp, "mask")
            _check_mask(header, mp, path, got)
        image_rows.append((os.fspath(path),))
        mask_rows.append((os.fspath(mp) if mp.is_file() else None, os.fspath(path), got))
        labels.append(classes.index(cls))
    real_root = _real(root)
    images = FileRows(image_rows, (_channels(mode), size[1], size[0]),
                      partial(_read_image, real_root, mode, size, "image"))
    masks = FileRows(mask_rows, (size[1], size[0]), partial(_read_mask, real_root, size))
    return Split(images, masks, torch.tensor(labels, dtype=torch.int64))


def _resolve_root(root: Path | None) -> Path:
    if root is None:
        raise FocusmlError("the folder dataset needs its root: pass --data-root DIR (layout: see `focusml datasets list`).")
    root = Path(root)
    if not root.is_dir():
        raise FocusmlError(f"folder dataset: {root} is not a folder. Pass --data-root DIR holding images/, masks/ "
                           "and optionally clean/.")
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
    for tree in ("images", "masks", "clean"):
        _check_inside(root / tree, root)
        if (root / tree).is_dir():
            _check_top(root, tree)
    train_dir = root / "images" / "train"
    if not train_dir.is_dir():
        raise FocusmlError(f"folder dataset: {train_dir} is missing. Put training images in {train_dir}/<class>/.")
    classes = [p.name for p in _entries(train_dir, root) if p.is_dir()]
    if not classes:
        raise FocusmlError(f"folder dataset: {train_dir} has no class folders. Create {train_dir}/<class>/ for each class.")
    train_items = _list_images(train_dir, classes, "train", root)
    sample = [p for c in classes for p in [q for k, q in train_items if k == c][:20]]
    grey = all(_is_grey(_open(p, "image")) for p in sample)
    mode = "L" if grey else "RGB"
    resize = options.image_size is not None
    size = (options.image_size, options.image_size) if resize else _open(train_items[0][1], "image").size
    plan = {split: _list_images(root / "images" / split, classes, split, root) for split in SPLITS
            if split in REQUIRED_SPLITS or (root / "images" / split).is_dir()}
    clean = []
    if (root / "clean").is_dir():
        for split in SPLITS:
            if (root / "clean" / split).is_dir():
                if split not in REQUIRED_SPLITS:
                    raise FocusmlError(f"folder dataset: {root / 'clean' / split} has no use: clean images exist for "
                                       f"{', '.join(REQUIRED_SPLITS)} only. Remove it.")
                clean.append(split)
    rows = sum(len(items) for items in plan.values()) + sum(len(plan[split]) for split in clean)
    stream = streams(options.loading, decoded_bytes(rows, _channels(mode), size))
    if options.fits is not None:  # before anything is decoded: a size that cannot fit is refused, not tried
        options.fits(_channels(mode), size[1], size[0], len(classes), decoded_bytes(rows, _channels(mode), size), stream)
    splits = {split: _load_split(root, split, classes, mode, size, resize, items, stream)
              for split, items in plan.items()}
    for split in clean:
        splits[f"{split}_clean"] = _load_clean(root, split, classes, plan[split], mode, size, resize, stream)
    return Dataset(name="folder", classes=classes, splits=splits, description=__doc__ or "",
                   params={"root": os.fspath(root), "image_size": options.image_size, "streamed": stream})


def decoded_bytes(rows: int, channels: int, size: tuple[int, int]) -> int:
    """Bytes the decoded tensors of `rows` images and their masks take in memory (uint8)."""
    return rows * (channels + 1) * size[0] * size[1]


def exported_name(cls: str, row: int) -> tuple[str, str]:
    """(class folder, file name) that `export` gives row `row` of class `cls`."""
    return cls.replace("/", "-").replace("\\", "-"), f"{row:05d}.png"


def row_paths(dataset: Dataset, split: str) -> list[str]:
    """Each row of `split` as `<split>/<class>/<file>` under images/: a folder dataset's own files, in the
    order they were loaded; for any other dataset, the names `export` writes it under."""
    if dataset.name == "folder":
        root = Path(dataset.params["root"])
        items = _list_images(root / "images" / split, dataset.classes, split, root)
        return [f"{split}/{cls}/{path.name}" for cls, path in items]
    labels = dataset.split(split).labels.tolist()
    return ["/".join((split, *exported_name(dataset.classes[y], i))) for i, y in enumerate(labels)]


def export(dataset: Dataset, out: Path) -> Path:
    """Write `dataset` in the folder layout under `out`; returns `out`."""
    out = Path(out)
    for split_name, split in dataset.splits.items():
        tree, split_dir = ("clean", split_name[: -len("_clean")]) if split_name.endswith("_clean") else ("images", split_name)
        for i in range(len(split)):
            cls, name = exported_name(dataset.classes[int(split.labels[i])], i)
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
