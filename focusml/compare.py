"""Cross-run comparison: every method against the baseline and upper bound, read from MLflow.

`load_runs` reads an experiment's runs (mlflow.search_runs → pandas) and keeps the finished
focusml training runs: tagged `focusml.method` / `focusml.dataset` by `focusml.experiment.run`,
with an `acc/test` metric, not themselves comparison runs (tag `focusml.comparison`) and, unless
asked, not nested runs (Optuna trials are children of their study's run and would mix every λ
tried into one row).

`summarise` pairs every run with the baseline and the upper bound of the same dataset and seed
(and the same data seed and model, where logged: a different network or data draw is not the
same reference) and gives one row per dataset, method and method settings (λ, copies, p,
non-default mask augmentation):

    gap_closed = mean over paired runs of (acc − acc_baseline) / (acc_upper − acc_baseline)

where acc_baseline / acc_upper are the `acc/test` of that seed's baseline / upper-bound runs
(averaged if there are several). A run without both references stays in the table, counted in
`runs` but not in `paired`, and a row with no paired run has an empty gap closed.

`write_report` writes the table as Markdown and CSV and a bar chart; `log_report` logs the three
as artifacts of a comparison run (tagged so it is never compared itself).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from focusml import FocusmlError

COMPARISON_TAG = "focusml.comparison"
PAIR_ON = ("dataset", "seed", "data_seed", "model")
AUGMENT_DEFAULTS = {"dilate": 0.0, "jitter": 0.0, "scale": 0.0, "blur": 0.0, "keep_fraction": 1.0}
COLUMNS = ["dataset", "method", "settings", "runs", "acc/test mean", "acc/test std", "wr/test", "cam_in_mask/test",
           "gap_closed", "paired", "time/epoch_s", "time_vs_baseline"]
_METRICS = {"acc": "metrics.acc/test", "wr": "metrics.wr/test", "cim": "metrics.cam_in_mask/test",
            "time": "metrics.time/epoch_s_mean"}


def _settings(row: pd.Series, method: str) -> str:
    """The options that make runs of one method differ: its own params, then non-default augmentation."""
    from focusml import methods

    cls = methods.METHODS.get(method)
    parts = []
    for p in (cls.params if cls else ()):
        value = row.get(f"params.{p.name}")
        if isinstance(value, str) and value != "":
            parts.append(f"{p.name}={value}")
    if cls is None or cls.uses_masks:
        for key, default in AUGMENT_DEFAULTS.items():
            value = row.get(f"params.{key}")
            try:
                if isinstance(value, str) and value != "" and float(value) != default:
                    parts.append(f"{key}={value}")
            except ValueError:
                parts.append(f"{key}={value}")
    return " ".join(parts)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-missing when no run logged it (search_runs only returns columns that exist)."""
    return df[name] if name in df.columns else pd.Series(None, index=df.index, dtype=object)


