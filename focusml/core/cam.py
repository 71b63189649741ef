"""Class activation maps and the attention metrics of docs/methods.md.

CAM_c(u,v) = Σ_k w_ck A_k(u,v) on the feature grid; `upsample` takes it bilinearly to the image
size for display and for pixel-level metrics; `mask_to_grid` takes a mask to the feature grid
by adaptive max pooling (a cell is irrelevant when any pixel of its footprint is), except where
that would take the object itself (`object_cells`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cam_from_features(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N,K,h,w) features and (C,K) weights → (N,C,h,w) class activation maps."""
    return torch.einsum("ck,nkhw->nchw", weight, features)


def class_cam(model, x: torch.Tensor, classes: torch.Tensor | None = None):
    """CAM of one class per image (default: the predicted class) → (cams N×h×w, logits)."""
    a, logits = model.forward_features(x)
    c = logits.argmax(1) if classes is None else classes
    w = model.classifier.weight[c]  # N×K
    return torch.einsum("nk,nkhw->nhw", w, a), logits


def object_cells(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,1,h,w) float: the cells mostly unmasked (at least half of their footprint's pixels are relevant)."""
    return (F.adaptive_avg_pool2d(1.0 - masks[:, None].float(), size) >= 0.5).float()


def guarded(grid: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Per image, which (N,) rows of the (N,1,h,w) grid mask take more than half of the mostly unmasked cells."""
    return (grid * free).flatten(1).sum(1) > 0.5 * free.flatten(1).sum(1)


def _grow(grid: torch.Tensor, cells: int) -> torch.Tensor:
    return F.max_pool2d(grid, 2 * cells + 1, stride=1, padding=cells) if cells > 0 else grid


def mask_to_grid(masks: torch.Tensor, size: tuple[int, int], dilate_cells: int = 0,
                 keep_object: bool = True) -> torch.Tensor:
    """(N,H,W) masks → (N,h,w) by adaptive max pooling, optionally grown by `dilate_cells` cells.

    `keep_object`: the grid mask of an image never takes more than half of its mostly unmasked
    cells. The margin shrinks until it fits; where even the max-pooled mask does not (a mask
    covering most of the image, e.g. a background, whose partly masked cells are the object's),
    it keeps to the cells that are mostly masked. A small mask never comes near that bound, so
    its grid mask is the max-pooled one, grown by the full margin.
    """
    base = F.adaptive_max_pool2d(masks[:, None].float(), size)
    if not keep_object:
        return _grow(base, dilate_cells)[:, 0]
    free = object_cells(masks, size)
    out, done = base * (1.0 - free), torch.zeros(len(base), dtype=torch.bool, device=base.device)
    for cells in range(dilate_cells, -1, -1):
        grid = _grow(base, cells)
        fits = ~guarded(grid, free) & ~done
        out, done = torch.where(fits.view(-1, 1, 1, 1), grid, out), done | fits
    return out[:, 0]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,h,w) → (N,H,W) bilinear."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image min-max normalisation of (N,H,W) maps to [0, 1]."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(maps)


def wrong_reason(pos_cams: torch.Tensor, masks: torch.Tensor) -> float:
    """WR score (Friedrich et al. 2023) of positive predicted-class CAMs (N,H,W) at pixel size.

    Each map is min-max normalised, binarised at the mean normalised activation over all given
    images, and WR = 100 · mean_i |bin_i ∩ m_i| / |m_i| over images with a non-empty mask.
    Returns NaN when no image has a mask.
    """
    norm = minmax(pos_cams)
    binar = norm > norm.mean()
    m = masks > 0.5
    area = m.flatten(1).sum(1)
    keep = area > 0
    if not keep.any():
        return float("nan")
    inter = (binar & m).flatten(1).sum(1)
    return float(100.0 * (inter[keep].float() / area[keep].float()).mean())


def cam_in_mask(pos_cams: torch.Tensor, masks: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean share of positive CAM mass inside the mask, over images with a non-empty mask."""
    m = masks.float()
    keep = m.flatten(1).sum(1) > 0
    if not keep.any():
        return float("nan")
    inside = (pos_cams * m).flatten(1).sum(1)
    total = pos_cams.flatten(1).sum(1).clamp_min(eps)
    return float((inside / total)[keep].mean())


def grad_cam_from(features: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor,
                  create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) from a forward pass that is still attached to the graph.

    α_k = mean_uv ∂z_c/∂A_k(u,v), map = ReLU(Σ_k α_k A_k) → (N,h,w). Images are independent in the
    forward (no batch statistics), so one gradient of Σ_i z_{i,c_i} gives every image's own map.
    `create_graph=True` keeps the map differentiable (for penalties on it).
    """
    score = logits.gather(1, classes[:, None].to(logits.device)).sum()
    grads, = torch.autograd.grad(score, features, create_graph=create_graph)
    alpha = grads.mean((2, 3), keepdim=True)
    return F.relu((alpha * features).sum(1))


def grad_cam(model, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM of one class per image (default: the predicted class) on the feature grid (N,h,w).

    For a GAP model (focusml's CamNet) it equals ReLU(CAM_c) / (h·w).
    """
    with torch.enable_grad():
        a, logits = model.forward_features(x)
        c = logits.argmax(1) if classes is None else classes
        return grad_cam_from(a, logits, c).detach()


def region_evidence(features: torch.Tensor, weight: torch.Tensor, masks: torch.Tensor,
                    dilate_cells: int = 0, keep_object: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every class's logit contribution from the masked cells and from the rest → (inside, outside), N×C each.

    For a CAM network z_c − b_c = mean_uv CAM_c(u,v), which splits exactly into the part of the
    cells of m↓ and the part of the others. Adding one amount to every logit changes no
    prediction, so both parts are centred over classes: what remains is evidence for some
    classes against others, of either sign.
    """
    cam = cam_from_features(features, weight)
    md = mask_to_grid(masks, features.shape[-2:], dilate_cells, keep_object).to(cam.dtype)[:, None]
    cells = features.shape[-2] * features.shape[-1]
    inside = (md * cam).flatten(2).sum(2) / cells
    outside = cam.flatten(2).sum(2) / cells - inside
    return inside - inside.mean(1, keepdim=True), outside - outside.mean(1, keepdim=True)


def evidence_share(inside: torch.Tensor, outside: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per image, the share of Σ_c |contribution| (centred, both signs) that comes from the masked cells."""
    a, b = inside.abs().sum(1), outside.abs().sum(1)
    return a / (a + b).clamp_min(eps)


def evidence_in_mask(shares: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean `evidence_share` over images with a non-empty mask (NaN when none has one)."""
    keep = masks.flatten(1).amax(1) > 0
    return float(shares[keep].mean()) if keep.any() else float("nan")
