"""`pas`: selective activation loss (METHODS.md).

    L = CE + λ · S · mean_i [ Σ_uv m↓_i · ReLU(CAM_{y_i}) / max(1, Σ_uv m↓_i) ]

`CAM_{y_i}` is the class activation map of the true class on the feature grid, `m↓` the mask
taken to that grid by adaptive max pooling (a cell is irrelevant when any pixel of its footprint
is), so the bracket is the mean positive true-class evidence over the masked cells (zero for an
image without a mask). Its gradient reaches the features only through masked cells.

λ scale: the bracket is in logit units and a freshly initialised CAM network has logits of a few
hundredths, so the raw term is ≈ 0.006–0.012 at initialisation on decoy-digits while CE is
≈ ln 10 ≈ 2.3. The term is therefore multiplied by the fixed constant `S = 200`: λ=1 then gives a
penalty at initialisation (mean over 5 seeds, `benchmarks/methods.py --init-scale --dataset D`) of
1.8 on decoy-digits (CE 2.3), 1.7 on symbols (CE 1.6), 2.5 on xray-tokens (CE 0.7) and 3.7 on
sketches (CE 1.6): the order of CE. S never changes during training, so the loss is the METHODS.md loss with weight λ·S.

Default λ = 0.1 (λ·S = 20): larger λ slows the start of training (λ=0.5 leaves CE at chance for
the first 6 of 20 epochs) and lowers test accuracy (README: the sweep).

`grid_dilate` (default 1) grows m↓ by one cell of the feature grid before the penalty. With the
exact m↓ (`--grid-dilate 0`, METHODS.md's definition) the masked cell goes silent but the
shortcut moves into its neighbours, whose receptive fields also cover the masked pixels: PAS then
closes ~70–80% of the gap on decoy-digits, with one cell of margin 97% (README: Benchmark).
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
