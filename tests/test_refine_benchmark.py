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
