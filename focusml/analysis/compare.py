"""Cross-run comparison: every method against the baseline and upper bound, read from MLflow.

`compare` reads an experiment's runs through `focusml.tracking` and summarises them with
`focusml.analysis.summary` (where the gap-closed formula lives: see its docstring for which runs
count and how they are paired). `write_report` writes the table as Markdown and CSV and a bar
chart; `log_report` logs the three as artifacts of a comparison run (tagged so it is never
compared itself); `report` does all three.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd

from focusml import FocusmlError, tracking
from focusml.analysis.summary import (AUGMENT_DEFAULTS, COLUMNS, COMPARISON_TAG, PAIR_ON, display_rows, summarise,
                                      tidy_runs, to_markdown)
from focusml.figures import close, plt

__all__ = ["AUGMENT_DEFAULTS", "COLUMNS", "COMPARISON_TAG", "PAIR_ON", "bar_chart", "compare", "display_rows",
           "load_runs", "log_report", "report", "summarise", "tidy_runs", "to_markdown", "write_report"]


def load_runs(experiment: str, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """The experiment's comparable runs as tidy rows (see `summary.tidy_runs`). Needs tracking set up."""
    return tidy_runs(tracking.search_runs(experiment), dataset or None, include_children)


def compare(experiment: str, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """The comparison table of an experiment (optionally one dataset). Raises if there is nothing to compare."""
    tracking.setup()
    runs = load_runs(experiment, dataset, include_children)
    if runs.empty:
        where = f" on dataset '{dataset}'" if dataset else ""
        raise FocusmlError(f"experiment '{experiment}' has no finished focusml training runs{where} to compare. "
                           f"Train some first, e.g. `focusml train --method baseline --experiment {experiment}`.")
    return summarise(runs)


def bar_chart(table: pd.DataFrame):
    """acc/test per method (± std), one panel per dataset, baseline and upper bound as lines."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6.0, 0.9 * len(table) + 2), 3.6 * len(datasets)),
                             squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        g = table[table["dataset"] == dataset]
        refs = {m: g[g["method"] == m]["acc/test mean"].mean() for m in ("baseline", "upper_bound")}
        bars = g[~g["method"].isin(list(refs))]
        labels = [f"{m}\n{s}" if s else m for m, s in zip(bars["method"], bars["settings"])]
        ax.bar(range(len(bars)), bars["acc/test mean"], yerr=bars["acc/test std"].fillna(0), capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(bars)), labels, rotation=30, ha="right", fontsize=8)
        for method, colour in (("baseline", "#c44e52"), ("upper_bound", "#55a868")):
            if not math.isnan(refs[method]):
                ax.axhline(refs[method], color=colour, linestyle="--", label=f"{method} {refs[method]:.3f}")
        ax.set_ylim(0, 1)
        ax.set_ylabel("acc/test")
        ax.set_title(f"{dataset}: accuracy with the shortcut broken")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def write_report(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and comparison.png into out_dir; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "comparison.md", "csv": out / "comparison.csv", "chart": out / "comparison.png"}
    paths["markdown"].write_text(to_markdown(table))
    table.to_csv(paths["csv"], index=False)
    fig = bar_chart(table)
    fig.savefig(paths["chart"], dpi=120)
    close(fig)
    return paths


def log_report(table: pd.DataFrame, paths: dict[str, Path], experiment: str, dataset: str | None = None) -> str:
    """Log the report files as artifacts of a comparison run; return its run id."""
    tags = {COMPARISON_TAG: "true", "focusml.kind": "comparison"}
    with tracking.start_run(experiment, f"compare-{dataset or 'all'}", tags=tags) as active:
        tracking.log_params({"compare_dataset": dataset or "all", "compared_runs": int(table["runs"].sum())})
        for path in paths.values():
            tracking.log_artifact(path, artifact_path="comparison")
        single = table.groupby(["dataset", "method"])["settings"].transform("count") == 1
        metrics = {f"gap_closed/{r['dataset']}/{r['method']}": r["gap_closed"] for _, r in table[single].iterrows()}
        tracking.log_metrics(metrics)
        return active.info.run_id


def report(experiment: str, dataset: str | None = None, out_dir: str | Path | None = None,
           log: bool = True, include_children: bool = False) -> tuple[pd.DataFrame, dict[str, Path], str | None]:
    """compare → write_report → log_report; returns (table, paths, comparison run id or None)."""
    table = compare(experiment, dataset, include_children)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="focusml-compare-"))
    paths = write_report(table, out_dir)
    run_id = log_report(table, paths, experiment, dataset) if log else None
    return table, paths, run_id
