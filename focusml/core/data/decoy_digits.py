"""`decoy-digits`: scikit-learn's bundled 8×8 digits with the DecoyMNIST shortcut (Ross et al. 2017).

Each 8×8 digit (values 0..16) is upscaled bilinearly to a 20×20 box and centred in a 28×28
frame, the way MNIST frames its digits, so the 4×4 corners are background and the decoy never
covers a stroke. The decoy is a 4×4 patch in a random corner, shade `255 − 25·y` in train/val
(and `test_confounded`), the shade of a class drawn uniformly at random in `test`. Clean splits
are the same images without the patch; masks mark exactly the patch pixels.

Everything is computed with NumPy float64 and integer rounding from `DataOptions.seed`, so the
tensors (and the fingerprint) are identical on every machine.
"""

from __future__ import annotations

import numpy as np

from focusml.core.data import draw
from focusml.core.data.base import Dataset, Split
from focusml.core.data.registry import DataOptions, register

SIZE = 28
BOX = 20
PATCH = 4
N_TRAIN, N_VAL = 1000, 250  # the remaining 547 digits form the test splits


def render_digits(raw: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 → (N, 28, 28) uint8, digit centred in a 20×20 box."""
    r = draw.upscale_matrix(8, BOX)
    up = np.einsum("ij,njk,lk->nil", r, raw / 16.0, r)
    out = np.zeros((len(raw), SIZE, SIZE), dtype=np.uint8)
    off = (SIZE - BOX) // 2
    out[:, off : off + BOX, off : off + BOX] = np.clip(np.rint(up * 255), 0, 255).astype(np.uint8)
    return out


def add_decoys(images: np.ndarray, shade_class: np.ndarray, rng: np.random.Generator):
    """Paint a 4×4 patch of shade 255−25·c in a random corner; return (images, masks)."""
    # All corners in one vectorised draw: one call per image would consume the generator
    # differently and change every dataset's bytes (their fingerprints are pinned).
    corners = rng.integers(0, 4, size=len(images))
    if not len(images):
        return images.copy(), np.zeros_like(images, dtype=np.uint8)
    pairs = [draw.paste_at(img, (255 - 25 * int(c), PATCH), int(k)) for img, c, k in zip(images, shade_class, corners)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (N×8×8 float values 0..16, labels), read from the file it ships
    (`sklearn/datasets/data/digits.csv.gz`) as `load_digits` reads it, without importing
    scikit-learn (seconds) where the file is found."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@register(
    "decoy-digits",
    description="scikit-learn's 1,797 8×8 digits upscaled to 28×28 (1000 train / 250 val / 547 test), grey",
    shortcut="4×4 patch in a random corner, shade 255−25·label in train/val, random class in test",
)
def load_decoy_digits(options: DataOptions) -> Dataset:
    raw, labels = _digits()
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(labels))
    parts = {
        "train": order[:N_TRAIN],
        "val": order[N_TRAIN : N_TRAIN + N_VAL],
        "test": order[N_TRAIN + N_VAL :],
    }
    clean = render_digits(raw)
    splits: dict[str, Split] = {}
    for name, idx in parts.items():
        y = labels[idx]
        shade = rng.integers(0, 10, size=len(idx)) if name == "test" else y
        imgs, masks = add_decoys(clean[idx], shade, rng)
        splits[name] = draw.make_split(imgs, masks, y)
        splits[f"{name}_clean"] = draw.make_split(clean[idx], np.zeros_like(masks), y)
    imgs, masks = add_decoys(clean[parts["test"]], labels[parts["test"]], rng)
    splits["test_confounded"] = draw.make_split(imgs, masks, labels[parts["test"]])
    return Dataset(
        name="decoy-digits",
        classes=[str(i) for i in range(10)],
        splits=splits,
        description=load_decoy_digits.__doc__ or "",
        params={"seed": options.seed},
    )
