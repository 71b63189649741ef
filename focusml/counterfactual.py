"""Counterfactual images from masks alone: can the model still be fooled by the shortcut?

For an image `x` with mask `m`, a donor `x_d` of another class from the same split with mask
`m_d` gives

    x_cf = x·(1 − u) + x_d·u,   u = max(m, m_d)

Whatever either mask marks now comes from an image of another class (its shortcut included);
every other pixel is untouched. A model that reads the shortcut follows the donor, one that
reads the object keeps its answer. `acc_cf` is the accuracy on `x_cf` against the original
label, `flip` the share of predictions that change from `x` to `x_cf`. Both need nothing but
masks, so they work on any dataset that has them, and on the confounded `val` split they see
the shortcut where `acc/val` cannot.

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

from focusml.data.base import Split, annotated
from focusml.data.stream import Rows

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


def blend(images: torch.Tensor, masks: torch.Tensor, donor_images: torch.Tensor, donor_masks: torch.Tensor,
           has: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_cf as uint8, u) for rows of images and masks and their donors' rows."""
    m = masks.float()
    u = torch.maximum(m, donor_masks.float()) * has.view(-1, 1, 1)
    blended = images.float() * (1 - u[:, None]) + donor_images.float() * u[:, None]
    return blended.round().clamp(0, 255).to(torch.uint8), u


class Blended(Rows):
    """The x_cf of a streamed split, computed from the rows and their donors' rows when read."""

    def __init__(self, split: Split, src: torch.Tensor, has: torch.Tensor):
        super().__init__(split.images.shape)
        self.split, self.src, self.has = split, src, has

    def read(self, index: torch.Tensor) -> torch.Tensor:
        s, src = self.split, self.src[index]
        return blend(s.images[index], s.masks[index], s.images[src], s.masks[src], self.has[index])[0]


def build(split: Split, seed: int = SEED) -> Counterfactuals:
    """x_cf = x·(1 − u) + x_d·u with u = max(m, m_d) for every row of `split` (read on demand if it is streamed)."""
    d = donors(split.labels, split.masks, seed)
    has = d >= 0
    src = torch.where(has, d, torch.arange(len(d)))
    valid = has & split.annotated  # annotated images only (the module's docstring says why)
    if split.streamed:
        return Counterfactuals(Split(Blended(split, src, has), split.masks, split.labels), d, valid)
    images, _ = blend(split.images, split.masks, split.images[src], split.masks[src], has)
    return Counterfactuals(Split(images, split.masks, split.labels), d, valid)


def metrics(labels, preds, preds_cf, valid) -> dict[str, float]:
    """{'acc_cf', 'flip'} over the valid rows (NaN when there is none); arrays or tensors."""
    labels, preds, preds_cf, valid = (torch.as_tensor(a) for a in (labels, preds, preds_cf, valid))
    if not bool(valid.any()):
        return {"acc_cf": float("nan"), "flip": float("nan")}
    keep = valid.bool()
    return {"acc_cf": float((preds_cf[keep] == labels[keep]).double().mean()),
            "flip": float((preds_cf[keep] != preds[keep]).double().mean())}
