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
- an image whose `u` is empty (neither it nor its donor is annotated) would be unchanged, so it
  is left out of both metrics; with no such image at all they are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from focusml.data.base import Split

SEED = 0


def donors(labels: torch.Tensor, masks: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    """For each row, the row of a donor of another class (-1 when the split has a single class)."""
    gen = torch.Generator().manual_seed(seed)
    annotated = masks.flatten(1).amax(1) > 0
    out = torch.full((len(labels),), -1, dtype=torch.long)
    for cls in labels.unique().tolist():
        rows = torch.nonzero(labels == cls).flatten()
        other = labels != cls
        pool = torch.nonzero(other & annotated).flatten()
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
    valid: torch.Tensor  # bool: the image changed (u non-empty), counted in the metrics


def build(split: Split, seed: int = SEED) -> Counterfactuals:
    """x_cf = x·(1 − u) + x_d·u with u = max(m, m_d) for every row of `split`."""
    d = donors(split.labels, split.masks, seed)
    has = d >= 0
    src = torch.where(has, d, torch.arange(len(d)))
    m = split.masks.float()
    u = torch.maximum(m, m[src]) * has.view(-1, 1, 1)
    x = split.images.float()
    blended = x * (1 - u[:, None]) + x[src] * u[:, None]
    images = blended.round().clamp(0, 255).to(torch.uint8)
    valid = u.flatten(1).amax(1) > 0
    return Counterfactuals(Split(images, split.masks, split.labels), d, valid)


def metrics(labels, preds, preds_cf, valid) -> dict[str, float]:
    """{'acc_cf', 'flip'} over the valid rows (NaN when there is none); arrays or tensors."""
    labels, preds, preds_cf, valid = (torch.as_tensor(a) for a in (labels, preds, preds_cf, valid))
    if not bool(valid.any()):
        return {"acc_cf": float("nan"), "flip": float("nan")}
    keep = valid.bool()
    return {"acc_cf": float((preds_cf[keep] == labels[keep]).double().mean()),
            "flip": float((preds_cf[keep] != preds[keep]).double().mean())}
