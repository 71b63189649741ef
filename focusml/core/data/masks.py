"""Masks as training sees them (docs/methods.md): the annotation budget and corruptions, then augmentation.

`annotate` acts once on the training split before training: `--mask-budget` keeps the masks of a
fixed, seeded choice of N annotated images (the others become all-zero: unannotated) and
`--mask-corruption` makes the kept masks imperfect (partial, shifted, dilated), for studies of
how many and how good masks a method needs.

Augmentation (dilate, jitter, scale, blur, keep_fraction) acts on float masks (N×H×W, values in
[0, 1]) of one batch and draws its randomness from the given `torch.Generator`, so a run is
reproducible from its seed. `keep_fraction` is a property of the training image, not of the
batch: which images keep their mask is fixed by (seed, image index); unlike `--mask-budget` it is a
share of whatever masks the batch carries, not a fixed count of annotated images.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from focusml import FocusmlError
from focusml.core.data.base import Split, annotated
from focusml.core.data.stream import Rows
from focusml.core.options import AUGMENT_OPTIONS, declared, option


@declared(AUGMENT_OPTIONS)
class MaskAugment:
    """Mask augmentation of docs/methods.md, applied per batch to the masks of mask-based methods: dilate and
    jitter in pixels, a scale factor drawn from [1 − scale, 1 + scale], a Gaussian blur sigma in pixels (> 0:
    a soft mask in [0, 1]), the share of training images whose mask is kept. Fields: `options.AUGMENT_OPTIONS`."""

    def validate(self) -> "MaskAugment":
        """Each field as its declared type and in its bounds (FocusmlError naming the flag)."""
        for o in AUGMENT_OPTIONS:
            setattr(self, o.name, o.check(getattr(self, o.name)))
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


def examples(masks, cfg: MaskAugment, seed: int = 0, n: int = 8, draws: int = 3
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows of `masks` (uint8 N×H×W) to show, and `draws` augmented versions of them.

    Picks the first `n` annotated rows (`masks` may be streamed); each draw uses its own generator
    (seed + draw), so the figure is reproducible and shows the spread of the augmentation.
    """
    index = torch.nonzero(annotated(masks)).flatten()[:n]
    m = masks[index].float()
    return index, [augment(m, index, cfg, torch.Generator().manual_seed(seed + d), seed) for d in range(draws)]


# -- the annotations a run trains with: budget and corruption (applied once, before training) ------

CORRUPTIONS = option("mask_corruption").choices  # declared with the option (focusml.core.options)
#: per corruption: (default strength, lowest, highest, what the strength means)
CORRUPTION_STRENGTH = {
    "partial": (0.5, 0.0, 1.0, "the share of each mask's area that is kept, in (0, 1]"),
    "shifted": (0.25, 0.0, 1.0, "the shift as a share of the image side, in (0, 1]"),
    "dilated": (0.1, 0.0, 0.5, "the margin added as a share of the image side, in (0, 0.5]"),
}
_BUDGET_SALT, _CORRUPT_SALT = 7919, 104729  # keep these draws apart from the training generator's


