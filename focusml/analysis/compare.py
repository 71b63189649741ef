"""Cross-run comparison: every method against the baseline and upper bound, read from MLflow.

`compare` reads an experiment's runs through `focusml.tracking` and summarises them with
`focusml.analysis.summary` (where the gap-closed formula lives: see its docstring for which runs
count and how they are paired), and warns where the comparison misleads (`warnings_for`: a tiny
baseline → upper-bound gap, runs trained with different settings). `write_report` writes the
table as Markdown and CSV and a chart (accuracy and the shortcut metrics, error bars over
seeds); `log_report` logs the three as artifacts of a comparison run (tagged so it is never
compared itself); `write_note` puts the table, the best method and the chart into the experiment's
description, which the MLflow UI shows on the experiment page; `report` does them all.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd

from focusml import FocusmlError, tracking
from focusml.analysis.summary import (AUGMENT_DEFAULTS, COLUMNS, COMPARISON_TAG, PAIR_ON, display_rows, markdown_table,
                                      summarise, tidy_runs, to_markdown)
from focusml.core.figures import close, plt

__all__ = ["AUGMENT_DEFAULTS", "COLUMNS", "COMPARISON_TAG", "PAIR_ON", "PANELS", "bar_chart", "chart", "compare",
           "display_rows", "load_runs", "log_report", "note_markdown", "report", "summarise", "tidy_runs",
           "to_markdown", "warnings_for", "write_note", "write_report"]


#: settings that must match for runs to be compared fairly (the method's own options excepted)
SHARED_SETTINGS = ("epochs", "lr", "batch_size", "lr_schedule", "select", "model", "data_seed", "train_size",
                   "image_size", "pretrained")
SMALL_GAP = 0.10  # a baseline → upper-bound gap under 10 points: gap closed is mostly noise
#: the chart's panels: (tidy column, metric, title, which way is better)
PANELS = (("acc", "acc/test", "accuracy, shortcut broken", "higher is better"),
          ("acc_cf", "acc/test_cf", "counterfactual accuracy", "higher is better"),
          ("flip", "flip/test", "flip rate on counterfactuals", "lower is better"),
          ("ev", "evidence_in_mask/test", "evidence in the mask", "lower is better"),
          ("wr", "wr/test", "wrong-reason score (WR)", "lower is better"))
#: colour-blind-safe (Okabe–Ito): baseline vermillion, upper bound blue, refinement methods bluish green
COLOURS = {"baseline": "#D55E00", "upper_bound": "#0072B2"}
METHOD_COLOUR = "#009E73"


def load_runs(experiment: str, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """The experiment's comparable runs as tidy rows (see `summary.tidy_runs`). Needs tracking set up."""
    return tidy_runs(tracking.search_runs(experiment), dataset or None, include_children)


