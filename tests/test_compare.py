"""`focusml compare` against a real MLflow server: pairing, gap closed, skipped runs, report files."""

from __future__ import annotations

import functools
import re
import uuid

import mlflow
import pytest
from mlflow.entities import Metric, Param

from focusml import FocusmlError
from focusml.analysis.compare import COMPARISON_TAG, compare, report


def _log_run(experiment: str, method: str, seed: int, acc: float, dataset: str = "decoy-digits", params=None,
         status: str = "FINISHED", parent: str | None = None, time: float = 1.0, wr: float = 20.0,
         client: mlflow.MlflowClient | None = None) -> str:
    """A run with the tags, params and metrics `focusml.tracking.run` logs (three HTTP calls)."""
    client = client or mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    tags = {"focusml.method": method, "focusml.dataset": dataset, "focusml.family": "x"}
    if parent:
        tags["mlflow.parentRunId"] = parent  # what mlflow.start_run(parent_run_id=...) sets
    run = client.create_run(exp_id, tags=tags)
    params = {"method": method, "dataset": dataset, "seed": seed, "data_seed": 0, "model": "small", "epochs": 20,
              **(params or {})}
    metrics = {"acc/test": acc, "wr/test": wr, "cam_in_mask/test": wr / 100, "time/epoch_s_mean": time}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _row(table, method, settings=""):
    rows = table[(table["method"] == method) & (table["settings"] == settings)]
    assert len(rows) == 1, table[["method", "settings"]]
    return rows.iloc[0]


@pytest.fixture(scope="module")
def logged(mlflow_server):
    """One experiment of hand-made runs, shared by the tests of this module (they only read it)."""
    name = f"cmp-{uuid.uuid4().hex[:8]}"
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    _log = functools.partial(_log_run, client=client)
    refs = {0: (0.2, 0.8), 1: (0.3, 0.7)}
    for seed, (b, u) in refs.items():
        _log(name, "baseline", seed, b, time=2.0)
        _log(name, "upper_bound", seed, u, time=2.0)
    _log(name, "pas", 0, 0.65, params={"lam": "10.0"}, time=2.2)  # gap (0.65−0.2)/0.6 = 0.75
    _log(name, "pas", 1, 0.6, params={"lam": "10.0"}, time=2.2)  # gap (0.6−0.3)/0.4 = 0.75
    _log(name, "pas", 0, 0.5, params={"lam": "1.0"}, time=2.2)  # another setting: own row, gap 0.5
    _log(name, "rrr", 0, 0.5, params={"lam": "1000.0"}, time=4.0)  # gap 0.5
    _log(name, "rrr", 7, 0.9, params={"lam": "1000.0"}, time=4.0)  # seed 7 has no references: unpaired
    _log(name, "rrr", 1, 0.99, params={"lam": "1000.0"}, status="FAILED")  # failed: skipped
    parent = _log(name, "rrr", 1, 0.7, params={"lam": "1000.0"}, time=4.0)  # gap (0.7−0.3)/0.4 = 1.0
    _log(name, "rrr", 1, 0.1, params={"lam": "1000.0"}, parent=parent)  # nested trial: skipped by default
    _log(name, "cdep", 0, 0.4, dataset="other-set", params={"lam": "10.0"})  # a dataset without references
    return name


@pytest.fixture
def experiment(logged, tracking_env):
    return logged


def test_compare_pairs_runs_with_their_references_and_computes_gap_closed(experiment):
    table = compare(experiment)
    digits = table[table["dataset"] == "decoy-digits"]
    assert list(digits["method"]) == ["baseline", "upper_bound", "pas", "pas", "rrr"]  # registry order
    assert _row(digits, "baseline")["gap_closed"] == pytest.approx(0.0)
    assert _row(digits, "upper_bound")["gap_closed"] == pytest.approx(1.0)
    pas = _row(digits, "pas", "lam=10.0")
    assert pas["runs"] == 2 and pas["paired"] == 2
    assert pas["gap_closed"] == pytest.approx(0.75)
    assert pas["acc/test mean"] == pytest.approx(0.625)
    assert pas["acc/test std"] == pytest.approx(0.0353553, rel=1e-4)
    assert _row(digits, "pas", "lam=1.0")["gap_closed"] == pytest.approx(0.5)
    rrr = _row(digits, "rrr", "lam=1000.0")
    assert rrr["runs"] == 3 and rrr["paired"] == 2  # the seed-7 run is kept, not paired
    assert rrr["gap_closed"] == pytest.approx((0.5 + 1.0) / 2)
    assert rrr["acc/test mean"] == pytest.approx((0.5 + 0.9 + 0.7) / 3)
    assert rrr["time/epoch_s"] == pytest.approx(4.0) and rrr["time_vs_baseline"] == pytest.approx(2.0)
    other = _row(table[table["dataset"] == "other-set"], "cdep", "lam=10.0")
    assert other["runs"] == 1 and other["paired"] == 0 and other.isna()["gap_closed"]

    with_children = compare(experiment, include_children=True)
    rrr = _row(with_children[with_children["dataset"] == "decoy-digits"], "rrr", "lam=1000.0")
    assert rrr["runs"] == 4 and rrr["gap_closed"] == pytest.approx((0.5 + 1.0 - 0.5) / 3)

    only = compare(experiment, dataset="other-set")
    assert list(only["dataset"]) == ["other-set"]


