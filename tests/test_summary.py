"""The cross-run formulas without tracking: gap closed, mean ± std, the comparison table and its Markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from focusml.analysis.summary import COLUMNS, fmt_mean_std, gap_closed, mean_std, summarise, tidy_runs, to_markdown


def _raw(rows: list[dict]) -> pd.DataFrame:
    """Rows shaped like `mlflow.search_runs` output (tags./params./metrics. columns, params as strings)."""
    out = []
    for i, r in enumerate(rows):
        row = {"run_id": f"r{i}", "status": r.get("status", "FINISHED"),
               "tags.focusml.method": r["method"], "tags.focusml.dataset": r.get("dataset", "decoy-digits"),
               "params.seed": str(r["seed"]), "params.data_seed": "0", "params.model": "small",
               "metrics.acc/test": r["acc"], "metrics.wr/test": 10.0, "metrics.cam_in_mask/test": 0.1,
               "metrics.time/epoch_s_mean": r.get("time", 1.0)}
        row.update({f"params.{k}": v for k, v in r.get("params", {}).items()})
        if "parent" in r:
            row["tags.mlflow.parentRunId"] = r["parent"]
        out.append(row)
    return pd.DataFrame(out)


def test_gap_closed_is_undefined_without_a_gap_or_a_reference():
    got = gap_closed([0.5, 0.5, 0.5], [0.2, 0.4, np.nan], [0.8, 0.4, 0.9])
    assert got[0] == pytest.approx(0.5) and np.isnan(got[1]) and np.isnan(got[2])


def test_mean_std_is_a_sample_std_per_group():
    frame = pd.DataFrame({"m": ["a", "a", "b"], "x": [1.0, 3.0, 5.0]})
    stats = mean_std(frame, "m", ["x"])
    assert stats.loc["a", "x mean"] == 2.0 and stats.loc["a", "x std"] == pytest.approx(np.sqrt(2))
    assert stats.loc["b", "n"] == 1 and np.isnan(stats.loc["b", "x std"])
    assert fmt_mean_std(0.625, 0.0353553) == "0.625 ± 0.035" and fmt_mean_std(0.5, np.nan) == "0.500"


def test_summarise_pairs_each_run_with_its_seeds_references():
    raw = _raw([
        {"method": "baseline", "seed": 0, "acc": 0.2, "time": 2.0}, {"method": "upper_bound", "seed": 0, "acc": 0.8},
        {"method": "baseline", "seed": 1, "acc": 0.3, "time": 2.0}, {"method": "upper_bound", "seed": 1, "acc": 0.7},
        {"method": "pas", "seed": 0, "acc": 0.65, "params": {"lam": "10.0"}, "time": 3.0},
        {"method": "pas", "seed": 1, "acc": 0.6, "params": {"lam": "10.0"}, "time": 3.0},
        {"method": "pas", "seed": 7, "acc": 0.9, "params": {"lam": "10.0"}, "time": 3.0},  # no references
        {"method": "pas", "seed": 1, "acc": 0.1, "params": {"lam": "10.0"}, "parent": "r0"},  # a trial: skipped
        {"method": "pas", "seed": 1, "acc": 0.99, "params": {"lam": "10.0"}, "status": "FAILED"},  # skipped
    ])
    table = summarise(tidy_runs(raw))
    assert list(table.columns) == COLUMNS and list(table["method"]) == ["baseline", "upper_bound", "pas"]
    pas = table.iloc[2]
    assert pas["settings"] == "lam=10.0" and pas["runs"] == 3 and pas["paired"] == 2
    assert pas["gap_closed"] == pytest.approx(((0.65 - 0.2) / 0.6 + (0.6 - 0.3) / 0.4) / 2)
    assert pas["acc/test mean"] == pytest.approx((0.65 + 0.6 + 0.9) / 3)
    assert pas["time_vs_baseline"] == pytest.approx(1.5)
    assert summarise(tidy_runs(raw, include_children=True)).iloc[2]["runs"] == 4
    md = to_markdown(table)
    assert md.startswith("### decoy-digits") and "0.717 ± 0.161" in md and "75% (2)" in md



def test_annotation_budget_corruption_and_refining_make_separate_rows():
    raw = _raw([
        {"method": "baseline", "seed": 0, "acc": 0.2}, {"method": "upper_bound", "seed": 0, "acc": 0.8},
        {"method": "pas", "seed": 0, "acc": 0.5, "params": {"mask_budget": "10", "mask_corruption": "none"}},
        {"method": "pas", "seed": 0, "acc": 0.8, "params": {"mask_budget": "", "mask_corruption": "none"}},
        {"method": "pas", "seed": 0, "acc": 0.6, "params": {"mask_corruption": "shifted", "corruption_strength": "0.25"}},
        {"method": "pas", "seed": 0, "acc": 0.7, "params": {"init_from": "0123456789abcdef0123456789abcdef"}},
    ])
    table = summarise(tidy_runs(raw)).query("method == 'pas'").set_index("settings")
    assert table.loc["mask_budget=10", "gap_closed"] == pytest.approx(0.5)
    assert table.loc["", "gap_closed"] == pytest.approx(1.0)
    assert table.loc["mask_corruption=shifted corruption_strength=0.25", "gap_closed"] == pytest.approx(4 / 6)
    assert table.loc["init_from=yes", "gap_closed"] == pytest.approx(5 / 6)
