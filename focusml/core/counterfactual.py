"""Counterfactual images from masks alone: can the model still be fooled by the shortcut?

For an image `x` with mask `m`, a donor `x_d` of another class from the same split with mask
`m_d` gives

    x_cf = x·(1 − u) + s·u

- small masks (the shortcut is a patch, a token, a scribble): u = max(m, m_d), s = x_d. Whatever
  either mask marks now comes from the donor, its shortcut included; every other pixel is untouched;
- a mask covering more than half of the image (a background) leaves the object: u = m there, so
  the image's object is never covered, and s is the donor's background only (`background_source`:
  where the donor's mask does not mark a pixel, its object, s takes marked content from elsewhere
  in the donor), so the donor's object is never pasted in; the object's rim, part object and part
  background, is unmixed and put together again on the donor's background (`swap_background`).

A model that reads the shortcut follows the donor, one that reads the object keeps its answer.
`acc_cf` is the accuracy on `x_cf` against the original label, `flip` the share of predictions
that change from `x` to `x_cf`. Both need nothing but masks, so they work on any dataset that has
them, and on the confounded `val` split they see the shortcut where `acc/val` cannot.
`construction="union"` is u = max(m, m_d), s = x_d for every mask (the construction before,
kept for comparison: on a background it covers the image's object with the donor's background
and pastes the donor's object in, so even a model that reads only the object is fooled).

Choices (docs/methods.md states them for users):
- the donor is drawn uniformly, with a fixed seed, among the split's images of another class
  that have a non-empty mask (among all images of another class when none has one), so every
  run on a dataset is judged on the same counterfactual set;
- soft masks (values in (0, 1)) blend the two images; the result is rounded back to uint8 like
  the stored images;
- only annotated images (a non-empty mask of their own) count in both metrics: an unannotated
  image would keep its own shortcut, unmarked, next to the donor's, so its x_cf says nothing;
  with no annotated image at all (or a single class) they are NaN. `Counterfactuals.valid`
  marks the rows counted (the run logs their number on `val` and `test` as `cf_images_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from focusml.core.data.base import Split, annotated
from focusml.core.data.stream import Rows

SEED = 0


def donors(labels: torch.Tensor, masks, seed: int = SEED) -> torch.Tensor:
    """For each row, the row of a donor of another class (-1 when the split has a single class)."""
    gen = torch.Generator().manual_seed(seed)
    has_mask = annotated(masks)
    out = torch.full((len(labels),), -1, dtype=torch.long)
    for cls in labels.unique().tolist():
        rows = torch.nonzero(labels == cls).flatten()
        other = labels != cls
        pool = torch.nonzero(other & has_mask).flatten()
        if len(pool) == 0:
            pool = torch.nonzero(other).flatten()
        if len(pool):
            out[rows] = pool[torch.randint(len(pool), (len(rows),), generator=gen)]
    return out


@dataclass
class Counterfactuals:
    """The counterfactual version of a split: `split.images` are the `x_cf`, labels the originals."""

    split: Split
    donors: torch.Tensor  # row of each image's donor, -1 if none
    valid: torch.Tensor  # bool: the image has its own mask and a donor, counted in the metrics


LARGE = 0.5  # a mask covering more of its image than this is a background: what it leaves is the object
RIM = 0.04  # the object's rim: the band along the unmarked region that `erode` takes off, per image side


def fill(images: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """N×C×H×W float images with their unknown pixels (known N×1×H×W = 0) filled smoothly by push-pull.

    Each coarser level holds the average of the known pixels under it; going back up, a pixel keeps
    its known share and takes the rest from the level above (bilinear): no streaks, no edges."""
    if min(images.shape[-2:]) <= 1:
        return images
    x, w = F.avg_pool2d(images * known, 2, ceil_mode=True), F.avg_pool2d(known, 2, ceil_mode=True)
    coarse = fill(x / w.clamp_min(1e-6), (w > 0).float())
    up = F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return images * known + up * (1 - known)


def erode(masks: torch.Tensor) -> torch.Tensor:
    """N×H×W masks (> 0 = marked) without a band of ~4% of the image side along the unmarked region.

    A mask drawn on a background also marks the object's rim (its blurred, anti-aliased edge, part
    object, part background): the band is where that rim lies."""
    r = max(1, round(RIM * min(masks.shape[-2:])))
    return -F.max_pool2d(-(masks > 0).float()[:, None], 2 * r + 1, stride=1, padding=r)[:, 0] * masks.float()


def background_source(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """N×C×H×W float: each image's marked content, and for its unmarked pixels (its object) marked content
    from elsewhere in the same image.

    The marked region is first eroded (`erode`), so the object's rim is not taken as background. A
    hole pixel takes the pixel half an image away (across, down, diagonally: wrapped), the first that
    is marked, so the hole gets the background's own texture and no silhouette; what is left is
    filled by push-pull."""
    h, w = images.shape[-2:]
    known = (erode(masks) > 0).float()[:, None]
    out, have = images * known, known.bool()
    for shift in ((0, w // 2), (h // 2, 0), (h // 2, w // 2), (h // 4, w // 4), (-h // 4, w // 4)):
        take = ~have & torch.roll(known, shift, (2, 3)).bool()
        out = torch.where(take, torch.roll(images, shift, (2, 3)), out)
        have = have | take
    return torch.where(have, out, fill(images, known))


def is_large(masks: torch.Tensor) -> torch.Tensor:
    """Bool per row of N×H×W masks: does the mask cover more than half of its image (a background)?"""
    return masks.float().flatten(1).mean(1) > LARGE


def swap_background(images: torch.Tensor, masks: torch.Tensor, donor_bg: torch.Tensor) -> torch.Tensor:
    """Float N×C×H×W: each image's masked content replaced by its donor's background (`background_source`
    of the donor, given).

    The object's rim (the band `erode` leaves) mixes object and background, and a model reads the
    object's shape in it, so it is neither kept (it would keep the image's own background colour, a
    shortcut) nor overwritten (a jagged object): each rim pixel is unmixed, x = α·object + (1 − α)·own
    background, with both colours taken from its neighbourhood (push-pull), and put together again
    on the donor's background."""
    marked = (masks > 0).float()[:, None]
    core = (erode(masks) > 0).float()[:, None]
    rim = marked - core
    own_bg, thing = fill(images, core), fill(images, 1 - marked)
    d = thing - own_bg
    alpha = ((images - own_bg) * d).sum(1, keepdim=True) / (d.pow(2).sum(1, keepdim=True) + 1e-6)
    alpha = alpha.clamp(0, 1)
    return images * (1 - marked) + donor_bg * core + (alpha * thing + (1 - alpha) * donor_bg) * rim


