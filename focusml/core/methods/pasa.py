"""`pasa`: adjusted selective activation loss, scale-invariant (docs/methods.md), in two settings of `evidence`.

`evidence=positive` is the thesis's definition:

    L = CE + λ · S · mean_i Σ_c p̄_ic · [ Σ_uv m↓_i · ReLU(CAM_c) ] / [ Σ_uv ReLU(CAM_c) + ε ]

`p̄ = softmax(logits)` detached, so the weights only say which classes matter for the image;
the gradient flows through the share of each class's positive evidence that lies in the masked
cells. Multiplying every activation by a constant leaves each share unchanged, so (unlike PAS)
the model cannot lower the penalty by shrinking its activations. ε only guards against a class
with no positive evidence at all.

`evidence=all` (the default) penalises the share of *all* evidence, every class and both signs,
that comes from the masked cells — the `evidence_in_mask` metric itself, per image:

    L = CE + λ · S_all · mean_i Σ_c |r_ic| / Σ_c (|r_ic| + |o_ic|)

with `r_ic` / `o_ic` the class-centred contributions of the masked cells / the other cells to
logit c (`cam.region_evidence`). It stays scale-invariant, and a shortcut kept as evidence
against the other classes counts in full. `grid_dilate` and `object_guard` shape m↓ as for `pas`
(see pas.py).

λ scale: each share is in [0, 1], at initialisation roughly the masked fraction of the grid; the
constants bring λ=1 to the order of CE there (values in docs/methods.md).
"""

from __future__ import annotations

import torch

from focusml.core.cam import cam_from_features, evidence_share, mask_to_grid
from focusml.core.methods.base import (Batch, GridMaskMethod, Method, evidence_param, grid_dilate_param, lam_param,
                                  object_guard_param)

SCALE = 50.0
SCALE_ALL = 10.0
EPS = 1e-6


def pasa_term(features: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, m: torch.Tensor,
              eps: float = EPS, grid_dilate: int = 0, keep_object: bool = True) -> torch.Tensor:
    """mean_i Σ_c p̄_ic · share of ReLU(CAM_c) in m↓_i; features N×K×h×w, weight C×K, masks N×H×W."""
    pos = cam_from_features(features, weight).clamp_min(0)  # N×C×h×w
    md = mask_to_grid(m, features.shape[-2:], grid_dilate, keep_object).to(features.dtype)[:, None]
    share = (md * pos).flatten(2).sum(2) / (pos.flatten(2).sum(2) + eps)  # N×C
    p = torch.softmax(logits.detach(), dim=1)
    return (p * share).sum(1).mean()


class PASA(GridMaskMethod, Method):
    name = "pasa"
    family = "loss"
    exact_cam = True
    summary = "CE + λ·share of the evidence that comes from the mask (all classes, both signs; --evidence positive: the thesis's form)"
    params = (lam_param(0.1, f"pasa: raw term ×{SCALE_ALL:g} (evidence all) or ×{SCALE:g} (positive); "
                             "default chosen on acc/val_cf"), evidence_param(), grid_dilate_param(),
              object_guard_param())

    def penalty(self, model, batch: Batch, features, logits):
        weight = model.classifier.weight
        if self.options["evidence"] == "all":
            return SCALE_ALL * evidence_share(*self.evidence(model, batch, features, logits), eps=EPS).mean()
        return SCALE * pasa_term(features, weight, logits, batch.m, grid_dilate=self.cells(model, features),
                                 keep_object=self.keep_object)
