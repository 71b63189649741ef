"""benchmarks/refine.py end to end at toy size: tracked runs, resumable JSON lines, the three tables, the curve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_refine_benchmark_runs_tracked_and_resumes(tmp_path, cli_env):
    db = tmp_path / "refine.db"
    env = dict(cli_env, MLFLOW_TRACKING_URI=f"sqlite:///{db}", PYTHONPATH=str(REPO))
    args = [sys.executable, str(REPO / "benchmarks" / "refine.py"), "all", "--datasets", "decoy-digits", "--methods",
            "pas", "--seeds", "1", "--epochs", "2", "--refine-epochs", "1", "--budgets", "10,all", "--corruptions",
            "shifted", "--out", "runs.jsonl", "--report", "refine.md", "--figure", "budget.png", "--log-to", "refine-report"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # baseline, upper bound, pas from scratch, refined, budget 10, shifted
    report = (tmp_path / "refine.md").read_text()
    for heading in ("Gap closed vs annotated training images: decoy-digits", "Gap closed with imperfect masks",
                    "Refine the trained baseline vs train from scratch"):
        assert heading in report
    assert "| pas " in report and "10 images" in report and "shifted 0.25" in report
    assert (tmp_path / "budget.png").stat().st_size > 1000
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["refine"])
    assert len(runs) == 6 and set(runs["status"]) == {"FINISHED"}
    refined = runs[runs["params.init_from"] != ""]
    baseline = rows[0]["run_id"]
    assert list(refined["tags.focusml.init_from"]) == [baseline]
    assert sorted(runs["params.annotated_images"].dropna()) == ["10", "1000", "1000", "1000"]
    (comparison,) = mlflow.search_runs(experiment_names=["refine-report"]).itertuples()
    assert comparison.status == "FINISHED"
    again = subprocess.run(args[:-2] + ["--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "6 runs, 6 already in runs.jsonl" in again.stderr


@pytest.mark.slow
def test_stages_study_refines_the_baseline_head_then_full(tmp_path, cli_env):
    """`stages`: the head refit starts from the baseline run, the full stage from the head refit; the table
    has every stage and what auto keeps."""
    env = dict(cli_env, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'refine.db'}", PYTHONPATH=str(REPO))
    args = [sys.executable, str(REPO / "benchmarks" / "refine.py"), "stages", "--datasets", "decoy-digits", "--methods",
            "pas", "--seeds", "1", "--epochs", "2", "--refine-epochs", "1", "--budgets", "all", "--out", "runs.jsonl",
            "--report", "refine.md"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["method"]: r for r in map(json.loads, (tmp_path / "runs.jsonl").read_text().splitlines())}
    assert set(rows) == {"baseline", "upper_bound", "pas", "head_refit", "random_crop"}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'refine.db'}")
    runs = mlflow.search_runs(experiment_names=["refine"]).set_index("run_id")
    assert runs.loc[rows["head_refit"]["run_id"], "tags.focusml.init_from"] == rows["baseline"]["run_id"]
    assert runs.loc[rows["random_crop"]["run_id"], "tags.focusml.init_from"] == rows["head_refit"]["run_id"]
    report = (tmp_path / "refine.md").read_text()
    for row in ("| pas from scratch", "| head refit ", "| head refit + full", "| auto (kept by acc/val_cf)"):
        assert row in report
    assert "every mask" in report and rows["head_refit"]["history"][0]["time/cpu_s"] > 0
