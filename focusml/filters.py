"""Filter explorer: which filters of the last convolutional layer respond to the masked region.

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

`explore` ties it to MLflow: it loads a run's model (its `checkpoints/last.pt` state dict with
`torch.load(weights_only=True)`, else the logged MLflow model), rebuilds the run's dataset from its
params, writes an HTML report with PNG figures and logs that folder to the run.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from focusml import FocusmlError
from focusml.data import DataOptions, Dataset, Split, load

# --------------------------------------------------------------------------------------------
# Loading a run's model and data
# --------------------------------------------------------------------------------------------


def run_info(run_id: str):
    """The MLflow run `run_id` (tracking URI from the environment); FocusmlError if unknown."""
    import mlflow

    from focusml import tracking

    tracking.setup()
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(
            f"run {run_id} not found in {mlflow.get_tracking_uri()} ({e.message.splitlines()[0]}). "
            "Check the run id (`focusml train` prints it) and MLFLOW_TRACKING_URI."
        ) from None


def _check_cam_model(model, source: str) -> nn.Module:
    if not all(hasattr(model, a) for a in ("features", "classifier", "forward_features")):
        raise FocusmlError(f"the model from {source} is not a CAM-capable focusml model (needs .features and .classifier).")
    return model.cpu().eval()


def load_run_model(run_id: str, image_size: int | None = None, prefer: str = "checkpoint") -> nn.Module:
    """A run's trained model (a CamNet) on the CPU in eval mode.

    `prefer="checkpoint"` loads `checkpoints/last.pt` with `weights_only=True` (no pickled code
    runs) and, if that fails, the logged MLflow model (`runs:/RUN_ID/model`); `prefer="model"`
    tries them the other way round. MLflow 3 logs PyTorch models as `torch.export` programs,
    which keep the weights but not `forward_features`, so either way the network is rebuilt from
    the run's `model` param and loaded with those weights (`image_size` matters only for vgg11,
    whose poolings depend on it).
    """
    import mlflow

    from focusml.models import build_model

    run = run_info(run_id)
    params = run.data.params
    client = mlflow.MlflowClient()
    errors: list[str] = []

    def rebuild(state: dict, source: str):
        try:
            in_ch = state["features.0.weight"].shape[1]
            n_cls = state["classifier.weight"].shape[0]
            size = image_size or _param(params, "image_size", int) or 28
            model = build_model(params.get("model") or "small", in_ch, n_cls, size)
            model.load_state_dict(state)
            return model
        except (KeyError, RuntimeError, FocusmlError) as e:
            errors.append(f"{source} does not fit model '{params.get('model')}': {str(e).splitlines()[0]}")
            return None

    def from_checkpoint():
        names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
        if "checkpoints/last.pt" not in names:
            errors.append("no checkpoints/last.pt")
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt", dst_path=tmp)
            state = torch.load(local, map_location="cpu", weights_only=True)
        return rebuild(state, "checkpoints/last.pt")

    def from_logged_model():
        saved = list(sys.path)  # the pytorch flavour prepends the logged code folder to sys.path
        try:
            logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
        except (mlflow.exceptions.MlflowException, OSError) as e:
            errors.append(f"no logged model ({str(e).splitlines()[0]})")
            return None
        finally:
            sys.path[:] = saved
        if hasattr(logged, "forward_features"):
            return logged
        return rebuild({k: v.detach().cpu() for k, v in logged.state_dict().items()}, "the logged model")

    order = (from_checkpoint, from_logged_model) if prefer == "checkpoint" else (from_logged_model, from_checkpoint)
    for loader in order:
        model = loader()
        if model is not None:
            return _check_cam_model(model, f"run {run_id}")
    raise FocusmlError(
        f"run {run_id} has no usable model ({'; '.join(errors)}). Use a run logged by `focusml train` "
        "(it logs checkpoints/last.pt, and the MLflow model unless --no-log-model)."
    )


def _param(params: dict, key: str, cast, default=None):
    value = params.get(key)
    if value in (None, "", "None"):
        return default
    try:
        return cast(value)
    except ValueError:
        raise FocusmlError(f"run param {key}={value!r} is not a valid {cast.__name__}.") from None


def load_run_data(params: dict) -> Dataset:
    """Rebuild the dataset a run trained on from its logged params (dataset, data_seed, data_root, image_size)."""
    name = params.get("dataset")
    if not name:
        raise FocusmlError("the run has no `dataset` param: it was not logged by `focusml train`.")
    root = _param(params, "data_root", str)
    return load(name, DataOptions(seed=_param(params, "data_seed", int, 0), root=Path(root) if root else None,
                                  download=False, image_size=_param(params, "image_size", int)))


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


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
    from scipy.optimize import linear_sum_assignment

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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    run_id: str | None
    title: str
    split: str
    classes: list[str]
    analysis: Analysis
    compare: Analysis | None = None
    compare_run_id: str | None = None
    compare_title: str | None = None
    partner: np.ndarray | None = None  # partner[k] = filter of the compared model paired with k
    correlation: np.ndarray | None = None
    match: str | None = None
    warnings: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    artifact_path: str | None = None

    def rows(self) -> list[dict]:
        """One dict per filter, in rank order (what the CLI prints and filters.json holds)."""
        other = self.compare.by_filter() if self.compare else {}
        out = []
        for rank, s in enumerate(self.analysis.filters):
            best = int(np.argmax(s.class_weights))
            row = {"rank": rank + 1, "filter": s.filter, "share_in_mask": s.share_in_mask, "lift": s.lift,
                   "mean_activation": s.mean_activation, "peak_activation": s.peak_activation, "weak": s.weak, "top_class": self.classes[best],
                   "top_class_weight": s.class_weights[best]}
            if self.compare is not None:
                o = other[int(self.partner[s.filter])]
                row.update({"compare_filter": o.filter, "compare_share_in_mask": o.share_in_mask,
                            "compare_mean_activation": o.mean_activation, "match_correlation": float(self.correlation[s.filter])})
            out.append(row)
        return out


def _to_display(img: torch.Tensor) -> np.ndarray:
    arr = img.float().numpy() / 255.0
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def _label(ax, text: str, size: int) -> None:
    # a plain text, not a title: matplotlib's title layout dominates the drawing time of small axes
    ax.text(0.5, 1.03, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=size)


def _draw_filter(axes, stat: FilterStat, split: Split, classes: list[str], label: str, wmax: float) -> None:
    ax = axes[0]
    colors = ["tab:red" if w < 0 else "tab:blue" for w in stat.class_weights]
    ax.bar(range(len(classes)), stat.class_weights, color=colors)
    ax.set_xticks(range(len(classes)), classes, fontsize=6, rotation=90 if len(classes) > 12 else 0)
    ax.set_ylim(-wmax, wmax)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.tick_params(axis="y", labelsize=6)
    _label(ax, f"{label} filter {stat.filter}: {100 * stat.share_in_mask:.0f}% in mask", 7)
    for j, ax in enumerate(axes[1:]):
        ax.axis("off")
        if j >= len(stat.top):
            continue
        c = stat.top[j]
        ax.axis("on")  # a frame, so white image borders stand out from the page
        ax.set_xticks([]), ax.set_yticks([])
        y0, x0, y1, x1 = c.box
        img = _to_display(split.images[c.index])[y0:y1 + 1, x0:x1 + 1]
        m = split.masks[c.index].numpy()[y0:y1 + 1, x0:x1 + 1]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors="red", linewidths=1.0)
        _label(ax, f"{classes[c.label]} a={c.value:.2f}", 6)


def filter_figure(rows: list[tuple[str, FilterStat]], split: Split, classes: list[str], top: int):
    """One row per (label, filter): class-weight bars, then the top-activating crops (mask outlined in red)."""
    import matplotlib.pyplot as plt

    import focusml.figures  # noqa: F401  (selects the Agg backend)

    wmax = max(1e-6, *(abs(w) for _, s in rows for w in s.class_weights)) * 1.1
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.3 * (top + 1) + 1.2, 1.5 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2] + [1] * top})
    for r, (label, stat) in enumerate(rows):
        _draw_filter(axes[r], stat, split, classes, label, wmax)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.86, wspace=0.15, hspace=0.45)
    return fig


def shares_figure(report: Report):
    """Share in mask of every filter, ranked; with a comparison, before vs after as a scatter too."""
    import matplotlib.pyplot as plt

    import focusml.figures  # noqa: F401

    a = report.analysis
    shares = [s.share_in_mask for s in a.filters]
    ncols = 2 if report.compare else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.bar(range(len(shares)), shares, color="tab:red", label=report.title)
    if report.compare is not None:
        other = report.compare.by_filter()
        after = [other[int(report.partner[s.filter])].share_in_mask for s in a.filters]
        ax.plot(range(len(after)), after, "o", color="tab:blue", markersize=3, label=report.compare_title)
    ax.axhline(a.area_share, color="black", linestyle="--", linewidth=1, label=f"mask area {100 * a.area_share:.1f}%")
    ax.set_xlabel("filters, ranked by share in mask")
    ax.set_ylabel("share of activation in mask")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    if report.compare is not None:
        ax = axes[0, 1]
        ax.scatter(shares, after, s=10)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set_xlabel(f"share in mask: {report.title}")
        ax.set_ylabel(f"share in mask: {report.compare_title}")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def _fmt(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def write_report(report: Report, split: Split, out_dir: Path, figures: int = 20, top: int = 6) -> Path:
    """Write index.html, filters.json, shares.png and one PNG per figured filter under `out_dir`."""
    from focusml.figures import close

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    fig = shares_figure(report)
    fig.savefig(out_dir / "figures" / "shares.png", dpi=110)
    close(fig)
    other = report.compare.by_filter() if report.compare else {}
    fig_names = {}
    for s in report.analysis.filters[:figures]:
        rows = [(report.title, s)]
        if report.compare is not None:
            rows.append((report.compare_title, other[int(report.partner[s.filter])]))
        fig = filter_figure(rows, split, report.classes, top)
        name = f"figures/filter_{s.filter:03d}.png"
        fig.savefig(out_dir / name, dpi=110)
        close(fig)
        fig_names[s.filter] = name
    rows = report.rows()
    payload = {"run_id": report.run_id, "compare_run_id": report.compare_run_id, "split": report.split,
               "classes": report.classes, "area_share": report.analysis.area_share,
               "n_images": report.analysis.n_images, "n_masked": report.analysis.n_masked,
               "match": report.match, "warnings": report.warnings, "filters": rows,
               "top_crops": {s.filter: [asdict(c) for c in s.top] for s in report.analysis.filters}}
    (out_dir / "filters.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "index.html").write_text(_html(report, rows, fig_names))
    return out_dir


def _html(report: Report, rows: list[dict], fig_names: dict[int, str]) -> str:
    a = report.analysis
    cols = ["rank", "filter", "share_in_mask", "lift", "mean_activation", "top_class", "top_class_weight"]
    if report.compare is not None:
        cols += ["compare_filter", "compare_share_in_mask", "compare_mean_activation", "match_correlation"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "<th>figure</th>"
    body = []
    for r in rows:
        cells = "".join(f"<td>{_fmt(r[c])}</td>" for c in cols)
        fig = fig_names.get(r["filter"])
        img = f'<img src="{fig}" alt="filter {r["filter"]}">' if fig else ""
        body.append(f"<tr{' class=weak' if r['weak'] else ''}>{cells}<td>{img}</td></tr>")
    compare = ""
    if report.compare is not None:
        compare = (f"<p>Compared with <b>{html.escape(report.compare_title or '')}</b> "
                   f"(run {html.escape(str(report.compare_run_id))}); filters paired by <b>{html.escape(report.match or '')}</b>"
                   f" (match_correlation: Pearson correlation of the paired activation maps).</p>")
    warn = "".join(f"<p class=warn>{html.escape(w)}</p>" for w in report.warnings)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>focusml filters: {html.escape(report.title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:middle}} tr.weak{{color:#999}}
td img{{max-height:260px}} .warn{{color:#b00}}</style></head><body>
<h1>Filters of the last convolutional layer: {html.escape(report.title)}</h1>
<p>Run {html.escape(str(report.run_id))}, split <b>{html.escape(report.split)}</b>: {a.n_images} images,
{a.n_masked} with a mask; feature grid {a.grid[0]}×{a.grid[1]}. Masks cover {100 * a.area_share:.1f}% of the masked
images' area, which is the share a filter firing uniformly would get (lift = share / that).</p>
<p>share_in_mask = the filter's activation mass (bilinearly upsampled to the image) inside the masks over its
total mass, on images with a mask. Filters are ranked by it: the top ones respond to the irrelevant region. Weak filters (grey: peak
activation under 1% of the largest filter peak) come last.
Crops: the receptive field of the filter's strongest cell in its top-activating images, mask outlined in red.
Bars: the classifier's weight of the filter for every class.</p>
{compare}{warn}
<img src="figures/shares.png" alt="shares">
<table><tr>{head}</tr>
{''.join(body)}
</table></body></html>
"""


