"""`symbols`: procedurally drawn symbols (shape = class) with a coloured tag as the shortcut.

Each 28×28 RGB image shows one grey symbol (circle, square, triangle, cross, star) with a random
size, rotation, position and brightness on a dark, noisy background. The shortcut is a 4×4
tag in a random corner whose colour is the class's colour (red, green, blue, yellow, magenta)
in train/val/test_confounded and the colour of a uniformly drawn class in `test`. The symbol
stays inside a disc of radius 12 around the centre, so it never touches a tag; the tag
replaces its pixels, so the mask is exactly the 16 tag pixels. Clean splits are the same
images without the tag. Colour carries only the shortcut: the symbol and background are grey.

Why these settings: the symbol is small and its grey level varies, so learning the shape
takes the small CNN a few epochs, while one colour channel of the tag separates the classes
at once, and a baseline trained on the confounded data leans on the tag (docs/benchmarks.md
has the measured gap).
"""

from __future__ import annotations

import numpy as np

from focusml.core.data import draw
from focusml.core.data.base import Dataset
from focusml.core.data.registry import DataOptions, register

SIZE = 28
TAG = 4
CLASSES = ["circle", "square", "triangle", "cross", "star"]
COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 90, 250], [235, 220, 40], [220, 50, 220]], dtype=np.float64)
SIZES = {"train": 1000, "val": 250, "test": 500}
CENTRE = (SIZE / 2, SIZE / 2)


def _regular(n: int, centre, radius: float, angle: float, inner: float | None = None) -> list:
    """Vertices of a regular n-gon (or an n-pointed star with inner radius `inner`)."""
    pts = []
    steps = 2 * n if inner else n
    for i in range(steps):
        r = radius if (inner is None or i % 2 == 0) else inner
        v = draw.rotation(angle + 2 * np.pi * i / steps) @ np.array([-r, 0.0])
        pts.append((centre[0] + v[0], centre[1] + v[1]))
    return pts


def shape(kind: int, centre, radius: float, angle: float) -> np.ndarray:
    """Coverage of symbol `kind` (an index into CLASSES)."""
    if kind == 0:
        return draw.disc(SIZE, centre, 0.85 * radius)
    if kind == 1:
        return draw.polygon(SIZE, _regular(4, centre, radius, angle))
    if kind == 2:
        return draw.polygon(SIZE, _regular(3, centre, radius, angle))
    if kind == 3:
        rot = draw.rotation(angle)
        half = 0.28 * radius
        arms = []
        for a, b in (((-radius, -half), (radius, half)), ((-half, -radius), (half, radius))):
            corners = [(a[0], a[1]), (a[0], b[1]), (b[0], b[1]), (b[0], a[1])]
            arms.append(draw.polygon(SIZE, [tuple(np.array(centre) + rot @ np.array(p)) for p in corners]))
        return np.maximum(*arms)
    return draw.polygon(SIZE, _regular(5, centre, radius, angle, inner=0.45 * radius))


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """A clean 3×28×28 float image (0..255): grey symbol of class `label` on a noisy dark ground."""
    radius = rng.uniform(5.0, 8.5)
    spread = 11.5 - radius  # keeps the symbol inside a disc of radius 12 around the centre
    off = rng.uniform(-1.0, 1.0, size=2) * min(spread / np.sqrt(2), 2.5)
    centre = (CENTRE[0] + off[0], CENTRE[1] + off[1])
    cover = shape(label, centre, radius, rng.uniform(0, 2 * np.pi))
    ground = 25 + 12 * draw.smooth_noise(rng, SIZE, 5) + rng.uniform(-12, 12, size=(SIZE, SIZE))
    grey = ground + cover * (rng.uniform(90, 200) - ground)
    return np.repeat(grey[None], 3, axis=0)


def add_tag(rng: np.random.Generator, image: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint the 4×4 tag of colour COLOURS[cls] in a random corner; return (image, mask)."""
    return draw.paste_corner(rng, image, (COLOURS[cls][:, None, None], TAG))


@register(
    "symbols",
    description="5 procedurally drawn grey symbols, 28×28 RGB (1000 train / 250 val / 500 test)",
    shortcut="4×4 tag in a random corner, colour = class in train/val, colour of a random class in test",
)
def load_symbols(options: DataOptions) -> Dataset:
    splits, shown = draw.generate(options.seed, len(CLASSES), render, add_tag, SIZES)
    return Dataset(name="symbols", classes=list(CLASSES), splits=splits, description=__doc__ or "",
                   params={"seed": options.seed, "shortcut_classes": shown})
