"""`xray-tokens`: synthetic radiograph-like images; label = a subtle opacity, shortcut = a hospital token.

Each 28×28 greyscale image is a chest-radiograph caricature drawn with NumPy: a dim torso, two
dark lung fields crossed by faint ribs, a bright spine and a heart shadow, smooth and grainy
noise, all with random sizes, positions and exposure. Label `opacity` adds a faint haze to the
lower part of one lung (OPACITY grey levels below a soft border, like an effusion); `normal`
images have none. The haze is dimmer than the spine, so a network has to compare the lungs
with their surroundings; a small CNN trained on clean images learns it within a few epochs.

The shortcut is a 7×7 hospital token in a random corner: a dark plate with a 5×5 letter, `A`
(hospital A) or `B` (hospital B). Hospital B sends most of the opacity cases: in
train/val/test_confounded the token shows the label's hospital with probability FOLLOW (98%)
and the other one otherwise; in `test` the hospital is drawn independently of the label. The
plate replaces the pixels under it, so the mask is exactly its 49 pixels; clean splits are the
same images without it.

Why these settings: a bright plate reads as "opacity" to a model that never saw tokens (the
upper bound's test accuracy fell), and a stronger haze is learnt from the 2% of
counter-examples by the baseline too; a dark plate with a mid-grey letter and a haze of 30–45
grey levels keep both effects small (docs/benchmarks.md has the numbers). The soft tissue is kept
dim: with a bright body the small CNN at lr 3e-3 often never left chance on this task.
"""

from __future__ import annotations

import numpy as np

from focusml.core.data import draw
from focusml.core.data.base import Dataset
from focusml.core.data.registry import DataOptions, register

SIZE = 28
TOKEN = 7
CLASSES = ["normal", "opacity"]
LETTERS = ("A", "B")  # the hospital whose token an image of class c mostly carries
FOLLOW = 0.98
OPACITY = (30.0, 45.0)  # grey levels the opacity adds to the lung below its upper border
BODY, LUNG = 25.0, 20.0  # soft-tissue brightness over the background, and how much darker the lungs are
EXPOSURE = (0.9, 1.1)
PLATE = (8.0, 140.0)  # grey levels of the token's plate and letter
SIZES = {"train": 1000, "val": 250, "test": 500}


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """A clean 28×28 float radiograph (0..255); with label 1 a faint opacity in one lung."""
    u = rng.uniform
    cy, cx = 14.5 + u(-1, 1), 14.0 + u(-1, 1)
    exposure = u(*EXPOSURE)
    img = 10.0 + BODY * exposure * draw.ellipse(SIZE, (cy, cx), (u(12.5, 14.0), u(10.5, 12.0)))
    lungs = []
    for side in (-1, 1):
        lc = (cy - 1.5 + u(-0.7, 0.7), cx + side * u(4.6, 5.4))
        radii = (u(7.0, 8.5), u(3.4, 4.2))
        lungs.append((lc, radii))
        img -= LUNG * exposure * draw.ellipse(SIZE, lc, radii)
    img += 40.0 * exposure * draw.stroke(SIZE, [(cy - 11, cx), (cy + 12, cx)], width=u(2.0, 3.0))
    img += 25.0 * exposure * draw.ellipse(SIZE, (cy + 4 + u(-1, 1), cx - 2 + u(-1, 1)), (u(3.5, 4.5), u(3.5, 5.0)))
    for k in range(4):
        row = cy - 7.0 + 3.6 * k + u(-0.6, 0.6)
        for side in (-1, 1):
            bend = u(1.0, 2.2)
            pts = [(row, cx + side * 1.5), (row - bend, cx + side * 5.5), (row + 0.6, cx + side * 10.0)]
            img += 14.0 * exposure * draw.stroke(SIZE, pts, width=1.0)
    img += 9.0 * draw.smooth_noise(rng, SIZE, 7) + u(-7, 7, size=(SIZE, SIZE))
    if label == 1:  # haze over the lower part of one lung, rising over 1.5 px at its upper border
        lc, radii = lungs[int(rng.integers(0, 2))]
        rows, _ = draw.grid(SIZE)
        border = lc[0] + u(-0.2, 0.3) * radii[0]
        img += u(*OPACITY) * draw.ellipse(SIZE, lc, radii) * np.clip((rows - border) / 1.5, 0.0, 1.0)
    return img


def add_token(rng: np.random.Generator, image: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint the 7×7 token of hospital LETTERS[cls] in a random corner; return (image, mask)."""
    plate = np.full((TOKEN, TOKEN), PLATE[0])
    plate[1:6, 1:6][draw.glyph(LETTERS[cls])] = PLATE[1]
    return draw.paste_corner(rng, image, plate)


@register(
    "xray-tokens",
    description="synthetic 28×28 radiographs, normal vs a faint lung opacity (1000 train / 250 val / 500 test), grey",
    shortcut="7×7 letter token (hospital A/B) in a corner, follows the label in 98% of train/val, independent in test",
)
def load_xray_tokens(options: DataOptions) -> Dataset:
    splits, shown = draw.generate(options.seed, len(CLASSES), render, add_token, SIZES, follow=FOLLOW)
    return Dataset(name="xray-tokens", classes=list(CLASSES), splits=splits, description=__doc__ or "",
                   params={"seed": options.seed, "shortcut_classes": shown})