def blend(images: torch.Tensor, masks: torch.Tensor, donor_images: torch.Tensor, donor_masks: torch.Tensor,
          has: torch.Tensor, construction: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(x_cf as uint8, the share of each pixel that changed) for rows of images, masks and their donors' rows
    (the module docstring's rule)."""
    m, md, x, xd = masks.float(), donor_masks.float(), images.float(), donor_images.float()
    keep = ~has.view(-1, 1, 1, 1)
    if construction == "union":
        u = torch.maximum(m, md)
        out = x * (1 - u[:, None]) + xd * u[:, None]
    else:
        large, large_d = (is_large(t).view(-1, 1, 1) for t in (m, md))
        # a small mask: the union, but never over the image's object when the donor's mask is a background
        u = torch.where(large_d, m, torch.maximum(m, md))
        donor_bg = background_source(xd, md) if bool((large | large_d).any()) else xd  # computed once
        source = torch.where(large_d[:, None], donor_bg, xd)
        out = x * (1 - u[:, None]) + source * u[:, None]
        if bool(large.any()):
            rows = large.flatten()
            out[rows] = swap_background(x[rows], m[rows], donor_bg[rows])
            u = torch.where(large, (m > 0).float(), u)
    out = torch.where(keep, x, out)
    return out.round().clamp(0, 255).to(torch.uint8), u * has.view(-1, 1, 1)


class Blended(Rows):
    """The x_cf of a streamed split, computed from the rows and their donors' rows when read."""

    def __init__(self, split: Split, src: torch.Tensor, has: torch.Tensor, construction: str):
        super().__init__(split.images.shape)
        self.split, self.src, self.has, self.construction = split, src, has, construction

    def read(self, index: torch.Tensor) -> torch.Tensor:
        s, src = self.split, self.src[index]
        return blend(s.images[index], s.masks[index], s.images[src], s.masks[src], self.has[index],
                     self.construction)[0]


def build(split: Split, seed: int = SEED, construction: str = "auto") -> Counterfactuals:
    """The x_cf of every row of `split` (read on demand if it is streamed); `construction="union"`: the one before."""
    d = donors(split.labels, split.masks, seed)
    has = d >= 0
    src = torch.where(has, d, torch.arange(len(d)))
    valid = has & split.annotated  # annotated images only (the module's docstring says why)
    if split.streamed:
        return Counterfactuals(Split(Blended(split, src, has, construction), split.masks, split.labels), d, valid)
    images, _ = blend(split.images, split.masks, split.images[src], split.masks[src], has, construction)
    return Counterfactuals(Split(images, split.masks, split.labels), d, valid)


def metrics(labels, preds, preds_cf, valid) -> dict[str, float]:
    """{'acc_cf', 'flip'} over the valid rows (NaN when there is none); arrays or tensors."""
    labels, preds, preds_cf, valid = (torch.as_tensor(a) for a in (labels, preds, preds_cf, valid))
    if not bool(valid.any()):
        return {"acc_cf": float("nan"), "flip": float("nan")}
    keep = valid.bool()
    return {"acc_cf": float((preds_cf[keep] == labels[keep]).double().mean()),
            "flip": float((preds_cf[keep] != preds[keep]).double().mean())}
