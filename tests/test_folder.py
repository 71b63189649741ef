"""The `folder` dataset: layout, resizing, and every refusal naming the offending path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focusml import FocusmlError
from focusml.core.data import DataOptions, load

CLASSES = ("cat", "dog")


def write_image(path: Path, size=(8, 6), value: int = 100, mode: str = "L") -> Path:
    """A w×h image whose pixel (r, c) is value + r + c (clipped), so resizing is visible."""
    w, h = size
    arr = np.clip(value + np.add.outer(np.arange(h), np.arange(w)), 0, 255).astype(np.uint8)
    if mode == "RGB":
        arr = np.stack([arr, arr // 2, 255 - arr], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def write_mask(path: Path, size=(8, 6), box=(0, 0, 2, 2)) -> Path:
    """Single-channel PNG, 255 inside box = (row0, col0, row1, col1)."""
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    r0, c0, r1, c1 = box
    arr[r0:r1, c0:c1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


def make_tree(root: Path, splits=("train", "val", "test"), per_class=2, size=(8, 6), clean=False) -> Path:
    for split in splits:
        for k, cls in enumerate(CLASSES):
            for i in range(per_class):
                name = f"{cls}{i}"
                write_image(root / "images" / split / cls / f"{name}.png", size, 40 * k + 10 * i)
                write_mask(root / "masks" / split / cls / f"{name}.png", size, (0, 0, 1 + i, 2))
                if clean and split in ("train", "val", "test"):
                    write_image(root / "clean" / split / cls / f"{name}.png", size, 40 * k + 10 * i + 1)
    return root


def load_folder(root: Path, **kw):
    return load("folder", DataOptions(root=root, **kw))


def refused(root: Path, match: str, **kw) -> str:
    with pytest.raises(FocusmlError) as err:
        load_folder(root, **kw)
    msg = str(err.value)
    assert match in msg, msg
    return msg


# -- what loads ------------------------------------------------------------------------------------

def test_a_valid_tree_loads_with_masks_and_clean_twins(tmp_path):
    root = make_tree(tmp_path, splits=("train", "val", "test", "test_confounded"), clean=True)
    data = load_folder(root)
    assert data.classes == list(CLASSES) and data.image_shape == (1, 6, 8)
    assert set(data.splits) == {"train", "val", "test", "test_confounded", "train_clean", "val_clean", "test_clean"}
    train = data.split("train")
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert train.masks[0].sum() == 2 and train.masks[1].sum() == 4 and train.masks[1, :2, :2].all()
    assert int(train.images[2, 0, 0, 0]) == 40 and int(train.images[3, 0, 5, 7]) == 50 + 5 + 7
    clean = data.split("train_clean")
    assert torch.equal(clean.images.int() - 1, train.images.int()) and clean.masks.sum() == 0


def test_hidden_files_are_ignored(tmp_path):
    root = make_tree(tmp_path)
    (root / "images" / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "images" / ".hidden").write_text("x")
    (root / "masks" / "train" / "cat" / "._cat0.png").write_bytes(b"junk")
    assert len(load_folder(root).split("train")) == 4


def test_images_of_any_size_are_resized_with_nearest_neighbour_masks(tmp_path):
    root = make_tree(tmp_path, size=(8, 6))
    write_image(root / "images" / "train" / "dog" / "big.png", (20, 10), 30)
    write_mask(root / "masks" / "train" / "dog" / "big.png", (20, 10), (0, 10, 10, 20))  # right half
    refused(root, "big.png is 20×10, others are 8×6")
    data = load_folder(root, image_size=12)
    assert data.image_shape == (1, 12, 12)
    train = data.split("train")
    big = int(torch.nonzero(train.masks.flatten(1).sum(1) == 72)[0])  # half of 12×12
    assert set(train.masks.unique().tolist()) == {0, 1}, "nearest neighbour keeps masks binary"
    assert train.masks[big, :, 6:].all() and not train.masks[big, :, :6].any()


def test_rgb_training_images_make_an_rgb_dataset_and_16_bit_grey_is_scaled(tmp_path):
    root = make_tree(tmp_path)
    write_image(root / "images" / "train" / "cat" / "cat0.png", (8, 6), 100, mode="RGB")
    assert load_folder(root).image_shape == (3, 6, 8)
    root2 = make_tree(tmp_path / "b")
    arr = np.full((6, 8), 65535, np.uint16)
    Image.fromarray(arr).save(root2 / "images" / "val" / "cat" / "cat0.png")
    assert int(load_folder(root2).split("val").images[0].min()) == 255


# -- every refusal names its path ----------------------------------------------------------------

def test_missing_root_images_and_splits(tmp_path):
    with pytest.raises(FocusmlError, match="--data-root"):
        load("folder", DataOptions())
    refused(tmp_path / "nowhere", "is not a folder")
    refused(tmp_path, str(tmp_path / "images"))
    root = make_tree(tmp_path / "r", splits=("train", "test"))
    refused(root, f"split folder {root / 'images' / 'val'} is missing")


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_images_are_reported_with_their_path(tmp_path, content):
    root = make_tree(tmp_path)
    bad = root / "images" / "val" / "dog" / "dog1.png"
    if content == "truncated":
        content = bad.read_bytes()[:40]
    bad.write_bytes(content)
    msg = refused(root, str(bad))
    assert "not a readable image" in msg


def test_corrupt_training_image_found_while_detecting_colour(tmp_path):
    root = make_tree(tmp_path)
    bad = root / "images" / "train" / "cat" / "cat1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    refused(root, str(bad))


def test_corrupt_mask_is_reported(tmp_path):
    root = make_tree(tmp_path)
    bad = root / "masks" / "test" / "cat" / "cat0.png"
    bad.write_bytes(b"garbage")
    refused(root, f"mask {bad} is not a readable image")


def test_mask_that_is_not_single_channel(tmp_path):
    root = make_tree(tmp_path)
    bad = root / "masks" / "train" / "dog" / "dog0.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8), "RGB").save(bad)
    msg = refused(root, f"mask {bad} has 3 channels")
    assert "single-channel" in msg


@pytest.mark.parametrize("image_size", [None, 16])
def test_mask_of_another_size_is_refused_even_when_resizing(tmp_path, image_size):
    root = make_tree(tmp_path)
    bad = write_mask(root / "masks" / "val" / "cat" / "cat1.png", (10, 6))
    refused(root, f"mask {bad} is 10×6 but its image", image_size=image_size)


@pytest.mark.parametrize("loading", ["memory", "stream"])
def test_a_missing_mask_file_means_not_annotated(tmp_path, loading):
    root = make_tree(tmp_path)
    (root / "masks" / "test" / "dog" / "dog1.png").unlink()
    (root / "masks" / "val" / "cat" / "cat0.png").unlink()
    data = load_folder(root, loading=loading)
    assert data.split("test").annotated.tolist() == [True, True, True, False]
    assert data.split("val").annotated.tolist() == [False, True, True, True]
    assert data.split("test").masks[3].sum() == 0 and data.split("test").masks[2].sum() == 2
    assert data.split("train").annotated.all()


@pytest.mark.parametrize("loading", ["memory", "stream"])
def test_no_masks_folder_at_all_means_nothing_is_annotated(tmp_path, loading):
    root = make_tree(tmp_path, clean=True)
    for p in sorted((root / "masks").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "masks").rmdir()
    data = load_folder(root, loading=loading)
    for name in ("train", "val", "test"):
        split = data.split(name)
        assert len(split) == 4 and not split.annotated.any() and split.masks[:].sum() == 0


@pytest.mark.parametrize("stray,match", [
    ("images/train/notes.txt", "is outside the expected layout"),
    ("images/readme.md", "is outside the expected layout"),
    ("images/training/cat/x.png", "is not a split folder"),
    ("images/val/bird/x.png", "is not a class of images/train"),
    ("images/val/cat/sub/x.png", "is a folder inside a class folder"),
    ("images/val/cat/notes.txt", "is not an image file"),
    ("images/val/cat/cat0.jpg", "share the name 'cat0'"),
    ("masks/val/cat/orphan.png", "is not the mask of any image"),
    ("masks/val/bird/x.png", "no such class folder"),
    ("masks/val/loose.png", "is outside the expected layout"),
    ("masks/extra/cat/x.png", "is not a split folder"),
])
def test_files_outside_the_layout_are_reported_with_their_path(tmp_path, stray, match):
    root = make_tree(tmp_path)
    path = root / stray
    if path.suffix in (".png", ".jpg"):
        write_image(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("hello")
    msg = refused(root, match)
    # the message names the stray entry: the file itself or the stray folder that holds it
    assert any(f"{p} " in msg or f"{p}:" in msg for p in (path, path.parent, path.parent.parent)), msg


def test_empty_split_and_empty_training_class(tmp_path):
    root = make_tree(tmp_path)
    for f in (root / "images" / "val").rglob("*.png"):
        f.unlink()
    refused(root, f"split 'val' in {root / 'images' / 'val'} is empty")
    root2 = make_tree(tmp_path / "b")
    (root2 / "images" / "train" / "bird").mkdir()
    refused(root2, f"class 'bird' has no training images in {root2 / 'images' / 'train' / 'bird'}")


def test_clean_tree_must_mirror_images(tmp_path):
    root = make_tree(tmp_path, clean=True)
    missing = root / "clean" / "val" / "dog" / "dog0.png"
    missing.unlink()
    refused(root, f"image {root / 'images' / 'val' / 'dog' / 'dog0.png'} has no clean twin")
    write_image(missing)
    extra = write_image(root / "clean" / "test" / "cat" / "extra.png")
    refused(root, f"clean image {extra} has no counterpart")
    extra.unlink()
    write_image(root / "clean" / "test_confounded" / "cat" / "cat0.png")
    refused(root, "has no use")


def test_export_then_load_round_trips_a_builtin_dataset(tmp_path, digits):
    from focusml.core.data import Dataset
    from focusml.core.data.folder import export

    small = Dataset(digits.name, digits.classes,
                    {k: type(v)(v.images[:60], v.masks[:60], v.labels[:60]) for k, v in digits.splits.items()})
    export(small, tmp_path)
    back = load_folder(tmp_path)
    assert back.classes == sorted(digits.classes)
    for key, split in small.splits.items():
        order = torch.from_numpy(np.argsort(split.labels.numpy(), kind="stable"))
        assert torch.equal(back.splits[key].images, split.images[order]), key
        assert torch.equal(back.splits[key].masks, split.masks[order]), key
