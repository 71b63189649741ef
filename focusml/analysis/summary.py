"""Numbers across runs, in pandas and without tracking: gap closed, mean ± std, the comparison table.

This is where the project's cross-run formulas live, once: `focusml compare` (which reads the
runs from MLflow, `focusml.analysis.compare`) and the benchmarks (which train untracked) both
summarise through it, and it imports neither MLflow nor the tracking package.

`tidy_runs` turns an experiment's runs (`mlflow.search_runs` rows) into one row per comparable
run: finished focusml training runs, tagged `focusml.method` / `focusml.dataset`, with an
`acc/test` metric, not themselves comparison runs (tag `focusml.comparison`) and, unless asked,
not nested runs (Optuna trials are children of their study's run and would mix every λ tried
into one row).

`summarise` pairs every run with the baseline and the upper bound of the same dataset and seed
(and the same data seed and model, where logged: a different network or data draw is not the
same reference) and gives one row per dataset, method and method settings (λ, copies, p,
non-default mask augmentation):

    gap_closed = mean over paired runs of (acc − acc_baseline) / (acc_upper − acc_baseline)

where acc_baseline / acc_upper are the `acc/test` of that seed's baseline / upper-bound runs
(averaged if there are several). A run without both references stays in the table, counted in
`runs` but not in `paired`, and a row with no paired run has an empty gap closed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from focusml.core import methods

COMPARISON_TAG = "focusml.comparison"
PAIR_ON = ("dataset", "seed", "data_seed", "model")
AUGMENT_DEFAULTS = {"dilate": 0.0, "jitter": 0.0, "scale": 0.0, "blur": 0.0, "keep_fraction": 1.0}
#: run options that make runs of one method differ in what they learn from: the annotations and the start
ANNOTATION_KEYS = ("mask_budget", "mask_corruption", "corruption_strength")
COLUMNS = ["dataset", "method", "settings", "runs", "acc/test mean", "acc/test std", "gap_closed", "paired",
           "acc/test_cf", "flip/test", "evidence_in_mask/test", "wr/test", "cam_in_mask/test", "time/epoch_s",
           "time_vs_baseline"]
#: short name in the tidy frame → the MLflow metric it comes from
METRICS = {"acc": "acc/test", "acc_cf": "acc/test_cf", "flip": "flip/test", "ev": "evidence_in_mask/test",
           "wr": "wr/test", "cim": "cam_in_mask/test", "time": "time/epoch_s_mean",
           "val": "selected/acc/val", "val_cf": "selected/acc/val_cf"}


# -- the formulas ------------------------------------------------------------------------------


def gap_closed(acc, acc_baseline, acc_upper) -> np.ndarray:
    """(acc − acc_baseline) / (acc_upper − acc_baseline), elementwise; NaN where undefined
    (a missing reference, or a baseline as good as the upper bound)."""
    acc, base, upper = (np.asarray(v, dtype=float) for v in (acc, acc_baseline, acc_upper))
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = (acc - base) / (upper - base)
    return np.where(np.isfinite(gap), gap, np.nan)


def mean_std(frame: pd.DataFrame, by: str | list[str], columns: list[str]) -> pd.DataFrame:
    """Per group: `<column> mean` and `<column> std` (sample std, ddof 1; NaN for one value), and `n`."""
    aggs = {f"{c} {stat}": (c, stat) for c in columns for stat in ("mean", "std")}
    return frame.groupby(by, sort=False).agg(n=(columns[0], "size"), **aggs)


def fmt_mean_std(mean: float, std: float, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """'m ± s' (just 'm' when std is NaN; empty when mean is NaN)."""
    if pd.isna(mean):
        return ""
    text = f"{scale * mean:.{digits}f}{unit}"
    return text if pd.isna(std) else f"{text} ± {scale * std:.{digits}f}{unit}"


# -- an experiment's runs -----------------------------------------------------------------------


def _settings(row: pd.Series, method: str) -> str:
    """The options that make runs of one method differ: its own params, then non-default augmentation."""
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
        for key in ANNOTATION_KEYS:
            value = row.get(f"params.{key}")
            if isinstance(value, str) and value not in ("", "''", "None", "none"):
                parts.append(f"{key}={value}")
    init = row.get("params.init_from")
    if isinstance(init, str) and init not in ("", "''", "None"):
        parts.append("init_from=yes")  # refined from a trained model (the source differs per seed)
    return " ".join(parts)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-missing when no run logged it (search_runs only returns columns that exist)."""
    return df[name] if name in df.columns else pd.Series(None, index=df.index, dtype=object)


