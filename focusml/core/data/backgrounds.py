"""`backgrounds`: grey symbols (shape = class) on a coloured background that carries the shortcut.

The opposite of the other built-in sets: the shortcut is not a small patch but the background,
and the mask covers most of the image (the object is the small, relevant part), as with
Waterbirds' water and land or a scanner's texture. Each 28×28 RGB image shows one grey symbol of
`symbols` (radius 6–9 pixels, random rotation, position and brightness) on a textured background
whose hue is a class's colour: the label's in train/val/test_confounded, a uniformly drawn
class's in `test`. The mask marks every pixel the background shows through (all but the pixels
the symbol covers fully: ≈ 90% of the image).

A background cannot be removed, so the clean twin does not remove it: `*_clean` holds the same
symbols on backgrounds of a uniformly drawn class (decorrelated from the label, masks kept).
The upper bound is the model trained where the background carries no information.
"""

from __future__ import annotations

import numpy as np

from focusml.core.data import draw
from focusml.core.data.base import Dataset
from focusml.core.data.registry import DataOptions, register
from focusml.core.data.symbols import CLASSES, COLOURS, shape

SIZE = 28
SIZES = {"train": 1000, "val": 250, "test": 500}


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """The symbol as coverage and grey level: a 2×28×28 array (coverage in [0, 1], grey 0..255)."""
    radius = rng.uniform(6.0, 9.0)
    off = rng.uniform(-1.5, 1.5, size=2)
    centre = (SIZE / 2 + off[0], SIZE / 2 + off[1])
    cover = shape(label, centre, radius, rng.uniform(0, 2 * np.pi))
    grey = rng.uniform(150, 235) + rng.uniform(-8, 8, size=(SIZE, SIZE))
    return np.stack([cover, grey])


def add_background(rng: np.random.Generator, symbol: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite the symbol over a textured background of class `cls`'s hue; return (3×28×28 image, mask)."""
    cover, grey = symbol
    texture = 0.4 + 0.15 * draw.smooth_noise(rng, SIZE, 6) + rng.uniform(-0.05, 0.05, size=(SIZE, SIZE))
    ground = COLOURS[cls][:, None, None] * texture[None]
    image = ground + cover[None] * (grey[None] - ground)
    return image, (cover < 1.0).astype(np.uint8)


def generate(seed: int) -> tuple[dict, dict]:
    """Every split; `*_clean` are the same symbols on backgrounds of a uniformly drawn class."""
    splits, shown_by_split = {}, {}
    k = len(CLASSES)
    for split in ("train", "val", "test"):
        labels = draw.balanced_labels(draw.split_rng(seed, split, "labels"), SIZES[split], k)
        rng = draw.split_rng(seed, split, "images")
        symbols = [render(rng, int(y)) for y in labels]
        variants = ("test", "test_confounded", "test_clean") if split == "test" else (split, f"{split}_clean")
        for variant in variants:
            srng = draw.split_rng(seed, variant, "shortcut")
            follow = None if variant in ("test", f"{split}_clean") else 1.0
            shown = draw.shortcut_classes(srng, labels, k, follow)
            shown_by_split[variant] = shown
            pairs = [add_background(srng, s, int(c)) for s, c in zip(symbols, shown)]
            splits[variant] = draw.make_split(draw.to_uint8(np.stack([p[0] for p in pairs])),
                                              np.stack([p[1] for p in pairs]), labels)
    return splits, shown_by_split


@register(
    "backgrounds",
    description="5 grey symbols on coloured, textured backgrounds, 28×28 RGB (1000 train / 250 val / 500 test); "
                "the mask covers ≈ 90% of each image",
    shortcut="the background's hue = class in train/val, a random class's in test; clean twin: random-class backgrounds",
)
def load_backgrounds(options: DataOptions) -> Dataset:
    splits, shown = generate(options.seed)
    return Dataset(name="backgrounds", classes=list(CLASSES), splits=splits, description=__doc__ or "",
                   params={"seed": options.seed, "shortcut_classes": shown})
