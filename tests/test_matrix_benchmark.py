"""benchmarks/matrix.py end to end at toy size: resumable JSON lines, the per-dataset table, the
validation/test correlation, the upper bound's spread, a validation-only grid and the comparison run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_matrix_benchmark_reports_chooses_on_validation_and_resumes(tmp_path, cli_env):
    db = tmp_path / "bench.db"
    env = dict(cli_env, MLFLOW_TRACKING_URI=f"sqlite:///{db}", PYTHONPATH=str(REPO))
    args = [sys.executable, str(REPO / "benchmarks" / "matrix.py"), "--datasets", "decoy-digits", "--methods",
            "baseline,upper_bound,pas", "--seeds", "0,", "--epochs", "1", "--jobs", "1", "--grid", "pas.lam=0.1,1",
            "--out", "runs.jsonl", "--report", "matrix.md", "--log-to", "bench"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["options"].get("lam")) for r in rows) == [
        ("baseline", None), ("pas", "0.1"), ("pas", "1"), ("upper_bound", None)]
    assert all("acc/test_cf" in r["metrics"] and "selected/acc/val_cf" in r["metrics"] for r in rows)
    report = (tmp_path / "matrix.md").read_text()
    for needle in ("### decoy-digits", "acc/test_cf", "evidence_in_mask/test", "gap closed",
                   "Does validation see the shortcut", "Upper bound over seeds", "Validation-only choice"):
        assert needle in report
    chosen = [line for line in report.splitlines() if line.startswith("| pas") and "◀" in line]
    assert chosen  # the λ with the best mean acc/val_cf (after one epoch both may tie: ties are all marked)

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "4 runs, 4 already in runs.jsonl" in again.stderr
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4  # nothing trained twice

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["bench"])
    assert len(runs) == 2 and set(runs["tags.focusml.kind"]) == {"comparison"}
