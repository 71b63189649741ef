"""`sketches`: procedurally drawn stroke sketches with the artist's signature scribble as the shortcut.

Each 28×28 greyscale image is a pen sketch of a house, tree, fish, sun or boat drawn as light
strokes on a dark, grainy ground (the way QuickDraw-style bitmaps store sketches): every
template is a handful of polylines whose points are jittered, scaled, rotated (±0.9 rad) and
shifted per image, with a random pen width and ink; a sketch sometimes leaves out a detail and
has one or two stray strokes, the second in rows 21–27, the signature band, where the sketch
itself never goes.

The shortcut is a small signature scribble in the band, left or right (a tilted one may touch
row 20): each class has its own "artist" whose scribble has a distinctive form (zigzag, loops,
ticks, double line, cross). It shows the label's form in train/val/test_confounded and the
form of a uniformly drawn class in `test`. The scribble's ink is quantised to whole grey levels
before it is added to the ground, so the mask (1 = ink ≥ 1 grey level) marks exactly the pixels
the scribble changed; clean splits are the same sketches without it.

Why these settings: with dark strokes on light paper the small CNN at lr 3e-3 sometimes never
left chance; with a faint sketch and a bold signature, a model trained on clean sketches was
thrown off by the signature in `test`. Sketch and signature now share ink and pen, and the
stray stroke in the band teaches the upper bound to ignore one there.
"""

from __future__ import annotations

import numpy as np

from focusml.core.data import draw
from focusml.core.data.base import Dataset
from focusml.core.data.registry import DataOptions, register

SIZE = 28
BAND = 21  # first row of the signature band
CLASSES = ["house", "tree", "fish", "sun", "boat"]
SIZES = {"train": 1000, "val": 250, "test": 500}
SKETCH_SCALE = (5.5, 8.5)  # half-size of the sketch in pixels
SKETCH_INK = (150.0, 200.0)  # grey levels a full stroke adds to the dark ground
SIGNATURE_WIDTH = (1.0, 1.3)
SIGNATURE_INK = (170.0, 210.0)
ROTATION = 0.9  # radians either way


def _circle(cy, cx, r, n=14, phase=0.0):
    angles = phase + 2 * np.pi * np.arange(n + 1) / n
    return [(cy - r * c, cx + r * s) for c, s in zip(np.round(np.cos(angles), 9), np.round(np.sin(angles), 9))]


def template(label: int) -> list[list[tuple[float, float]]]:
    """Polylines of class `label` in unit coordinates (row, col) within [−1, 1]²; the first two
    carry the object, later ones are details a sketch may leave out."""
    if label == 0:  # house: walls, roof, door
        return [[(-0.1, -0.7), (1, -0.7), (1, 0.7), (-0.1, 0.7), (-0.1, -0.7)],
                [(-0.1, -0.85), (-1, 0), (-0.1, 0.85)],
                [(1, -0.15), (0.45, -0.15), (0.45, 0.15), (1, 0.15)]]
    if label == 1:  # tree: trunk and a round crown
        return [_circle(-0.3, 0, 0.62), [(1, -0.15), (0.25, -0.15)], [(1, 0.15), (0.25, 0.15)]]
    if label == 2:  # fish: body, tail, eye
        body = [(r * 0.72, c * 1.1 - 0.15) for r, c in _circle(0, 0, 0.62, 16)]
        return [body, [(0, 0.5), (-0.5, 0.95), (0.5, 0.95), (0, 0.5)], [(-0.12, -0.6), (-0.12, -0.5)]]
    if label == 3:  # sun: disc outline and eight rays
        rays = [[(-0.6 * c, 0.6 * s), (-0.95 * c, 0.95 * s)]
                for c, s in zip(np.round(np.cos(np.arange(8) * np.pi / 4 + 0.3), 9),
                                np.round(np.sin(np.arange(8) * np.pi / 4 + 0.3), 9))]
        return [_circle(0, 0, 0.42)] + rays
    return [[(0.45, -0.95), (0.45, 0.95), (0.95, 0.55), (0.95, -0.55), (0.45, -0.95)],  # boat: hull, mast, sail
            [(0.45, 0), (-0.95, 0)], [(-0.85, 0.1), (0.3, 0.1), (0.3, 0.8), (-0.85, 0.1)]]


