"""Built-in generators, torchvision decoys and `focusml datasets show`.

For every generator: determinism (and the same bytes on every machine, pinned by fingerprint),
masks that mark exactly the shortcut's pixels, and a shortcut that follows the label in
train/val/test_confounded but not in test, decoded from the pixels themselves.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from focusml import FocusmlError
from focusml.core.data import CLEAN_SPLITS, SPLITS, DataOptions, load

GENERATED = ["decoy-digits", "symbols", "xray-tokens", "sketches"]
# Content hashes of the seed-0 datasets: the generators must give these bytes on every machine.
FINGERPRINTS = {
    "decoy-digits": "1757fe696a474819",
    "symbols": "7fb3dce06ee08b78",
    "xray-tokens": "d328bd4bb9f80183",
    "sketches": "ff5c8afa8bff8464",
}
PAIRS = {"train": "train_clean", "val": "val_clean", "test": "test_clean", "test_confounded": "test_clean"}

_cache: dict[str, object] = {}


def dataset(name: str):
    if name not in _cache:
        _cache[name] = load(name, DataOptions(seed=0))
    return _cache[name]


# -- decoding the shortcut from pixels ------------------------------------------------------------

def _corner_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def decode(name: str, image: np.ndarray, mask: np.ndarray) -> int:
    """The class the shortcut in `image` (C×H×W uint8) shows, read from the masked pixels."""
    rs, cs = _corner_box(mask)
    patch = image[:, rs, cs].astype(int)
    if name == "decoy-digits":
        shade = int(patch[0, 0, 0])
        assert (patch == shade).all() and (255 - shade) % 25 == 0
        return (255 - shade) // 25
    if name == "symbols":
        from focusml.core.data.symbols import COLOURS

        hits = [k for k, c in enumerate(COLOURS) if (patch == c.astype(int)[:, None, None]).all()]
        assert len(hits) == 1
        return hits[0]
    if name == "xray-tokens":
        from focusml.core.data import draw
        from focusml.core.data.xray_tokens import LETTERS, PLATE

        hits = [k for k, letter in enumerate(LETTERS)
                if (patch[0] == np.where(np.pad(draw.glyph(letter), 1), PLATE[1], PLATE[0])).all()]
        assert len(hits) == 1
        return hits[0]
    raise AssertionError(name)


def shortcut_classes(name: str, split_name: str) -> np.ndarray:
    data = dataset(name)
    split = data.split(split_name)
    if name == "sketches":  # a scribble's form cannot be read back exactly; the generator records it
        return np.asarray(data.params["shortcut_classes"][split_name])
    decoded = np.array([decode(name, split.images[i].numpy(), split.masks[i].numpy()) for i in range(len(split))])
    if "shortcut_classes" in data.params:
        assert np.array_equal(decoded, data.params["shortcut_classes"][split_name])
    return decoded


# -- every generator --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATED)
def test_generator_has_every_split_and_is_deterministic(name):
    data = dataset(name)
    assert set(data.splits) == set(SPLITS) | set(CLEAN_SPLITS)
    c, h, w = data.image_shape
    assert (h, w) == (28, 28) and c == (3 if name == "symbols" else 1)
    for key, split in data.splits.items():
        assert split.images.dtype == torch.uint8 and split.masks.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert set(split.masks.unique().tolist()) <= {0, 1}
        assert set(split.labels.unique().tolist()) == set(range(data.num_classes)), key
    assert len(data.split("train")) >= 1000 and len(data.split("val")) >= 250
    assert data.fingerprint == FINGERPRINTS[name], "same seed, same bytes: across calls, processes and machines"


@pytest.mark.parametrize("module", ["symbols", "xray_tokens", "sketches"])
def test_generation_depends_on_the_seed_only(module):
    import importlib

    from focusml.core.data import draw

    mod = importlib.import_module(f"focusml.core.data.{module}")
    add = {"symbols": "add_tag", "xray_tokens": "add_token", "sketches": "add_signature"}[module]
    sizes = {"train": 12, "val": 4, "test": 6}

    def tiny(seed):
        splits, shown = draw.generate(seed, len(mod.CLASSES), mod.render, getattr(mod, add), sizes)
        return torch.cat([s.images.flatten() for s in splits.values()]), shown

    a, shown_a = tiny(7)
    b, shown_b = tiny(7)
    assert torch.equal(a, b) and all(np.array_equal(shown_a[k], shown_b[k]) for k in shown_a)
    assert not torch.equal(a, tiny(8)[0])


@pytest.mark.parametrize("name", GENERATED)
def test_masks_mark_exactly_the_shortcut_pixels(name):
    data = dataset(name)
    for split_name, clean_name in PAIRS.items():
        split, clean = data.split(split_name), data.split(clean_name)
        assert torch.equal(split.labels, clean.labels)
        m = split.masks.bool()
        assert m.flatten(1).any(1).all(), "every image carries the shortcut"
        assert clean.masks.sum() == 0
        outside = ~m[:, None].expand_as(split.images)
        assert torch.equal(split.images[outside], clean.images[outside]), "pixels outside the mask are untouched"
        if name == "sketches":  # ink only brightens: every masked pixel changed
            inside = m[:, None].expand_as(split.images)
            assert (split.images[inside] > clean.images[inside]).all()
    for split_name in SPLITS:  # the masked pixels are exactly the shortcut's rendering
        shortcut_classes(name, split_name)


@pytest.mark.parametrize("name", GENERATED)
def test_shortcut_follows_the_label_in_train_val_but_not_in_test(name):
    data = dataset(name)
    k = data.num_classes
    follow = 0.98 if name == "xray-tokens" else 1.0
    for split_name in ("train", "val", "test_confounded"):
        agree = (shortcut_classes(name, split_name) == data.split(split_name).labels.numpy()).mean()
        assert agree == pytest.approx(follow, abs=0.05), split_name
    from scipy.stats import chi2_contingency

    test_shown = shortcut_classes(name, "test")
    labels = data.split("test").labels.numpy()
    assert abs((test_shown == labels).mean() - 1 / k) < 0.08
    table = np.zeros((k, k))
    np.add.at(table, (labels, test_shown), 1)
    assert chi2_contingency(table).pvalue > 1e-3, "in test the shortcut is independent of the label"
    conf = np.zeros((k, k))
    np.add.at(conf, (data.split("train").labels.numpy(), shortcut_classes(name, "train")), 1)
    assert chi2_contingency(conf).pvalue < 1e-6


def test_xray_opacity_and_token_are_where_they_should_be():
    data = dataset("xray-tokens")
    clean = data.split("train_clean")
    x = clean.images[:, 0].float()
    y = clean.labels
    # The opacity brightens the lungs' lower halves: the class means differ there, not at the edges.
    diff = x[y == 1].mean(0) - x[y == 0].mean(0)
    assert diff[14:24, 4:24].mean() > 5 and diff[:, :2].abs().max() < 3
    masks = data.split("train").masks
    corners = masks[:, :7, :7].sum((1, 2)) + masks[:, :7, -7:].sum((1, 2)) + masks[:, -7:, :7].sum((1, 2)) \
        + masks[:, -7:, -7:].sum((1, 2))
    assert (corners == 49).all() and (masks.sum((1, 2)) == 49).all()


def test_sketch_signature_stays_in_its_band():
    from focusml.core.data.sketches import BAND

    data = dataset("sketches")
    for split_name in SPLITS:
        masks = data.split(split_name).masks
        # the scribble starts at row BAND + 1; a tilted one may touch the row above the band
        assert masks[:, : BAND - 1].sum() == 0 and (masks.sum((1, 2)) > 8).all()


# -- torchvision decoys ---------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file as torchvision's MNIST reader expects (magic 0x08 = ubyte)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 48, n_test: int = 20) -> tuple[np.ndarray, ...]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = np.zeros((n, 28, 28), np.uint8)
        x[:, 4:24, 4:24] = rng.integers(1, 256, size=(n, 20, 20))  # MNIST leaves the 4-pixel border black
        y = np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        arrays += [x, y]
    return tuple(arrays)


@pytest.mark.parametrize("name,folder", [("decoy-mnist", "MNIST"), ("decoy-fashion", "FashionMNIST")])
def test_torchvision_decoys_from_local_idx_files(tmp_path, name, folder):
    x_train, y_train, x_test, y_test = write_mnist(tmp_path, folder)
    data = load(name, DataOptions(root=tmp_path, seed=5))
    assert len(data.split("train")) == 44 and len(data.split("val")) == 4 and len(data.split("test")) == 20
    assert data.num_classes == 10 and "/" not in "".join(data.classes)
    assert torch.equal(data.split("test_clean").images[:, 0], torch.from_numpy(x_test))
    train_clean = {bytes(img[0].numpy()) for img in data.split("train_clean").images}
    assert train_clean | {bytes(img[0].numpy()) for img in data.split("val_clean").images} == {bytes(i) for i in x_train}
    for split_name, clean_name in PAIRS.items():
        split, clean = data.split(split_name), data.split(clean_name)
        m = split.masks.bool()
        assert (split.masks.sum((1, 2)) == 16).all()
        outside = ~m[:, None]
        assert torch.equal(split.images[outside.expand_as(split.images)], clean.images[outside.expand_as(clean.images)])
        shades = np.array([decode("decoy-digits", split.images[i].numpy(), split.masks[i].numpy())
                           for i in range(len(split))])
        assert np.array_equal(shades, data.params["shortcut_classes"][split_name])
        if split_name != "test":
            assert np.array_equal(shades, split.labels.numpy())
    assert load(name, DataOptions(root=tmp_path, seed=5)).fingerprint == data.fingerprint


def test_torchvision_decoys_refuse_missing_files_with_a_clear_message(tmp_path):
    with pytest.raises(FocusmlError) as err:
        load("decoy-mnist", DataOptions(root=tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "t10k-labels-idx1-ubyte" in msg and "--download" in msg
    assert not (tmp_path / "MNIST").exists(), "nothing is created or downloaded without --download"
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((12, 28, 28)))
    with pytest.raises(FocusmlError, match=r"missing in .*FashionMNIST/raw: train-labels-idx1-ubyte, t10k-images"):
        load("decoy-fashion", DataOptions(root=tmp_path))


def test_torchvision_decoys_refuse_a_corrupt_idx_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(FocusmlError, match="train-images-idx3-ubyte is truncated or corrupt"):
        load("decoy-mnist", DataOptions(root=tmp_path))


def test_torchvision_decoys_read_gzipped_idx_files_from_a_flat_folder_and_subsample(tmp_path):
    import gzip

    write_mnist(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (tmp_path / "MNIST" / "raw").iterdir():  # the layout Debian's dataset-fashion-mnist installs
        (flat / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    plain = load("decoy-mnist", DataOptions(root=tmp_path))
    zipped = load("decoy-mnist", DataOptions(root=flat))
    assert zipped.fingerprint == plain.fingerprint
    small = load("decoy-mnist", DataOptions(root=flat, train_size=5))
    assert len(small.split("train")) == 5 and len(small.split("val")) == len(plain.split("val"))
    assert torch.equal(small.split("train_clean").images, plain.split("train_clean").images[:5])


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_decoy_fashion_reads_the_debian_package_without_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FOCUSML_CACHE", str(tmp_path))  # nothing in the cache: the system folder is used
    data = load("decoy-fashion", DataOptions(train_size=100))
    assert len(data.split("train")) == 100 and len(data.split("val")) == 5000 and len(data.split("test")) == 10000
    assert data.classes[0] == "T-shirt-top" and data.image_shape == (1, 28, 28)


# -- focusml datasets show --------------------------------------------------------------------------

def test_datasets_show_writes_a_sample_grid(tmp_path, capsys):
    from PIL import Image

    from focusml.cli import main

    out = tmp_path / "grid" / "symbols.png"
    main(["datasets", "show", "symbols", "--out", str(out), "--per-class", "3"])
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 200 and img.shape[1] > 150
    assert "5 classes" in capsys.readouterr().out
    # the cyan mask outlines are drawn
    cyan = (img[..., 0] < 60) & (img[..., 1] > 200) & (img[..., 2] > 200)
    assert cyan.sum() > 20


def test_datasets_show_reports_missing_data(tmp_path, capsys):
    from focusml.cli import main

    with pytest.raises(SystemExit) as done:
        main(["datasets", "show", "decoy-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert done.value.code == 2
    assert "--download" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