def tidy_runs(raw: pd.DataFrame, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """One row per comparable run: run_id, dataset, method, settings, pairing keys, metrics."""
    out_cols = ["run_id", "dataset", "method", "settings", *PAIR_ON[1:], "acc", "wr", "cim", "time"]
    if raw.empty or "tags.focusml.method" not in raw.columns:
        return pd.DataFrame(columns=out_cols)
    keep = (_column(raw, "status") == "FINISHED") & raw["tags.focusml.method"].notna()
    keep &= _column(raw, "tags.focusml.dataset").notna() & _column(raw, "metrics.acc/test").notna()
    keep &= _column(raw, f"tags.{COMPARISON_TAG}").isna()
    if not include_children:
        keep &= _column(raw, "tags.mlflow.parentRunId").isna()
    raw = raw[keep]
    if dataset:
        raw = raw[raw["tags.focusml.dataset"] == dataset]
    tidy = pd.DataFrame({
        "run_id": raw["run_id"],
        "dataset": raw["tags.focusml.dataset"],
        "method": raw["tags.focusml.method"],
        "settings": [_settings(row, row["tags.focusml.method"]) for _, row in raw.iterrows()],
    })
    for key in PAIR_ON[1:]:
        tidy[key] = _column(raw, f"params.{key}").fillna("").astype(str)
    for short, col in _METRICS.items():
        tidy[short] = pd.to_numeric(_column(raw, col), errors="coerce")
    return tidy.reset_index(drop=True)[out_cols]


def _reference(runs: pd.DataFrame, method: str) -> pd.Series:
    """Mean acc/test of a reference method per pairing key."""
    ref = runs[runs["method"] == method]
    return ref.groupby(list(PAIR_ON))["acc"].mean()


def _order(method: str) -> tuple:
    from focusml import methods

    names = list(methods.METHODS)
    return (names.index(method), "") if method in names else (len(names), method)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Group tidy runs into the comparison table (COLUMNS), one row per dataset/method/settings."""
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.copy()
    key = list(PAIR_ON)
    base, upper = _reference(runs, "baseline"), _reference(runs, "upper_bound")
    idx = pd.MultiIndex.from_frame(runs[key])
    b = base.reindex(idx).to_numpy()
    u = upper.reindex(idx).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = (runs["acc"].to_numpy() - b) / (u - b)
    runs["gap"] = np.where(np.isfinite(gap), gap, np.nan)
    rows = []
    for (dataset, method, settings), g in runs.groupby(["dataset", "method", "settings"], sort=False):
        base_time = runs[(runs["dataset"] == dataset) & (runs["method"] == "baseline")]["time"].mean()
        time = g["time"].mean()
        rows.append({
            "dataset": dataset, "method": method, "settings": settings, "runs": len(g),
            "acc/test mean": g["acc"].mean(), "acc/test std": g["acc"].std(ddof=1) if len(g) > 1 else np.nan,
            "wr/test": g["wr"].mean(), "cam_in_mask/test": g["cim"].mean(),
            "gap_closed": g["gap"].mean(), "paired": int(g["gap"].notna().sum()),
            "time/epoch_s": time, "time_vs_baseline": time / base_time if base_time and base_time > 0 else np.nan,
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["_o"] = [_order(m) for m in table["method"]]
    return table.sort_values(["dataset", "_o", "settings"]).drop(columns="_o").reset_index(drop=True)


def load_runs(experiment: str, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """The experiment's comparable runs as tidy rows (see `tidy_runs`). Needs tracking set up."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in mlflow.search_experiments())) or "none"
        raise FocusmlError(f"experiment '{experiment}' not found in {mlflow.get_tracking_uri()} (experiments: {names}). "
                           "Pass --experiment NAME, or set MLFLOW_TRACKING_URI to the store your runs went to.")
    raw = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="pandas")
    return tidy_runs(raw, dataset or None, include_children)


def compare(experiment: str, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """The comparison table of an experiment (optionally one dataset). Raises if there is nothing to compare."""
    from focusml import tracking

    tracking.setup()
    runs = load_runs(experiment, dataset, include_children)
    if runs.empty:
        where = f" on dataset '{dataset}'" if dataset else ""
        raise FocusmlError(f"experiment '{experiment}' has no finished focusml training runs{where} to compare. "
                           f"Train some first, e.g. `focusml train --method baseline --experiment {experiment}`.")
    return summarise(runs)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}f}"


def display_rows(table: pd.DataFrame) -> list[dict]:
    """Rows formatted for people: accuracy as mean ± std, gap closed as a percentage."""
    rows = []
    for _, r in table.iterrows():
        acc = _fmt(r["acc/test mean"]) + (f" ± {_fmt(r['acc/test std'])}" if not pd.isna(r["acc/test std"]) else "")
        gap = "" if pd.isna(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f}% ({r['paired']})"
        ratio = "" if pd.isna(r["time_vs_baseline"]) else f" ({r['time_vs_baseline']:.2f}×)"
        rows.append({"method": r["method"], "settings": r["settings"], "runs": str(r["runs"]), "acc/test": acc,
                     "wr/test": _fmt(r["wr/test"], 1), "cam_in_mask/test": _fmt(r["cam_in_mask/test"]),
                     "gap closed (paired)": gap, "s/epoch (×baseline)": _fmt(r["time/epoch_s"], 2) + ratio})
    return rows


def to_markdown(table: pd.DataFrame) -> str:
    parts = []
    for dataset, g in table.groupby("dataset", sort=False):
        rows = display_rows(g)
        cols = list(rows[0])
        lines = [f"### {dataset}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def bar_chart(table: pd.DataFrame):
    """acc/test per method (± std), one panel per dataset, baseline and upper bound as lines."""
    from focusml.figures import plt

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
    from focusml.figures import close

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
    import mlflow

    from focusml import tracking

    tags = {COMPARISON_TAG: "true", "focusml.kind": "comparison"}
    with tracking.start_run(experiment, f"compare-{dataset or 'all'}", tags=tags) as active:
        tracking.log_params({"compare_dataset": dataset or "all", "compared_runs": int(table["runs"].sum())})
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="comparison")
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
