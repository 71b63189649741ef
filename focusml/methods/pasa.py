"""`pasa`: adjusted selective activation loss, scale-invariant (docs/methods.md).

    L = CE + λ · S · mean_i Σ_c p̄_ic · [ Σ_uv m↓_i · ReLU(CAM_c) ] / [ Σ_uv ReLU(CAM_c) + ε ]

`p̄ = softmax(logits)` detached, so the weights only say which classes matter for the image;
the gradient flows through the share of each class's positive evidence that lies in the masked
cells. Multiplying every activation by a constant leaves each share unchanged, so (unlike PAS)
the model cannot lower the penalty by shrinking its activations. ε = 1e-6 only guards against a
class with no positive evidence at all.

λ scale: each share is in [0, 1] and at initialisation roughly the masked fraction of the
feature grid (a little more, because a bright shortcut activates more), far below CE. The fixed
constant `S` brings λ=1 to the order of CE at initialisation (more where the masks, grown by
`grid_dilate`, cover more of the grid); the values are in docs/methods.md.

Default λ = 0.1, the best of a 3-seed sweep on decoy-digits (docs/benchmarks.md). `grid_dilate`
(default 1) grows m↓ by one feature-grid cell, as for PAS (see pas.py).
"""

from __future__ import annotations

import torch

from focusml.cam import cam_from_features, mask_to_grid
from focusml.methods.base import Batch, Method, grid_dilate_param, lam_param

SCALE = 50.0
EPS = 1e-6


def pasa_term(features: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, m: torch.Tensor,
              eps: float = EPS, grid_dilate: int = 0) -> torch.Tensor:
    """mean_i Σ_c p̄_ic · share of ReLU(CAM_c) in m↓_i; features N×K×h×w, weight C×K, masks N×H×W."""
    pos = cam_from_features(features, weight).clamp_min(0)  # N×C×h×w
    md = mask_to_grid(m, features.shape[-2:], grid_dilate).to(features.dtype)[:, None]
    share = (md * pos).flatten(2).sum(2) / (pos.flatten(2).sum(2) + eps)  # N×C
    p = torch.softmax(logits.detach(), dim=1)
    return (p * share).sum(1).mean()


class PASA(Method):
    name = "pasa"
    family = "loss"
    summary = "CE + λ·share of each class's positive CAM inside the mask, weighted by detached p"
    params = (lam_param(0.1, f"pasa: raw term ×{SCALE:g}, so λ=1 ≈ CE at init"), grid_dilate_param())

    def penalty(self, model, batch: Batch, features, logits):
        return SCALE * pasa_term(features, model.classifier.weight, logits, batch.m,
                                 grid_dilate=self.options["grid_dilate"])
