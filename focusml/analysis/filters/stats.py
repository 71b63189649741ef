"""The filter explorer's analysis: which filters of the last convolutional layer respond to the mask.

For every filter k of the last layer of `model.features` (A_k ≥ 0, after the last ReLU):

- `share_in_mask` = Σ_i Σ_pixels m_i · A↑_ik / Σ_i Σ_pixels A↑_ik over the analysed images with a
  non-empty mask, A↑ the bilinear upsampling to image size used for CAMs (as `cam_in_mask` does).
  Upsampling is linear, so this is computed exactly on the feature grid as Σ A_ik · (Uᵀ m_i)
  without materialising K full-size maps. A filter that never fires on those images gets share
  0. A filter whose peak activation (its largest value on any analysed image) is below 1% of the
  largest filter's peak is `weak`: it barely contributes to any logit, so it is ranked after the
  others whatever its share. (The peak, not the mean: a decoy detector fires strongly on a small
  region, so its mean activation is small by nature.) `area_share` (the masked share of the image area) is what a filter with
  spatially uniform activation would score; `lift` = share / area_share.
- `class_weights` = w_·k, the classifier's weights of the filter for every class.
- the top-activating images (largest max_uv A_ik), each cropped to the receptive field of the
  arg-max cell, computed from the kernel sizes, strides and paddings of `features`.

Filters are ranked by share (largest first): the top of the list are the "irrelevant filters".
`compare` analyses a second model on the same images; its filters are paired with the first
model's by index (valid when one was fine-tuned from the other) or by activation (Hungarian
matching on the correlation of the two filters' activation maps), and the pairing correlation is
reported so a reader can tell whether "the same filter" is meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from focusml import FocusmlError
from focusml.core.data import Split


def receptive_field(features: nn.Sequential) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """(size, jump, start) per axis (y, x) of one output cell of `features`, in input pixels.

    Cell (u, v) is centred at start + (u, v)·jump and sees a window of `size` pixels. Layers
    other than convolutions and poolings are taken not to change the geometry.
    """
    size, jump, start = [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]
    for layer in features.modules():
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k, s, p = pair(layer.kernel_size), pair(layer.stride or layer.kernel_size), pair(layer.padding)
        d = pair(getattr(layer, "dilation", 1))
        for a in range(2):
            eff = (k[a] - 1) * d[a] + 1
            start[a] += ((eff - 1) / 2 - p[a]) * jump[a]
            size[a] += (eff - 1) * jump[a]
            jump[a] *= s[a]
    return tuple(size), tuple(jump), tuple(start)


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear upsampling as `F.interpolate(align_corners=False)` does it."""
    eye = torch.eye(n_in)[None]  # 1×n_in×n_in: channel j is the j-th unit vector
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


@dataclass
class Crop:
    index: int  # row in the analysed split
    label: int
    value: float  # max activation of the filter on that image
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (inclusive) in image pixels


@dataclass
class FilterStat:
    filter: int
    share_in_mask: float
    lift: float
    mean_activation: float
    weak: bool  # peak activation < WEAK × the largest peak of any filter (includes filters that never fire)
    peak_activation: float
    class_weights: list[float]
    top: list[Crop] = field(default_factory=list)


@dataclass
class Analysis:
    """Per-filter statistics of one model on one set of images, ranked by share (rank 0 = most in mask)."""

    filters: list[FilterStat]  # ranked
    area_share: float
    n_images: int
    n_masked: int
    grid: tuple[int, int]
    index: torch.Tensor  # analysed rows of the split

    def by_filter(self) -> dict[int, FilterStat]:
        return {f.filter: f for f in self.filters}


WEAK = 0.01


