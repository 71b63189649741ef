"""benchmarks/overhead.py end to end at toy size: the side-by-side table with ratios to the bare loop and
where a tracked run's time goes. (Its trials-per-hour part runs `focusml tune` with 1 and 2 workers,
which tests/test_tune.py covers; at toy size it would add four interpreter start-ups to the suite.)"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overhead_benchmark_prints_ratios_and_phases(tmp_path, cli_env, monkeypatch, capsys):
    # in this process (its subprocesses start the focusml CLI as users do): one interpreter start-up less
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    spec = importlib.util.spec_from_file_location("overhead_benchmark", REPO / "benchmarks" / "overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--epochs", "1", "--repeats", "1", "--tune-trials", "0", "--no-warm-up",
                       "--phases", "--phase-epochs", "1"]) == 0
    out = capsys.readouterr().out
    cells = [line.split("|") for line in out.splitlines() if line.startswith("|")]
    cases = {c[2].strip() for c in cells if c[1].strip() == "1"}  # the 1-epoch rows of the table
    assert {"bare loop", "bare script", "fit alone", "focusml train"} <= cases, out
    assert "÷ bare loop" in out and "÷ bare script" in out
    assert "Trials per hour" not in out  # --tune-trials 0 skips it
    for part in ("start: imports", "epoch: training steps", "epoch: validation", "epoch: CAM grid", "end: test metrics"):
        assert part in out, part
    assert not list(tmp_path.iterdir())  # everything ran in a scratch folder of its own