def parse_budget(value) -> int | float | None:
    """`--mask-budget`: None/"all" → every annotated image; a whole number N ≥ 1 → N images; a share in (0, 1)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all", "none")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if 0 < number < 1:
        return number
    if number >= 1 and number == int(number):
        return int(number)
    raise FocusmlError(f"--mask-budget is {value!r}; give a whole number N ≥ 1 of annotated training images, a share "
                       "in (0, 1), or all.")


def corruption_strength(kind: str, strength: float | None) -> float | None:
    """The strength `kind` uses (its default when None); FocusmlError for an unknown kind or a bad value."""
    if kind not in CORRUPTIONS:
        raise FocusmlError(f"--mask-corruption is {kind!r}; choose one of {', '.join(CORRUPTIONS)}.")
    if kind == "none":
        if strength is not None:
            raise FocusmlError("--corruption-strength needs --mask-corruption partial, shifted or dilated.")
        return None
    default, low, high, meaning = CORRUPTION_STRENGTH[kind]
    if strength is None:
        return default
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        strength = math.nan
    if not (low < strength <= high):
        raise FocusmlError(f"--corruption-strength is {strength} for --mask-corruption {kind}; it must be {meaning}.")
    return strength


def budget_rows(masks, budget: int | float | None, seed: int) -> torch.Tensor:
    """Rows (sorted) of the annotated images that keep their mask: a fixed draw from (seed, budget).

    A share f keeps round(f · annotated) images (at least one); N larger than the annotated count keeps them all.
    The draw is a seeded permutation of the annotated rows, so a larger budget keeps a superset of a smaller one.
    """
    rows = torch.nonzero(annotated(masks)).flatten()
    if budget is None:
        return rows
    n = max(1, round(budget * len(rows))) if isinstance(budget, float) else int(budget)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + _BUDGET_SALT)
    order = torch.randperm(len(rows), generator=gen)
    return rows[order[:n]].sort().values


def corrupt(masks: torch.Tensor, kind: str, strength: float | None, seed: int, index: torch.Tensor | None = None,
            n: int | None = None) -> torch.Tensor:
    """Imperfect annotations (uint8 N×H×W in, same out), fixed by the seed: what a sloppy annotator draws.

    - `partial`: each mask keeps a share `strength` of its pixels, the part on one side of a straight cut at a
      random angle (an annotator who marked only part of the region);
    - `shifted`: each mask moves, shape unchanged, by `strength` × the image side along each axis in random
      directions, wrapping at the border (the right shape in the wrong place);
    - `dilated`: each mask grows by `strength` × the image side in pixels, at least one (an over-wide mask).

    All-zero masks (unannotated images) stay all-zero; an annotated one stays annotated. `masks` may be
    the rows `index` of a split of `n` rows (a streamed split, corrupted batch by batch): each row gets
    the same draw as when the whole split is corrupted at once.
    """
    if kind == "none":
        return masks
    strength = corruption_strength(kind, strength)
    _, h, w = masks.shape
    index = torch.arange(len(masks)) if index is None else index
    n = len(masks) if n is None else n
    gen = torch.Generator().manual_seed(seed * 1_000_003 + _CORRUPT_SALT)
    out = masks.clone()
    marked = masks.flatten(1).amax(1) > 0
    if kind == "dilated":
        pixels = max(1, round(strength * min(h, w)))
        return dilate(masks.float(), pixels).to(masks.dtype)
    if kind == "shifted":
        dy, dx = max(1, round(strength * h)), max(1, round(strength * w))
        signs = torch.randint(0, 2, (n, 2), generator=gen) * 2 - 1
        for i in torch.nonzero(marked).flatten().tolist():
            j = int(index[i])
            out[i] = torch.roll(masks[i], (int(signs[j, 0]) * dy, int(signs[j, 1]) * dx), dims=(0, 1))
        return out
    angles = torch.rand(n, generator=gen) * 2 * math.pi  # partial
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    for i in torch.nonzero(marked).flatten().tolist():
        on = masks[i] > 0
        angle = angles[int(index[i])]
        along = (ys * math.sin(angle) + xs * math.cos(angle))[on]
        keep = max(1, math.ceil(strength * len(along)))
        chosen = torch.zeros(len(along), dtype=torch.bool)  # the `keep` pixels furthest along the direction
        chosen[along.argsort(descending=True, stable=True)[:keep]] = True
        row = torch.zeros_like(masks[i])
        row[on] = masks[i][on] * chosen.to(masks.dtype)
        out[i] = row
    return out


def annotate(data, split: str, budget=None, corruption: str = "none", strength: float | None = None,
             seed: int = 0):
    """`data` with the masks of `split` limited to `budget` annotated images and corrupted; (data, annotated count).

    Applied once to the training split before training (the rest of the dataset is untouched: validation
    masks still choose the checkpoint, test masks still measure). Without a budget or a corruption the
    same dataset object comes back.
    """
    part = data.split(split)
    budget = parse_budget(budget)
    rows = budget_rows(part.masks, budget, seed)
    if budget is None and corruption == "none":
        return data, len(rows)
    if part.streamed:
        masks = Annotations(part.masks, rows, corruption, strength, seed)
    else:
        masks = torch.zeros_like(part.masks)
        masks[rows] = part.masks[rows]
        masks = corrupt(masks, corruption, strength, seed)
    splits = dict(data.splits)
    splits[split] = Split(part.images, masks, part.labels)
    return dataclasses.replace(data, splits=splits), len(rows)


class Annotations(Rows):
    """The training masks of a streamed split under a budget and a corruption, applied to each batch as it is
    read: row for row what `annotate` makes of an in-memory split."""

    def __init__(self, masks: Rows, rows: torch.Tensor, corruption: str, strength: float | None, seed: int):
        super().__init__(masks.shape)
        self.masks, self.corruption, self.strength, self.seed = masks, corruption, strength, seed
        self.keep = torch.zeros(len(masks), dtype=torch.bool)
        self.keep[rows] = True

    def read(self, index: torch.Tensor) -> torch.Tensor:
        m = self.masks[index] * self.keep[index].view(-1, 1, 1).to(torch.uint8)
        return corrupt(m, self.corruption, self.strength, self.seed, index=index, n=len(self))

    def annotated(self) -> torch.Tensor:
        return self.masks.annotated() & self.keep  # a corruption never empties a mask