def tidy_runs(raw: pd.DataFrame, dataset: str | None = None, include_children: bool = False) -> pd.DataFrame:
    """One row per comparable run: run_id, dataset, method, settings, pairing keys, metrics."""
    out_cols = ["run_id", "dataset", "method", "settings", *PAIR_ON[1:], *METRICS]
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
    for short, name in METRICS.items():
        tidy[short] = pd.to_numeric(_column(raw, f"metrics.{name}"), errors="coerce")
    return tidy.reset_index(drop=True)[out_cols]


def _reference(runs: pd.DataFrame, method: str) -> pd.Series:
    """Mean acc/test of a reference method per pairing key."""
    ref = runs[runs["method"] == method]
    return ref.groupby(list(PAIR_ON))["acc"].mean()


def _order(method: str) -> tuple:
    names = list(methods.METHODS)
    return (names.index(method), "") if method in names else (len(names), method)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Group tidy runs into the comparison table (COLUMNS), one row per dataset/method/settings."""
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.copy()
    idx = pd.MultiIndex.from_frame(runs[list(PAIR_ON)])
    base = _reference(runs, "baseline").reindex(idx).to_numpy()
    upper = _reference(runs, "upper_bound").reindex(idx).to_numpy()
    runs["gap"] = gap_closed(runs["acc"].to_numpy(), base, upper)
    table = runs.groupby(["dataset", "method", "settings"], sort=False).agg(**{
        "runs": ("acc", "size"), "acc/test mean": ("acc", "mean"), "acc/test std": ("acc", "std"),
        "gap_closed": ("gap", "mean"), "paired": ("gap", "count"), "acc/test_cf": ("acc_cf", "mean"),
        "flip/test": ("flip", "mean"), "evidence_in_mask/test": ("ev", "mean"), "wr/test": ("wr", "mean"),
        "cam_in_mask/test": ("cim", "mean"), "time/epoch_s": ("time", "mean"),
    }).reset_index()
    base_time = runs[runs["method"] == "baseline"].groupby("dataset")["time"].mean()
    per_dataset = table["dataset"].map(base_time).astype(float)
    table["time_vs_baseline"] = (table["time/epoch_s"] / per_dataset).where(per_dataset > 0)
    table["_o"] = [_order(m) for m in table["method"]]
    table = table.sort_values(["dataset", "_o", "settings"]).drop(columns="_o").reset_index(drop=True)
    return table[COLUMNS]


# -- the table for people -------------------------------------------------------------------------


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
        gap = "" if pd.isna(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f}% ({r['paired']})"
        ratio = "" if pd.isna(r["time_vs_baseline"]) else f" ({r['time_vs_baseline']:.2f}×)"
        rows.append({"method": r["method"], "settings": r["settings"], "runs": str(r["runs"]),
                     "acc/test": fmt_mean_std(r["acc/test mean"], r["acc/test std"]),
                     "gap closed (paired)": gap, "acc/test_cf": _fmt(r["acc/test_cf"]), "flip/test": _fmt(r["flip/test"]),
                     "evidence_in_mask/test": _fmt(r["evidence_in_mask/test"]), "wr/test": _fmt(r["wr/test"], 1),
                     "cam_in_mask/test": _fmt(r["cam_in_mask/test"]),
                     "s/epoch (×baseline)": _fmt(r["time/epoch_s"], 2) + ratio})
    return rows


def markdown_table(rows: list[dict] | pd.DataFrame) -> str:
    """A Markdown (pipe) table of already formatted cells, text as given."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return frame.to_markdown(index=False, disable_numparse=True, stralign="left")


def to_markdown(table: pd.DataFrame) -> str:
    """The comparison table as Markdown, one section per dataset."""
    parts = [f"### {dataset}\n\n{markdown_table(display_rows(g))}" for dataset, g in table.groupby("dataset", sort=False)]
    return "\n\n".join(parts) + "\n"
