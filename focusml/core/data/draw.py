"""NumPy geometry for the built-in generators: anti-aliased strokes, discs, polygons, bumps, glyphs.

Why not PIL's ImageDraw or fonts: their rasterisers change between Pillow versions and font
files differ between machines. Here every per-pixel operation is +, −, ×, ÷, sqrt or a
comparison on float64 (exactly rounded under IEEE-754, so identical everywhere); the few
angles go through `np.cos`/`np.sin` on scalars and are rounded to 1e-9 before use. Random
numbers come only from `Generator.uniform`/`integers` (PCG64, platform independent).

Coverage maps are floats in [0, 1] on a size×size grid whose pixel (r, c) has its centre at
(r + 0.5, c + 0.5); points are given as (row, col).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from focusml.core.data.base import Split


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of pixel centres (cached, read-only)."""
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    rr.flags.writeable = False
    cc.flags.writeable = False
    return rr, cc


def rotation(angle: float) -> np.ndarray:
    """2×2 rotation matrix for (row, col) points, rounded so it is the same on every machine."""
    c, s = np.round(np.cos(angle), 9), np.round(np.sin(angle), 9)
    return np.array([[c, -s], [s, c]])


def _segment_dist(rr, cc, a, b) -> np.ndarray:
    ar, ac = a
    dr, dc = b[0] - ar, b[1] - ac
    den = dr * dr + dc * dc
    t = np.zeros_like(rr) if den == 0 else np.clip(((rr - ar) * dr + (cc - ac) * dc) / den, 0.0, 1.0)
    pr, pc = rr - (ar + t * dr), cc - (ac + t * dc)
    return np.sqrt(pr * pr + pc * pc)


def polyline_dist(size: int, points, closed: bool = False) -> np.ndarray:
    """Distance of every pixel centre to a polyline (list of (row, col))."""
    rr, cc = grid(size)
    pts = [np.asarray(p, dtype=np.float64) for p in points]
    if closed:
        pts = pts + [pts[0]]
    d = np.full((size, size), np.inf)
    for a, b in zip(pts[:-1], pts[1:]):
        d = np.minimum(d, _segment_dist(rr, cc, a, b))
    return d


def stroke(size: int, points, width: float = 1.0, closed: bool = False) -> np.ndarray:
    """Coverage of a polyline drawn with a pen of `width` pixels (1-pixel linear anti-aliasing).

    Only the polyline's bounding box (grown by the pen) is computed; the rest stays 0."""
    pts = np.asarray(points, dtype=np.float64)
    reach = width / 2 + 0.5
    r0, c0 = (max(0, int(np.floor(v - reach - 0.5))) for v in pts.min(axis=0))
    r1, c1 = (min(size, int(np.ceil(v + reach + 0.5))) for v in pts.max(axis=0))
    out = np.zeros((size, size))
    if r0 >= r1 or c0 >= c1:
        return out
    rr, cc = grid(size)
    rr, cc = rr[r0:r1, c0:c1], cc[r0:r1, c0:c1]
    seq = [p for p in pts] + ([pts[0]] if closed else [])
    d = np.full(rr.shape, np.inf)
    for a, b in zip(seq[:-1], seq[1:]):
        d = np.minimum(d, _segment_dist(rr, cc, a, b))
    out[r0:r1, c0:c1] = np.clip(reach - d, 0.0, 1.0)
    return out