def test_report_writes_and_logs_the_files_and_is_not_compared_itself(experiment, tmp_path):
    table, paths, run_id = report(experiment, out_dir=tmp_path)
    assert {p.name for p in paths.values()} == {"comparison.md", "comparison.csv", "comparison.png"}
    md = paths["markdown"].read_text()
    assert "### decoy-digits" in md and "### other-set" in md
    assert re.search(r"\| pas +\| lam=10\.0 +\| 2 +\| 0\.625 ± 0\.035 +\|", md) and "75% (2)" in md
    assert paths["chart"].stat().st_size > 1000
    run = mlflow.get_run(run_id)
    assert run.data.tags[COMPARISON_TAG] == "true" and "focusml.method" not in run.data.tags
    assert run.data.metrics["gap_closed/decoy-digits/rrr"] == pytest.approx(0.75)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "comparison")}
    assert logged == {"comparison/comparison.md", "comparison/comparison.csv", "comparison/comparison.png"}
    again = compare(experiment)  # the comparison run is not a method run
    assert again["runs"].sum() == table["runs"].sum()


def test_compare_reads_a_real_training_run(tracking_env, tiny_config):
    from focusml.tracking import run

    name = f"cmp-real-{uuid.uuid4().hex[:8]}"
    result = run(tiny_config(experiment=name, method="baseline", seed=3, batch_size=128))
    acc = result.metrics["acc/test"]
    _log_run(name, "upper_bound", 3, acc + 0.4)
    _log_run(name, "counterexamples", 3, acc + 0.1, params={"copies": "1"})
    table = compare(name)
    base = _row(table, "baseline")
    assert base["acc/test mean"] == pytest.approx(acc) and base["gap_closed"] == pytest.approx(0.0)
    assert base["time/epoch_s"] == pytest.approx(result.metrics["time/epoch_s_mean"])
    assert _row(table, "counterexamples", "copies=1")["gap_closed"] == pytest.approx(0.25, rel=1e-6)


def test_compare_refuses_unknown_experiments_and_empty_ones(tracking_env):
    with pytest.raises(FocusmlError, match="not found"):
        compare(f"missing-{uuid.uuid4().hex[:8]}")
    name = f"cmp-empty-{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(name)
    with pytest.raises(FocusmlError, match="no finished focusml training runs"):
        compare(name)


def test_cli_compare_prints_one_table_per_dataset(experiment, tmp_path, capsys):
    from focusml.cli import main

    main(["compare", "--experiment", experiment, "--out", str(tmp_path / "rep"), "--no-log"])
    out = capsys.readouterr().out
    assert "decoy-digits" in out and "other-set" in out and "gap closed (paired)" in out
    assert (tmp_path / "rep" / "comparison.csv").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--experiment", f"missing-{uuid.uuid4().hex[:8]}"])
    assert exit_info.value.code == 2


def test_report_writes_the_table_into_the_experiments_description_below_the_users_text(experiment, tmp_path):
    from focusml.tracking import NOTE_MARKER, NOTE_TAG

    client = mlflow.MlflowClient()
    eid = client.get_experiment_by_name(experiment).experiment_id
    client.set_experiment_tag(eid, NOTE_TAG, "Written by hand: **keep**.")
    for _ in range(2):  # a second comparison replaces focusml's section, it does not add one
        _, _, run_id = report(experiment, out_dir=tmp_path)
    note = client.get_experiment(eid).tags[NOTE_TAG]
    assert note.startswith("Written by hand: **keep**.\n\n" + NOTE_MARKER) and note.count(NOTE_MARKER) == 1
    assert note.count("**focusml compare**") == 1 and "#### decoy-digits" in note and "#### other-set" in note
    assert f"#/experiments/{eid}/runs/{run_id}?workflowType=machine_learning" in note  # the comparison run, the newest
    assert f"run_uuid={run_id})" in note  # its chart
    assert re.search(r"\| pas lam=10\.0 +\| 0\.625 ± 0\.035 +\| 75% \(2\)", note)
