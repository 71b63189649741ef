"""Many machines, one study (issue 14): a real PostgreSQL cluster (the `postgres` fixture) behind a
real `mlflow server` started with `focusml server --backend-store-uri postgresql://…`, and
`focusml` processes that share nothing but the database URL and MLFLOW_TRACKING_URI (each its own
working directory and FOCUSML_CACHE), as separate machines would.

- 2 "machines" × 2 workers (`focusml tune --storage postgresql://… --workers 2 --n-trials 4`
  twice, on one study) finish exactly 8 trials: no duplicate, no loss, one MLflow child run each;
- 4 concurrent `focusml train` runs through the PostgreSQL-backed server log every metric of
  every epoch;
- a worker SIGKILLed mid-trial has its trial failed and retried with the same params, and the
  call still finishes its trials; a trial of a machine that died is failed once its heartbeat is
  stale (by the database's clock) and retried;
- tune calls starting together on a new database all open it; without the driver, one line
  naming `pip install 'focusml[postgres]'`.

Kept small (decoy-digits, 1-3 epochs) so the file runs in about two minutes on 2 cores; skipped
with the reason where the PostgreSQL binaries or psycopg2 are missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow import MlflowClient


PER_EPOCH = ("loss/train", "loss/ce", "acc/val", "acc/val_cf", "wr/val", "lr", "time/epoch_s")


@pytest.fixture(scope="module")
def pg_server(postgres, tmp_path_factory, free_port, wait_healthy, stop_group, venv_bin):
    """`focusml server` on a PostgreSQL backend store (loopback only); yields its URL."""
    root = tmp_path_factory.mktemp("pg-mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(venv_bin / "focusml"), "server", "--backend-store-uri", postgres.createdb("mlflow"),
         "--artifacts-destination", str(root / "artifacts"), "--port", str(port)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture
def machines(pg_server, cli_env, tmp_path, stop_group, venv_bin, monkeypatch):
    """`machines.start(name, *args, env={})`: `focusml ARGS` as machine `name` (its own working dir and cache),
    logging to the PostgreSQL-backed server; every process still running at the end is stopped."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_server)
    mlflow.set_tracking_uri(pg_server)
    procs = []

    class Machines:
        @staticmethod
        def dir(name: str) -> Path:
            path = tmp_path / name
            path.mkdir(exist_ok=True)
            return path

        @staticmethod
        def start(name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
            cwd = Machines.dir(name)
            full = dict(cli_env, MLFLOW_TRACKING_URI=pg_server, FOCUSML_CACHE=str(cwd / "cache"),
                        OMP_NUM_THREADS="1", **(env or {}))  # one thread each: many processes share 2 cores
            p = subprocess.Popen([str(venv_bin / "focusml"), *args], cwd=cwd,
                                 env=full, start_new_session=True, stdout=open(cwd / "out.txt", "w"),
                                 stderr=open(cwd / "err.txt", "w"))
            procs.append(p)
            return p

        @staticmethod
        def finish(name: str, p: subprocess.Popen, timeout: float = 600) -> None:
            code = p.wait(timeout=timeout)
            assert code == 0, f"{name} exit {code}: {(Machines.dir(name) / 'err.txt').read_text()[-3000:]}"

    yield Machines
    for p in procs:
        if p.poll() is None:
            stop_group(p)


def study_yaml(folder: Path, name: str, experiment: str) -> Path:
    """The tiny study of the tune tests (decoy-digits, 1 epoch, lr searched), as a machine's own copy."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "method": "baseline", "dataset": "decoy-digits", "study_name": name,
        "fixed": {"epochs": 1, "batch_size": 256, "device": "cpu", "log_model": False, "experiment": experiment},
        "search": {"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
        "objectives": ["acc/val"], "n_trials": 4, "sampler": "random", "seed": 0}))
    return path


def load(name: str, url: str) -> optuna.Study:
    from focusml.tune import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url)[0])


def children(experiment: str):
    """The trial runs of an experiment, by trial number."""
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    by_trial: dict[int, list] = {}
    for r in runs:
        if "optuna.trial_number" in r.data.tags:
            by_trial.setdefault(int(r.data.tags["optuna.trial_number"]), []).append(r)
    return runs, by_trial


@pytest.mark.server
@pytest.mark.slow
def test_two_machines_with_two_workers_each_finish_exactly_eight_trials(postgres, machines):
    storage = postgres.createdb("optuna_two")
    procs = {}
    for m in ("machine-a", "machine-b"):
        spec = study_yaml(machines.dir(m), "two-machines", "pg-two-machines")
        procs[m] = machines.start(m, "tune", str(spec), "--storage", storage, "--workers", "2", "--n-trials", "4")
    for m, p in procs.items():
        machines.finish(m, p)

    trials = load("two-machines", storage).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(8))  # no loss, no duplicate number
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 4  # 2 machines × 2 workers all ran trials
    assert len({t.params["lr"] for t in trials}) == 8  # the machines draw different params, not the same ones twice

    runs, by_trial = children("pg-two-machines")
    parents = {r.info.run_id for r in runs if r.data.tags.get("focusml.kind") == "tune"}
    assert len(parents) == 2
    for t in trials:  # exactly one finished MLflow child run per trial, under one of the two parents
        got = by_trial.get(t.number, [])
        assert [r.info.status for r in got] == ["FINISHED"], (t.number, got)
        assert got[0].info.run_id == t.user_attrs["mlflow_run_id"]
        assert got[0].data.tags["mlflow.parentRunId"] in parents
    assert len(runs) == 2 + 8
    for m in ("machine-a", "machine-b"):
        err = (machines.dir(m) / "err.txt").read_text()
        assert "trials in the study (4 new," in err, err[-2000:]  # its own 4; the study counts the other machine's
        assert len([line for line in err.splitlines() if line.startswith("trial ")]) == 4
        assert not (machines.dir(m) / "optuna.journal").exists()


@pytest.mark.server
@pytest.mark.slow
def test_four_concurrent_trainings_log_every_metric_of_every_epoch(machines):
    epochs = 3
    procs = [machines.start(f"train-{i}", "train", "--epochs", str(epochs), "--experiment", "pg-concurrent",
                            "--seed", str(i), "--batch-size", "256", "--device", "cpu", "--no-log-model")
             for i in range(4)]
    for i, p in enumerate(procs):
        machines.finish(f"train-{i}", p)

    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["pg-concurrent"], output_format="list")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    keys = None
    for r in runs:
        per_epoch = {}
        for key in r.data.metrics:
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            if len(steps) > 1:  # logged at every epoch: once at each
                assert steps == list(range(1, epochs + 1)), (r.info.run_id, key, steps)
                per_epoch[key] = steps
            else:  # logged once for the run (at its start, or at the epoch it selected)
                assert len(steps) == 1 and 0 <= steps[0] <= epochs, (r.info.run_id, key, steps)
        assert set(PER_EPOCH) <= set(per_epoch), sorted(per_epoch)
        keys = keys or set(per_epoch)
        assert set(per_epoch) == keys  # the same per-epoch metrics in every run: none lost in one of them


@pytest.mark.server
@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried(postgres, machines):
    storage = postgres.createdb("optuna_kill")
    spec = study_yaml(machines.dir("machine-k"), "killed-worker", "pg-killed-worker")
    tune = machines.start("machine-k", "tune", str(spec), "--storage", storage, "--workers", "2", "--n-trials", "2",
                          env={"FOCUSML_TUNE_HEARTBEAT_S": "1"})

    victim = None
    deadline = time.time() + 300
    while victim is None:  # a trial running in a worker, its MLflow run open
        assert tune.poll() is None and time.time() < deadline, "no trial started in a worker"
        time.sleep(0.3)
        try:
            for t in load("killed-worker", storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if "worker_pid" in t.user_attrs and children("pg-killed-worker")[1].get(t.number):
                    victim = t
                    break
        except Exception:  # noqa: BLE001 - the study (or its tables) not created yet
            pass
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    machines.finish("machine-k", tune)

    trials = load("killed-worker", storage).get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1, states  # the call's 2 trials, one retried
    assert trials[victim.number].state.name == "FAIL"
    retry = [t for t in trials if victim.number in t.system_attrs.get("retry_history", [])]
    assert [t.state.name for t in retry] == ["COMPLETE"] and retry[0].params == victim.params

    _, by_trial = children("pg-killed-worker")
    killed = by_trial[victim.number]
    assert [r.info.status for r in killed] == ["KILLED"]
    assert "worker process" in killed[0].data.tags["focusml.killed"]
    for t in trials:
        if t.state.name == "COMPLETE":
            assert [r.info.status for r in by_trial[t.number]] == ["FINISHED"]


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_dead_machines_trial_is_failed_by_heartbeat_and_retried(postgres, pg_server, monkeypatch):
    """A trial of another machine (its pid cannot be checked here) that stops beating: the next
    `fail_dead_local` (what every tune call and worker runs) fails it after the grace period, by
    the database's clock, closes its MLflow run and queues its params again."""
    from focusml.tune.recovery import fail_dead_local, on_stale
    from focusml.tune.storage import open_storage, with_heartbeat

    monkeypatch.setenv("FOCUSML_TUNE_HEARTBEAT_S", "1")  # grace: 3 s
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_server)
    mlflow.set_tracking_uri(pg_server)
    study = optuna.create_study(study_name="dead-machine", storage=with_heartbeat(
        open_storage(postgres.createdb("optuna_dead"))[0], on_stale))
    trial = study.ask()
    lr = trial.suggest_float("lr", 0.001, 0.01)
    trial.set_user_attr("worker_pid", 1)
    trial.set_user_attr("worker_host", "a-machine-that-died")
    mlflow.set_experiment("pg-dead-machine")
    with mlflow.start_run(tags={"optuna.study_name": "dead-machine", "optuna.trial_number": "0"}) as r:
        pass
    MlflowClient().update_run(r.info.run_id, "RUNNING")  # as the dead machine left it
    study._storage.record_heartbeat(trial._trial_id)
    assert fail_dead_local(study) == [] and study.trials[0].state.name == "RUNNING"  # still within the grace period
    time.sleep(4)
    fail_dead_local(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == {"lr": lr} and trials[1].system_attrs["retry_history"] == [0]
    run = mlflow.get_run(r.info.run_id)
    assert run.info.status == "KILLED" and "no Optuna heartbeat for 3 s" in run.data.tags["focusml.killed"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_tune_calls_starting_together_on_a_new_database_all_open_it(postgres):
    """Optuna creates its tables check-then-insert: 4 openers at once on a new database race on them."""
    import threading

    from focusml.tune.recovery import on_stale
    from focusml.tune.storage import open_storage, with_heartbeat

    url = open_storage(postgres.createdb("optuna_race"))[0]
    barrier, errors = threading.Barrier(4), []

    def opener():
        barrier.wait()
        try:
            with_heartbeat(url, on_stale)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []


# -- without the driver: one line naming the extra, no traceback, no password ------------------------------


@pytest.fixture
def no_driver(monkeypatch, tmp_path):
    """psycopg2 and psycopg not importable; a scratch folder with no tracking URI set."""
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(capsys, *argv: str) -> str:
    from focusml.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "secret" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: "), err
    return last


def test_a_missing_postgres_driver_is_one_line_naming_the_extra(no_driver, capsys, monkeypatch):
    url = "postgresql://me:secret@127.0.0.1:1/db"
    line = refused(capsys, "server", "--backend-store-uri", url)
    assert line == ("Error: --backend-store-uri postgresql://me:***@127.0.0.1:1/db needs a PostgreSQL driver "
                    "(psycopg2 or psycopg) and none is installed: pip install 'focusml[postgres]'.")

    spec = study_yaml(no_driver, "nodriver", "nodriver")
    line = refused(capsys, "tune", str(spec), "--storage", url, "--workers", "2", "--n-trials", "2")
    assert "--storage postgresql://me:***@127.0.0.1:1/db needs a PostgreSQL driver" in line
    assert "pip install 'focusml[postgres]'" in line

    line = refused(capsys, "tune", str(spec), "--storage", "postgresql+psycopg2://me:secret@127.0.0.1:1/db")
    assert "needs the database driver `psycopg2`, which is not installed: pip install 'focusml[postgres]'" in line

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    line = refused(capsys, "train", "--epochs", "1", "--device", "cpu")
    assert "the tracking store postgresql://me:***@127.0.0.1:1/db needs a PostgreSQL driver" in line
    assert sorted(p.name for p in no_driver.iterdir()) == ["nodriver.yaml"]  # nothing left behind: no store, no run