def disc(size: int, centre, radius: float) -> np.ndarray:
    rr, cc = grid(size)
    d = np.sqrt((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2)
    return np.clip(radius + 0.5 - d, 0.0, 1.0)


def polygon(size: int, points) -> np.ndarray:
    """Coverage of a filled simple polygon (even-odd rule), anti-aliased by distance to its edges."""
    rr, cc = grid(size)
    pts = [np.asarray(p, dtype=np.float64) for p in points]
    inside = np.zeros((size, size), dtype=bool)
    for (r1, c1), (r2, c2) in zip(pts, pts[1:] + pts[:1]):
        crosses = (r1 > rr) != (r2 > rr)
        if r2 != r1:
            c_at = c1 + (rr - r1) * (c2 - c1) / (r2 - r1)
            inside ^= crosses & (cc < c_at)
    d = polyline_dist(size, pts, closed=True)
    return np.clip(np.where(inside, 0.5 + d, 0.5 - d), 0.0, 1.0)


def ellipse(size: int, centre, radii, width: float | None = None) -> np.ndarray:
    """Filled ellipse (width None) or its outline; distance approximated by scaling to a circle."""
    rr, cc = grid(size)
    a, b = radii
    k = min(a, b)
    d = (np.sqrt(((rr - centre[0]) / a) ** 2 + ((cc - centre[1]) / b) ** 2) - 1.0) * k
    if width is None:
        return np.clip(0.5 - d, 0.0, 1.0)
    return np.clip(width / 2 + 0.5 - np.abs(d), 0.0, 1.0)


def bump(size: int, centre, radius: float) -> np.ndarray:
    """Smooth compact bump (1 − (d/r)²)², 1 at the centre, 0 beyond `radius`."""
    rr, cc = grid(size)
    q = ((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (radius * radius)
    return np.where(q < 1.0, (1.0 - q) ** 2, 0.0)


@lru_cache(maxsize=16)
def upscale_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row-stochastic bilinear interpolation matrix (align_corners=False semantics; cached, read-only)."""
    r = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        w = src - lo
        r[i, lo] += 1 - w
        r[i, hi] += w
    r.flags.writeable = False
    return r


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Uniform noise in [−1, 1] on a cells×cells grid, bilinearly upscaled to size×size."""
    r = upscale_matrix(cells, size)
    return r @ rng.uniform(-1.0, 1.0, size=(cells, cells)) @ r.T


# 5×5 bitmaps of the letters used for hospital tokens (no font files: identical everywhere).
GLYPHS = {
    "A": [".###.", "#...#", "#####", "#...#", "#...#"],
    "B": ["####.", "#...#", "####.", "#...#", "####."],
    "C": [".####", "#....", "#....", "#....", ".####"],
    "L": ["#....", "#....", "#....", "#....", "#####"],
    "R": ["####.", "#...#", "####.", "#..#.", "#...#"],
}


def glyph(letter: str) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in GLYPHS[letter]], dtype=bool)


def paste_at(image: np.ndarray, patch, corner: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste a square `patch` (k×k, or a per-channel value broadcast over it) in `corner`.

    Corners: 0 top left, 1 top right, 2 bottom left, 3 bottom right. `image` is H×W or C×H×W;
    `patch` is a k×k array or a pair (value, k). Returns a copy of the image and the H×W uint8
    mask that is 1 exactly on the patch.
    """
    value, k = patch if isinstance(patch, tuple) else (patch, patch.shape[-1])
    size = image.shape[-1]
    r0 = 0 if corner in (0, 1) else size - k
    c0 = 0 if corner in (0, 2) else size - k
    out = image.copy()
    out[..., r0 : r0 + k, c0 : c0 + k] = value
    mask = np.zeros(image.shape[-2:], np.uint8)
    mask[r0 : r0 + k, c0 : c0 + k] = 1
    return out, mask


def paste_corner(rng: np.random.Generator, image: np.ndarray, patch) -> tuple[np.ndarray, np.ndarray]:
    """`paste_at` a corner drawn uniformly from `rng` (one draw per call)."""
    return paste_at(image, patch, int(rng.integers(0, 4)))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_split(images: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> Split:
    """(N,H,W) or (N,C,H,W) uint8 images, (N,H,W) masks, labels → Split."""
    imgs = images[:, None] if images.ndim == 3 else images
    return Split(torch.from_numpy(np.ascontiguousarray(imgs)), torch.from_numpy(np.ascontiguousarray(masks)),
                 torch.from_numpy(labels.astype(np.int64)))


def split_rng(seed: int, split: str, purpose: str) -> np.random.Generator:
    """An independent generator per (seed, split, purpose): tuning one part leaves the others as they were."""
    return np.random.default_rng([seed, *(ord(ch) for ch in f"{split}/{purpose}")])


def balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n labels, each class ⌊n/k⌋ or ⌈n/k⌉ times, in random order."""
    return rng.permutation(np.arange(n) % k)


def shortcut_classes(rng: np.random.Generator, labels: np.ndarray, k: int, follow: float | None) -> np.ndarray:
    """The class each image's shortcut shows: the label with probability `follow`, else another
    class drawn uniformly; `follow=None` draws it uniformly from all k classes, independent of the label."""
    n = len(labels)
    if follow is None:
        return rng.integers(0, k, size=n)
    other = (labels + rng.integers(1, k, size=n)) % k
    keep = rng.uniform(size=n) < follow
    return np.where(keep, labels, other)


def generate(seed: int, k: int, render, add_shortcut, sizes: dict[str, int],
             follow: float = 1.0) -> tuple[dict[str, Split], dict[str, np.ndarray]]:
    """Every split of a built-in dataset, and the class each image's shortcut shows, per split.

    `render(rng, label) -> float image` draws the clean image (H×W or C×H×W, values 0..255);
    `add_shortcut(rng, image, cls) -> (float image, uint8 mask)` puts the shortcut of class `cls`
    on it and returns the mask of exactly the pixels it painted. `train`/`val` and
    `test_confounded` show the label's shortcut with probability `follow`; `test` draws it
    independently of the label. `test`, `test_confounded` and `test_clean` share their images.
    """
    splits: dict[str, Split] = {}
    shown_by_split: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        n = sizes[split]
        labels = balanced_labels(split_rng(seed, split, "labels"), n, k)
        rng = split_rng(seed, split, "images")
        clean = np.stack([render(rng, int(y)) for y in labels])
        h, w = clean.shape[-2:]
        splits[f"{split}_clean"] = make_split(to_uint8(clean), np.zeros((n, h, w), np.uint8), labels)
        for variant in (("test", "test_confounded") if split == "test" else (split,)):
            srng = split_rng(seed, variant, "shortcut")
            shown = shortcut_classes(srng, labels, k, None if variant == "test" else follow)
            shown_by_split[variant] = shown
            pairs = [add_shortcut(srng, img, int(c)) for img, c in zip(clean, shown)]
            splits[variant] = make_split(to_uint8(np.stack([p[0] for p in pairs])), np.stack([p[1] for p in pairs]),
                                         labels)
    return splits, shown_by_split