def pick_rows(n: int, max_images: int | None, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded subset of `max_images` rows (all rows when None or n ≤ max_images), sorted."""
    if max_images is None or n <= max_images:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


@torch.no_grad()
def _activations(model, split: Split, index: torch.Tensor, batch_size: int):
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        x, m, y = split.batch(idx)
        yield idx, model.features(x), m, y


@torch.no_grad()
def analyse(model, split: Split, index: torch.Tensor | None = None, top: int = 6, batch_size: int = 128) -> Analysis:
    """Share in mask, class weights and top-activating crops of every last-layer filter of `model`."""
    model = model.cpu().eval()
    index = torch.arange(len(split)) if index is None else index
    H, W = split.images.shape[-2:]
    weight = model.classifier.weight.detach().cpu()  # C×K
    inside = total = act_sum = None
    top_val = top_row = top_pos = None
    area = torch.zeros(2, dtype=torch.float64)
    n_masked, cells = 0, 0
    for idx, a, m, y in _activations(model, split, index, batch_size):
        a = a.double()
        n, k, h, w = a.shape
        if inside is None:
            ry, rx = _interp_matrix(h, H).double(), _interp_matrix(w, W).double()  # H×h, W×w
            ones_proj = ry.sum(0)[:, None] * rx.sum(0)[None, :]  # Uᵀ1 on the grid
            inside, total = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
            act_sum = torch.zeros(k, dtype=torch.float64)
        keep = m.flatten(1).sum(1) > 0
        if keep.any():
            mk = m[keep].double()
            proj = torch.einsum("Hh,nHW,Ww->nhw", ry, mk, rx)  # Uᵀ m on the grid
            inside += torch.einsum("nkhw,nhw->k", a[keep], proj)
            total += torch.einsum("nkhw,hw->k", a[keep], ones_proj)
            area += torch.tensor([float(mk.sum()), float(keep.sum()) * H * W], dtype=torch.float64)
            n_masked += int(keep.sum())
        act_sum += a.sum((0, 2, 3))
        cells += n * h * w
        flat = a.flatten(2)
        vmax, pos = flat.max(2)  # n×k
        cand_val = vmax.T if top_val is None else torch.cat([top_val, vmax.T], 1)
        cand_row = idx[None].expand(k, -1) if top_row is None else torch.cat([top_row, idx[None].expand(k, -1)], 1)
        cand_pos = pos.T if top_pos is None else torch.cat([top_pos, pos.T], 1)
        t = min(max(1, top), cand_val.shape[1])  # at least the peak, which `weak` needs
        order = cand_val.topk(t, dim=1).indices
        top_val, top_row, top_pos = (c.gather(1, order) for c in (cand_val, cand_row, cand_pos))
    if inside is None:
        raise FocusmlError("no images to analyse.")
    if n_masked == 0:
        raise FocusmlError("none of the analysed images has a mask, so no filter's share in the mask can be measured. "
                           "Pick a split with masks (train or val) or draw masks with `focusml masks serve`.")
    area_share = float(area[0] / area[1])
    (rf, jump, start) = receptive_field(model.features)
    stats = []
    for f in range(k):
        share = 0.0 if total[f] <= 1e-12 else float((inside[f] / total[f]).clamp(0, 1))
        peak = float(top_val[f, 0])
        weak = bool(peak <= WEAK * float(top_val[:, 0].max()))
        crops = []
        for j in range(min(top, top_val.shape[1])):
            if float(top_val[f, j]) <= 0:
                continue
            u, v = divmod(int(top_pos[f, j]), w)
            cy, cx = start[0] + u * jump[0], start[1] + v * jump[1]
            box = (max(0, math.floor(cy - (rf[0] - 1) / 2)), max(0, math.floor(cx - (rf[1] - 1) / 2)),
                   min(H - 1, math.ceil(cy + (rf[0] - 1) / 2)), min(W - 1, math.ceil(cx + (rf[1] - 1) / 2)))
            row = int(top_row[f, j])
            crops.append(Crop(row, int(split.labels[row]), float(top_val[f, j]), box))
        stats.append(FilterStat(f, share, share / area_share if area_share > 0 else float("nan"),
                                float(act_sum[f] / cells), weak, peak, weight[:, f].tolist(), crops))
    stats.sort(key=lambda s: (s.weak, -s.share_in_mask, s.filter))
    return Analysis(stats, area_share, len(index), n_masked, (h, w), index)


@torch.no_grad()
def match_filters(model_a, model_b, split: Split, index: torch.Tensor, how: str = "activation",
                  batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Pair each filter of `model_a` with one of `model_b`: (partner[k], correlation[k]).

    `how="index"` pairs k with k; `how="activation"` maximises the summed correlation of the two
    filters' activation maps over the images (Hungarian matching). Correlations are Pearson
    correlations over every image and grid cell; 0 for a filter that never varies.
    """
    if how not in ("index", "activation"):
        raise FocusmlError(f"--match is {how!r}; use index or activation.")
    sums = None
    for (_, a, _, _), (_, b, _, _) in zip(_activations(model_a, split, index, batch_size),
                                          _activations(model_b, split, index, batch_size)):
        if a.shape[1:] != b.shape[1:]:
            raise FocusmlError(f"the two models' last layers differ ({tuple(a.shape[1:])} vs {tuple(b.shape[1:])} "
                               "filters×grid), so their filters cannot be compared.")
        fa = a.double().transpose(0, 1).flatten(1)  # K×(n·h·w)
        fb = b.double().transpose(0, 1).flatten(1)
        part = [fa.sum(1), fb.sum(1), (fa * fa).sum(1), (fb * fb).sum(1), fa @ fb.T, fa.shape[1]]
        sums = part if sums is None else [s + p for s, p in zip(sums, part)]
    sa, sb, saa, sbb, sab, n = sums
    cov = sab / n - torch.outer(sa / n, sb / n)
    std_a = (saa / n - (sa / n) ** 2).clamp_min(0).sqrt()
    std_b = (sbb / n - (sb / n) ** 2).clamp_min(0).sqrt()
    denom = torch.outer(std_a, std_b)
    corr = torch.where(denom > 1e-12, cov / denom.clamp_min(1e-12), torch.zeros_like(cov)).numpy()
    k = corr.shape[0]
    if how == "index":
        partner = np.arange(k)
    else:
        rows, cols = linear_sum_assignment(-corr)
        partner = cols[np.argsort(rows)]
    return partner, corr[np.arange(k), partner]