def warnings_for(table: pd.DataFrame, raw: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """What makes a comparison misleading: a tiny baseline → upper-bound gap (gap closed divides by
    it), or compared runs of one dataset trained with different settings (epochs, lr, model, ...)."""
    out = []
    for dataset, g in table.groupby("dataset", sort=False):
        refs = {m: g[g["method"] == m]["acc/test mean"].mean() for m in ("baseline", "upper_bound")}
        if not any(math.isnan(v) for v in refs.values()):
            gap = refs["upper_bound"] - refs["baseline"]
            if gap < SMALL_GAP:
                out.append(f"{dataset}: the baseline → upper bound gap is only {100 * gap:.1f} points "
                           f"({refs['baseline']:.3f} → {refs['upper_bound']:.3f}); gap closed divides by it, so "
                           "it is mostly noise here. A shortcut the baseline really uses gives a wider gap.")
        ids = set(runs[runs["dataset"] == dataset]["run_id"])
        sub = raw[raw["run_id"].isin(ids)]
        for key in SHARED_SETTINGS:
            col = f"params.{key}"
            if col not in sub.columns:
                continue
            values = sub[col].fillna("").astype(str).replace({"None": ""})
            counts = values.value_counts()
            if len(counts) > 1:
                shown = ", ".join(f"{v or '(unset)'}: {n} run{'s' if n > 1 else ''}" for v, n in counts.items())
                out.append(f"{dataset}: the compared runs differ in {key} ({shown}); compare like with like "
                           "(retrain, or keep the runs apart in another experiment).")
    return out


def _compare(experiment: str | None, dataset: str | None, include_children: bool):
    tracking.setup()
    experiment = tracking.resolve_experiment(experiment)
    raw = tracking.search_runs(experiment)
    runs = tidy_runs(raw, dataset or None, include_children)
    if runs.empty:
        where = f" on dataset '{dataset}'" if dataset else ""
        raise FocusmlError(f"experiment '{experiment}' has no finished focusml training runs{where} to compare. "
                           f"Train some first, e.g. `focusml train --method baseline --experiment {experiment}`.")
    table = summarise(runs)
    table.attrs["warnings"] = warnings_for(table, raw, runs)
    table.attrs["experiment"] = experiment
    table.attrs["experiment_id"] = str(raw["experiment_id"].iloc[0])
    return table, runs


def compare(experiment: str | None = None, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """The comparison table of an experiment (default: the environment's, see `tracking.resolve_experiment`),
    optionally of one dataset; `table.attrs["warnings"]` lists what makes it misleading. Raises if empty."""
    return _compare(experiment, dataset, include_children)[0]


def chart(table: pd.DataFrame, runs: pd.DataFrame | None = None):
    """One row of panels per dataset: acc/test, acc/test_cf, flip/test, evidence_in_mask/test and
    wr/test per method and setting, bars at the mean with error bars of one sample std over the
    runs (seeds), the run count under each bar; baseline and upper bound in their own colours
    and, for accuracy, as dashed lines. A panel no run logged says so instead of staying empty."""
    datasets = list(dict.fromkeys(table["dataset"]))
    n_bars = max(len(table[table["dataset"] == d]) for d in datasets)
    width = max(3.6, 0.5 * n_bars + 1.6)
    cols = 3  # 3 + 2 panels per dataset: square-ish, readable where the MLflow UI shrinks it to fit
    per = -(-len(PANELS) // cols)
    fig, grid = plt.subplots(per * len(datasets), cols, figsize=(width * cols, 3.7 * per * len(datasets) + 0.5),
                             squeeze=False)
    rows = []
    for d in range(len(datasets)):
        cells = list(grid[d * per:(d + 1) * per].flat)
        for extra in cells[len(PANELS):]:
            fig.delaxes(extra)
        rows.append(cells[:len(PANELS)])
    for row, dataset in zip(rows, datasets):
        g = table[table["dataset"] == dataset]
        r = runs[runs["dataset"] == dataset] if runs is not None else None
        labels = [f"{m}\n{s}" if s else m for m, s in zip(g["method"], g["settings"])]
        colours = [COLOURS.get(m, METHOD_COLOUR) for m in g["method"]]
        for ax, (col, metric, title, better) in zip(row, PANELS):
            if r is not None:
                stats = r.groupby(["method", "settings"], sort=False)[col].agg(["mean", "std", "count"])
                keys = list(zip(g["method"], g["settings"]))
                mean = [stats["mean"].get(k, math.nan) for k in keys]
                std = [stats["std"].get(k, math.nan) for k in keys]
                count = [int(stats["count"].get(k, 0)) for k in keys]
            else:  # the table alone: means, and the std only for accuracy
                mean = list(g["acc/test mean"] if col == "acc" else g[metric])
                std = list(g["acc/test std"]) if col == "acc" else [math.nan] * len(g)
                count = list(g["runs"])
            ax.set_title(f"{dataset}: {title}", fontsize=11)
            if all(math.isnan(m) for m in mean):
                ax.text(0.5, 0.5, f"no run logged {metric}", ha="center", va="center", transform=ax.transAxes,
                        fontsize=10, color="#555555")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            x = range(len(mean))
            ax.bar(x, [0 if math.isnan(m) else m for m in mean], color=colours,
                   yerr=[0 if math.isnan(s) else s for s in std], capsize=3, ecolor="#333333")
            for i, (m, n) in enumerate(zip(mean, count)):
                if not math.isnan(m):
                    ax.annotate(f"n={n}", (i, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                                va="bottom", fontsize=9, color="white")
            if col == "acc":
                for method in ("baseline", "upper_bound"):
                    ref = g[g["method"] == method]["acc/test mean"].mean()
                    if not math.isnan(ref):
                        ax.axhline(ref, color=COLOURS[method], linestyle="--", linewidth=1,
                                   label=f"{method} {ref:.3f}")
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8, loc="upper left")
            if col in ("acc", "acc_cf", "flip", "ev"):
                ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"{metric} ({better})", fontsize=9)
            ax.set_xticks(list(x), labels, fontsize=9)
    fig.suptitle("focusml compare: mean over runs (seeds), error bars one sample std, n = runs", fontsize=12)
    fig.tight_layout()
    if _upright_where_crowded(fig):
        fig.tight_layout()
    return fig


def _clash(labels) -> bool:
    """Whether any two of the drawn tick labels overlap."""
    boxes = [t.get_window_extent() for t in labels if t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _upright_where_crowded(fig) -> bool:
    """Turn the x labels of every panel where two of them overlap by 90° (each then needs only its line
    height, which the panel width leaves room for: about 0.5 inch a bar); True if any was turned."""
    fig.canvas.draw()
    turned = False
    for ax in fig.axes:
        if _clash(ax.get_xticklabels()):
            ax.tick_params(axis="x", labelrotation=90)
            turned = True
    return turned


def bar_chart(table: pd.DataFrame):
    """The comparison chart from the table alone (`chart` without the runs: std for accuracy only)."""
    return chart(table)


def write_report(table: pd.DataFrame, out_dir: str | Path, runs: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write comparison.md (with the warnings), comparison.csv and comparison.png into out_dir; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "comparison.md", "csv": out / "comparison.csv", "chart": out / "comparison.png"}
    text = to_markdown(table)
    if table.attrs.get("warnings"):
        text += "\n### Warnings\n\n" + "\n".join(f"- {w}" for w in table.attrs["warnings"]) + "\n"
    paths["markdown"].write_text(text)
    table.to_csv(paths["csv"], index=False)
    fig = chart(table, runs)
    fig.savefig(paths["chart"], dpi=100)
    close(fig)
    return paths


def log_report(table: pd.DataFrame, paths: dict[str, Path], experiment: str, dataset: str | None = None) -> str:
    """Log the report files as artifacts of a comparison run (named `compare-<dataset|all>`, tagged
    `focusml.kind=comparison`: filter with `tags.focusml.kind = 'comparison'`); return its run id."""
    tags = {COMPARISON_TAG: "true", "focusml.kind": "comparison", "focusml.compared_dataset": dataset or "all"}
    if table.attrs.get("warnings"):
        tags["focusml.warnings"] = " | ".join(table.attrs["warnings"])[:5000]
    with tracking.start_run(experiment, f"compare-{dataset or 'all'}", tags=tags) as active:
        tracking.log_params({"compare_dataset": dataset or "all", "compared_runs": int(table["runs"].sum())})
        for path in paths.values():
            tracking.log_artifact(path, artifact_path="comparison")
        single = table.groupby(["dataset", "method"])["settings"].transform("count") == 1
        metrics = {f"gap_closed/{r['dataset']}/{r['method']}": r["gap_closed"] for _, r in table[single].iterrows()}
        tracking.log_metrics(metrics)
        return active.info.run_id


def _best(g: pd.DataFrame) -> str | None:
    """`name (acc/test, gap closed)` of the refinement method (not a reference) with the highest mean acc/test."""
    methods = g[~g["method"].isin(("baseline", "upper_bound"))]
    if not methods["acc/test mean"].notna().any():
        return None
    best = methods.loc[methods["acc/test mean"].idxmax()]
    gap = "" if pd.isna(best["gap_closed"]) else f", {100 * best['gap_closed']:.0f}% of the gap closed"
    name = " ".join(filter(None, (best["method"], best["settings"])))
    return f"**{name}** (acc/test {best['acc/test mean']:.3f}{gap})"


def note_markdown(table: pd.DataFrame, runs: pd.DataFrame, experiment_id: str, comparison_run: str | None = None,
                  links: bool = True) -> str:
    """focusml's section of the experiment's description (Markdown, which the MLflow UI shows above the runs):
    first line, the best refinement method per dataset (the UI shows only that line until expanded); then per
    dataset method, acc/test, gap closed and acc/test_cf with a link to each run (`links=False`: the run count
    instead, for a comparison too long with them), and the comparison run's chart."""
    groups = list(table.groupby("dataset", sort=False))
    best = [f"on {dataset} {b}" for dataset, g in groups if (b := _best(g))]
    parts = ["**focusml compare**, best where the shortcut is broken: " + "; ".join(best) if best else
             "**focusml compare**: no refinement method compared yet, only the references."]
    if comparison_run:
        page = tracking.ui_page(experiment_id, comparison_run)
        parts.append(f"From the comparison run [{comparison_run[:8]}]({page}) (its files: Artifacts → comparison); "
                     "gap closed: the share of the baseline → upper-bound accuracy gap a method closes.")
    for dataset, g in groups:
        r = runs[runs["dataset"] == dataset].sort_values("seed", key=lambda x: pd.to_numeric(x, errors="coerce"))
        rows = []
        for (_, row), shown in zip(g.iterrows(), display_rows(g)):
            mine = r[(r["method"] == row["method"]) & (r["settings"] == row["settings"])]
            run_links = " ".join(f"[{f's{seed}' if seed else rid[:8]}]({tracking.ui_page(experiment_id, rid)})"
                                 for rid, seed in zip(mine["run_id"], mine["seed"]))
            rows.append({"method": " ".join(filter(None, (row["method"], row["settings"]))),
                         "acc/test": shown["acc/test"], "gap closed (paired)": shown["gap closed (paired)"],
                         "acc/test_cf": shown["acc/test_cf"], "runs": run_links if links else shown["runs"]})
        parts += [f"#### {dataset}", markdown_table(rows)]
    if table.attrs.get("warnings"):
        parts.append("**Warnings**\n\n" + "\n".join(f"- {w}" for w in table.attrs["warnings"]))
    if comparison_run:  # the UI serves a run's artifacts at get-artifact, relative to its own address
        parts.append(f"![comparison chart](get-artifact?path=comparison%2Fcomparison.png&run_uuid={comparison_run})")
    return "\n\n".join(parts) + "\n"


def write_note(table: pd.DataFrame, runs: pd.DataFrame, comparison_run: str | None = None) -> str:
    """Write `note_markdown` into the experiment's description (`mlflow.note.content`), below the user's
    text, replacing focusml's previous section; without the run links if they make it too long."""
    eid = table.attrs["experiment_id"]
    return tracking.write_note(eid, note_markdown(table, runs, eid, comparison_run),
                               note_markdown(table, runs, eid, comparison_run, links=False))


def report(experiment: str | None = None, dataset: str | None = None, out_dir: str | Path | None = None,
           log: bool = True, include_children: bool = False) -> tuple[pd.DataFrame, dict[str, Path], str | None]:
    """compare → write_report → log_report → write_note (the table in the experiment's description);
    returns (table, paths, comparison run id or None). `log=False` writes the files only."""
    table, runs = _compare(experiment, dataset, include_children)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="focusml-compare-"))
    paths = write_report(table, out_dir, runs)
    run_id = None
    if log:
        run_id = log_report(table, paths, table.attrs["experiment"], dataset)
        write_note(table, runs, run_id)
    return table, paths, run_id
