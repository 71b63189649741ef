"""`pas`: selective activation loss (docs/methods.md), in two settings of `evidence`.

`evidence=positive` is the thesis's definition:

    L = CE + λ · S · mean_i [ Σ_uv m↓_i · ReLU(CAM_{y_i}) / max(1, Σ_uv m↓_i) ]

the mean positive true-class evidence over the masked cells. It only sees the shortcut as
evidence *for* the true class: a model can keep reading the shortcut as evidence against the
other classes, and the penalty (and the positive CAM) never shows it.

`evidence=all` (the default) penalises what the masked cells contribute to every logit, both
signs. With `r_ic` the masked cells' contribution to logit c (`cam.region_evidence`: the exact
split of z_c − b_c = mean_uv CAM_c, centred over classes because a shift common to all logits
changes no prediction):

    L = CE + λ · S_all · mean_i Σ_c r_ic²

`m↓` is the mask on the feature grid (adaptive max pooling), grown by `grid_dilate` cells:
neighbouring cells see the masked pixels through their receptive field, so a shortcut silenced
in its own cell would move next door. `auto` grows it as far as the receptive field reaches.
`object_guard on` (the default) keeps m↓ off more than half of an image's mostly unmasked cells: on
a mask covering most of the image (a background) those cells are the object (`cam.mask_to_grid`).

λ scale: `S` brings λ=1 to the order of CE at initialisation; the all-evidence term starts near
zero (an untrained net's masked cells contribute almost nothing), so `S_all` only puts its λ on a
usable scale (`benchmarks/matrix.py --init-scale` prints both); they never change during training.
The evidence measured by swapping a background (`object_guard`) is another raw term, a difference
of logits between two forward passes: `SCALE_SWAPPED` puts it on its own scale.
"""

from __future__ import annotations

import torch

from focusml.core.cam import mask_to_grid
from focusml.core.methods.base import (Batch, GridMaskMethod, Method, evidence_param, grid_dilate_param, lam_param,
                                  object_guard_param)

SCALE = 200.0
SCALE_ALL = 10.0
SCALE_SWAPPED = 3.0  # swapped evidence (background masks) against the cells': chosen on acc/val_cf (docs/methods.md)


def pas_term(features: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
             grid_dilate: int = 0, keep_object: bool = True) -> torch.Tensor:
    """mean_i Σ m↓·ReLU(CAM_y) / max(1, Σ m↓) for features N×K×h×w, classifier weight C×K, masks N×H×W."""
    cam = torch.einsum("nk,nkhw->nhw", weight[y], features)
    md = mask_to_grid(m, features.shape[-2:], grid_dilate, keep_object).to(features.dtype)
    inside = (md * cam.clamp_min(0)).flatten(1).sum(1)
    return (inside / md.flatten(1).sum(1).clamp_min(1.0)).mean()


def all_evidence_term(inside: torch.Tensor, weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """mean_i w_i Σ_c r_ic² for the masked content's class-centred contributions r (N×C, `GridMaskMethod.evidence`)."""
    return (weight * inside.pow(2).sum(1)).mean()


class PAS(GridMaskMethod, Method):
    name = "pas"
    family = "loss"
    exact_cam = True
    summary = "CE + λ·evidence inside the mask (all classes, both signs; --evidence positive: the thesis's true-class form)"
    params = (lam_param(0.1, f"pas: raw term ×{SCALE_ALL:g} (evidence all) or ×{SCALE:g} (positive); "
                             "default chosen on acc/val_cf"), evidence_param(), grid_dilate_param(),
              object_guard_param())

    def penalty(self, model, batch: Batch, features, logits):
        weight = model.classifier.weight
        if self.options["evidence"] == "all":
            inside, _ = self.evidence(model, batch, features, logits)
            weight = torch.where(self.swapped(batch), SCALE_SWAPPED, 1.0)
            return SCALE_ALL * all_evidence_term(inside, weight)
        return SCALE * pas_term(features, weight, batch.y, batch.m, self.cells(model, features), self.keep_object)
