"""Mask augmentation (docs/methods.md): dilate, jitter, scale, blur, keep_fraction.

All operations act on float masks (N×H×W, values in [0, 1]) of one batch and draw their
randomness from the given `torch.Generator`, so a run is reproducible from its seed.
`keep_fraction` is a property of the training image, not of the batch: which images keep their
mask is fixed by (seed, image index), emulating a user who annotated only part of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from focusml import FocusmlError


@dataclass
class MaskAugment:
    """Mask augmentation of docs/methods.md, applied per batch to the masks of mask-based methods."""

    dilate: int = 0  # pixels, ≥ 0
    jitter: int = 0  # max random shift in pixels, ≥ 0
    scale: float = 0.0  # random scale factor in [1 − scale, 1 + scale], 0 ≤ scale < 1
    blur: float = 0.0  # Gaussian sigma in pixels; > 0 gives a soft mask in [0, 1]
    keep_fraction: float = 1.0  # share of training images whose mask is kept, in [0, 1]

    def validate(self) -> "MaskAugment":
        checks = [
            ("dilate", self.dilate, self.dilate >= 0, "≥ 0 pixels"),
            ("jitter", self.jitter, self.jitter >= 0, "≥ 0 pixels"),
            ("scale", self.scale, 0 <= self.scale < 1, "in [0, 1): masks are scaled by a factor in [1−scale, 1+scale]"),
            ("blur", self.blur, self.blur >= 0, "a Gaussian sigma ≥ 0"),
            ("keep-fraction", self.keep_fraction, 0 <= self.keep_fraction <= 1, "a share in [0, 1]"),
        ]
        for name, value, ok, want in checks:
            if isinstance(value, float) and math.isnan(value) or not ok:
                raise FocusmlError(f"--{name} is {value}; it must be {want}.")
        return self

    @property
    def active(self) -> bool:
        return self != MaskAugment()


def dilate(m: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow masks by `pixels` in every direction (square structuring element)."""
    if pixels <= 0:
        return m
    k = 2 * pixels + 1
    return F.max_pool2d(m[:, None], k, stride=1, padding=pixels)[:, 0]


def jitter(m: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each mask by an integer offset in [−max_shift, max_shift] per axis, zero-filled."""
    if max_shift <= 0:
        return m
    n, h, w = m.shape
    out = torch.zeros_like(m)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, yd, xd] = m[i, ys, xs]
    return out


def scale(m: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Scale each mask about its own centre of mass by a factor drawn from [1−amount, 1+amount]."""
    if amount <= 0:
        return m
    n, h, w = m.shape
    factors = 1 + (torch.rand(n, generator=gen) * 2 - 1) * amount
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    mass = m.flatten(1).sum(1).clamp_min(1e-6)
    cy = (m.sum(2) * ys).sum(1) / mass
    cx = (m.sum(1) * xs).sum(1) / mass
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / factors
    theta[:, 1, 1] = 1 / factors
    theta[:, 0, 2] = cx - cx / factors
    theta[:, 1, 2] = cy - cy / factors
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=True)
    out = F.grid_sample(m[:, None], grid, mode="nearest", align_corners=True)[:, 0]
    empty = m.flatten(1).sum(1) == 0
    out[empty] = 0
    return out


def blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur, then rescale each mask so its peak stays 1: a soft mask in [0, 1].

    The image border is padded by replication, so a mask touching the border (a decoy in a
    corner) is not dimmed there as if the region ended at the frame.
    """
    if sigma <= 0:
        return m
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=m.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(m[:, None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))[:, 0]
    peak = x.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (x / peak).clamp(0, 1)


def kept(index: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Boolean per row: does training image `index` keep its mask? Fixed by (seed, index)."""
    if fraction >= 1:
        return torch.ones(len(index), dtype=torch.bool)
    # A fixed pseudo-random number per image index (a multiplicative hash), not per batch.
    h = (index.long() * 2654435761 + seed * 40503 + 12345) % 1000003
    return (h.float() / 1000003) < fraction


def augment(m: torch.Tensor, index: torch.Tensor, cfg: MaskAugment, gen: torch.Generator, seed: int = 0) -> torch.Tensor:
    """Apply keep_fraction, dilate, scale, jitter and blur, in that order, to a batch of masks."""
    if not cfg.active:
        return m
    m = m * kept(index, cfg.keep_fraction, seed).view(-1, 1, 1).to(m.dtype)
    m = dilate(m, cfg.dilate)
    m = scale(m, cfg.scale, gen)
    m = jitter(m, cfg.jitter, gen)
    return blur(m, cfg.blur)


def examples(masks: torch.Tensor, cfg: MaskAugment, seed: int = 0, n: int = 8, draws: int = 3
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows of `masks` (uint8 N×H×W) to show, and `draws` augmented versions of them.

    Picks the first `n` annotated rows; each draw uses its own generator (seed + draw), so the
    figure is reproducible and shows the spread of the augmentation.
    """
    index = torch.nonzero(masks.flatten(1).sum(1) > 0).flatten()[:n]
    m = masks[index].float()
    return index, [augment(m, index, cfg, torch.Generator().manual_seed(seed + d), seed) for d in range(draws)]