def signature(form: int) -> list[list[tuple[float, float]]]:
    """Polylines of signature `form` in a 5×8 pixel box (row, col)."""
    if form == 0:  # zigzag
        return [[(4, 0), (0, 1.6), (4, 3.2), (0, 4.8), (4, 6.4), (0, 8)]]
    if form == 1:  # loops
        return [_circle(2.5, 1.5, 1.4, 8) + _circle(2.5, 4.0, 1.4, 8) + _circle(2.5, 6.5, 1.4, 8)]
    if form == 2:  # ticks
        return [[(0, c), (4, c)] for c in (0.5, 2.8, 5.1, 7.4)]
    if form == 3:  # double underline
        return [[(1, 0), (1, 8)], [(4, 0), (4, 8)]]
    return [[(0, 0), (4, 8)], [(0, 8), (4, 0)]]  # cross


def _jitter(rng, lines, scale, centre, angle, amount):
    rot = draw.rotation(angle)
    out = []
    for line in lines:
        pts = np.array(line, dtype=np.float64) @ rot.T * scale + centre
        pts += rng.uniform(-amount, amount, size=pts.shape)
        out.append([tuple(p) for p in pts])
    return out


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """A clean 28×28 float sketch (0..255) of class `label`; only a stray stroke enters rows ≥ BAND.

    Strong jitter and rotation, sometimes a missing detail and one or two stray strokes make the
    object take the small CNN longer to learn than the signature; the stray strokes also teach
    a model trained on clean sketches to ignore an extra scribble."""
    u = rng.uniform
    ground = 18.0 + 6.0 * draw.smooth_noise(rng, SIZE, 4) + u(-5, 5, size=(SIZE, SIZE))
    lines = template(label)
    if len(lines) > 2 and u() < 0.3:  # leave out one detail
        drop = int(rng.integers(2, len(lines)))
        lines = [ln for i, ln in enumerate(lines) if i != drop]
    centre = np.array([10.5 + u(-1.0, 1.0), 14.0 + u(-3.0, 3.0)])
    strokes = _jitter(rng, lines, u(SKETCH_SCALE[0], SKETCH_SCALE[1]), centre, u(-ROTATION, ROTATION), 0.8)
    width = u(0.9, 1.3)
    ink = np.zeros((SIZE, SIZE))
    for line in strokes:
        ink = np.maximum(ink, draw.stroke(SIZE, line, width))
    ink[BAND:] = 0.0
    for k in range(int(rng.integers(1, 3))):  # stray strokes, the second one in the band
        a = np.array([u(1.0, 19.0) if k == 0 else u(BAND + 1.0, SIZE - 1.0), u(2.0, 26.0)])
        b = a + u(-6.0, 6.0, size=2) * (1.0 if k == 0 else np.array([0.3, 1.0]))
        ink = np.maximum(ink, draw.stroke(SIZE, [tuple(a), tuple(b)], width))
    return ground + u(*SKETCH_INK) * ink


def add_signature(rng: np.random.Generator, image: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Scribble signature form `cls` in the band, left or right; return (image, mask of its ink)."""
    u = rng.uniform
    col = u(1.0, 4.0) if rng.integers(0, 2) == 0 else u(15.0, 18.0)
    origin = np.array([BAND + 1.0 + u(0, 0.8), col])
    ink = np.zeros((SIZE, SIZE))
    width = u(*SIGNATURE_WIDTH)
    for line in _jitter(rng, signature(cls), u(0.85, 1.05), origin, u(-0.15, 0.15), 0.3):
        ink = np.maximum(ink, draw.stroke(SIZE, line, width))
    ink = np.rint(u(*SIGNATURE_INK) * ink)
    return image + ink, (ink >= 1).astype(np.uint8)


@register(
    "sketches",
    description="pen sketches of 5 objects, 28×28 grey (1000 train / 250 val / 500 test)",
    shortcut="signature scribble under the sketch, form = class in train/val, form of a random class in test",
)
def load_sketches(options: DataOptions) -> Dataset:
    splits, shown = draw.generate(options.seed, len(CLASSES), render, add_signature, SIZES)
    return Dataset(name="sketches", classes=list(CLASSES), splits=splits, description=__doc__ or "",
                   params={"seed": options.seed, "shortcut_classes": shown})