# --------------------------------------------------------------------------------------------
# From a run id to a logged report
# --------------------------------------------------------------------------------------------


def explore(run_id: str, compare: str | None = None, out_dir: str | os.PathLike | None = None, split: str = "val",
            max_images: int | None = 500, top: int = 6, figures: int = 20, match: str = "auto",
            log: bool = True) -> Report:
    """Analyse run `run_id` (and `compare`), write the report to `out_dir`, log it to the run under `filters/`."""
    import mlflow

    run = run_info(run_id)
    params = run.data.params
    warnings = []
    data = load_run_data(params)
    fp = params.get("dataset_fingerprint")
    if fp and fp != data.fingerprint:
        warnings.append(f"the dataset rebuilt from the run's params differs from the one it trained on "
                        f"(fingerprint {data.fingerprint} ≠ {fp}): its files changed since.")
    c, h, w = data.image_shape
    model = load_run_model(run_id, image_size=max(h, w))
    sp = data.split(split)
    index = pick_rows(len(sp), max_images)
    analysis = analyse(model, sp, index, top=top)
    title = run.info.run_name or run_id[:8]
    report = Report(run_id, title, split, data.classes, analysis, warnings=warnings)
    if compare:
        other = run_info(compare)
        if other.data.params.get("dataset") != params.get("dataset"):
            warnings.append(f"run {compare} trained on dataset {other.data.params.get('dataset')!r}, "
                            f"not {params.get('dataset')!r}; both are analysed on the latter.")
        model_b = load_run_model(compare, image_size=max(h, w))
        if model_b.classifier.weight.shape[0] != data.num_classes:
            raise FocusmlError(f"run {compare} has {model_b.classifier.weight.shape[0]} classes, "
                               f"run {run_id} {data.num_classes}: compare runs on the same dataset.")
        if match == "auto":
            match = "index" if other.data.params.get("pretrained") else "activation"
        partner, corr = match_filters(model, model_b, sp, index, match)
        report.compare = analyse(model_b, sp, index, top=top)
        report.compare_run_id, report.compare_title = compare, other.info.run_name or compare[:8]
        if report.compare_title == report.title:
            report.title, report.compare_title = f"{title} ({run_id[:6]})", f"{report.compare_title} ({compare[:6]})"
        report.partner, report.correlation, report.match = partner, corr, match
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="focusml-filters-"))
    report.out_dir = write_report(report, sp, Path(out_dir), figures=figures, top=top)
    if log:
        report.artifact_path = "filters" if not compare else f"filters/compare_{compare}"
        mlflow.MlflowClient().log_artifacts(run_id, str(report.out_dir), artifact_path=report.artifact_path)
    return report
