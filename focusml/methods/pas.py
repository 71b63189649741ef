"""`pas`: selective activation loss (docs/methods.md).

    L = CE + λ · S · mean_i [ Σ_uv m↓_i · ReLU(CAM_{y_i}) / max(1, Σ_uv m↓_i) ]

`CAM_{y_i}` is the class activation map of the true class on the feature grid, `m↓` the mask
taken to that grid by adaptive max pooling (a cell is irrelevant when any pixel of its footprint
is), so the bracket is the mean positive true-class evidence over the masked cells (zero for an
image without a mask). Its gradient reaches the features only through masked cells.

λ scale: the bracket is in logit units, and a freshly initialised CAM network has logits of a
few hundredths, so the raw term is far below CE at initialisation. The fixed constant `S`
brings λ=1 to the order of CE there (`benchmarks/methods.py --init-scale` prints both; the
values per dataset are in docs/methods.md). S never changes during training, so the loss is the
contract's loss with weight λ·S.

Default λ = 0.1: larger λ slows the start of training and lowers test accuracy (the sweep is in
docs/benchmarks.md).

`grid_dilate` (default 1) grows m↓ by one cell of the feature grid before the penalty. With the
exact m↓ (`--grid-dilate 0`) the masked cell goes silent but the shortcut moves into its
neighbours, whose receptive fields also cover the masked pixels; one cell of margin closes that
door (measured in docs/benchmarks.md, "Why grid_dilate 1").
"""

from __future__ import annotations

import torch

from focusml.cam import mask_to_grid
from focusml.methods.base import Batch, Method, grid_dilate_param, lam_param

SCALE = 200.0


def pas_term(features: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
             grid_dilate: int = 0) -> torch.Tensor:
    """mean_i Σ m↓·ReLU(CAM_y) / max(1, Σ m↓) for features N×K×h×w, classifier weight C×K, masks N×H×W."""
    cam = torch.einsum("nk,nkhw->nhw", weight[y], features)
    md = mask_to_grid(m, features.shape[-2:], grid_dilate).to(features.dtype)
    inside = (md * cam.clamp_min(0)).flatten(1).sum(1)
    return (inside / md.flatten(1).sum(1).clamp_min(1.0)).mean()


class PAS(Method):
    name = "pas"
    family = "loss"
    summary = "CE + λ·mean positive true-class CAM inside the mask (on the feature grid)"
    params = (lam_param(0.1, f"pas: raw term ×{SCALE:g}, so λ=1 ≈ CE at init"), grid_dilate_param())

    def penalty(self, model, batch: Batch, features, logits):
        return SCALE * pas_term(features, model.classifier.weight, batch.y, batch.m, self.options["grid_dilate"])
