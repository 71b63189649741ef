"""The filter explorer's report: an HTML page, filters.json and PNG figures of the ranked filters.

The page is rendered from the Jinja2 template `report.html` beside this module (autoescaped).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import torch

from focusml.analysis.filters.stats import Analysis, FilterStat
from focusml.core.data import Split
from focusml.core.figures import close, plt

TEMPLATE = "report.html"


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
    colors = ["#D55E00" if w < 0 else "#0072B2" for w in stat.class_weights]  # colour-blind safe
    ax.bar(range(len(classes)), stat.class_weights, color=colors)
    ax.set_xticks(range(len(classes)), classes, fontsize=6, rotation=90 if len(classes) > 12 else 0)
    ax.set_ylim(-wmax, wmax)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("class", fontsize=6, labelpad=1)
    ax.set_ylabel("classifier weight", fontsize=6, labelpad=1)
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
    wmax = max(1e-6, *(abs(w) for _, s in rows for w in s.class_weights)) * 1.1
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.3 * (top + 1) + 1.2, 1.5 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2] + [1] * top})
    for r, (label, stat) in enumerate(rows):
        _draw_filter(axes[r], stat, split, classes, label, wmax)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.16, top=0.86, wspace=0.15, hspace=0.7)
    return fig


def shares_figure(report: Report):
    """Share in mask of every filter, ranked; with a comparison, before vs after as a scatter too."""
    a = report.analysis
    shares = [s.share_in_mask for s in a.filters]
    ncols = 2 if report.compare else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.0 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.bar(range(len(shares)), shares, color="#D55E00", label=report.title)
    if report.compare is not None:
        other = report.compare.by_filter()
        after = [other[int(report.partner[s.filter])].share_in_mask for s in a.filters]
        ax.plot(range(len(after)), after, "o", color="#0072B2", markersize=3, label=report.compare_title)
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
    """A table cell: floats to 3 decimals, NaN as a dash (the template escapes the text)."""
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def write_report(report: Report, split: Split, out_dir: Path, figures: int = 20, top: int = 6) -> Path:
    """Write index.html, filters.json, shares.png and one PNG per figured filter under `out_dir`."""
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
    cols = ["rank", "filter", "share_in_mask", "lift", "mean_activation", "top_class", "top_class_weight"]
    if report.compare is not None:
        cols += ["compare_filter", "compare_share_in_mask", "compare_mean_activation", "match_correlation"]
    table = [{"weak": r["weak"], "cells": [_fmt(r[c]) for c in cols], "figure": fig_names.get(r["filter"]),
              "filter": r["filter"]} for r in rows]
    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))
    return template.render(report=report, a=report.analysis, cols=cols, rows=table)
