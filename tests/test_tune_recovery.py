"""Recovery reaches Optuna through its public API; the one protocol that has none (heartbeats on a
journal file) is pinned here, so an Optuna upgrade that renames it fails a fast test, not a tune run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from focusml.tune import recovery
from focusml.tune.recovery import HOST, PARENT, STOPPING, ParentBeat, close_stale_parents, fail_dead_local
from focusml.tune.trials import running

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def closed(monkeypatch):
    """The MLflow runs recovery would close, recorded instead of closed (no tracking store here)."""
    seen: list = []
    monkeypatch.setattr(recovery, "close_trial_runs", lambda study, number, why: seen.append((number, why)))
    monkeypatch.setattr(recovery.tracking, "terminate_run",
                        lambda run_id, status, tags, states=("RUNNING",): seen.append(run_id) or True)
    monkeypatch.setattr(recovery.tracking, "search_runs_where", lambda where: [])
    return seen


def test_a_dead_workers_trial_is_failed_and_retried_through_tell(closed):
    study = optuna.create_study()
    for pid in (_dead_pid(), os.getpid()):
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        trial.set_user_attr("worker_pid", pid)
        trial.set_user_attr("worker_host", HOST)
    assert fail_dead_local(study) == [0]
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert study.trials[2].params == study.trials[0].params and closed[0][0] == 0
    assert fail_dead_local(study) == []  # already failed: not failed (nor retried) twice


def test_running_is_the_stored_record_of_a_live_trial():
    study = optuna.create_study()
    study.ask()
    trial = study.ask()
    trial.suggest_int("n", 1, 4)
    trial.set_user_attr("worker_pid", 7)
    frozen = running(trial)
    assert frozen.number == 1 and frozen.params == trial.params and frozen.user_attrs["worker_pid"] == 7


def test_parent_heartbeats_live_in_the_studys_user_attrs_and_a_dead_parent_is_closed(closed):
    study = optuna.create_study()
    with ParentBeat(study, "live"):
        assert study.user_attrs[PARENT + "live"]["done"] is False
    assert study.user_attrs[PARENT + "live"]["done"] is True
    study.set_user_attr(PARENT + "dead", {"host": HOST, "pid": _dead_pid(), "beat": time.time(), "done": False})
    assert close_stale_parents(study) == ["dead"] and closed == ["dead"]
    assert study.user_attrs[PARENT + "dead"]["done"] is True and close_stale_parents(study) == []


def test_optunas_heartbeat_protocol_still_calls_the_journal_storages_stale_check(tmp_path, monkeypatch):
    """`storage.HeartbeatJournalStorage` implements Optuna's private heartbeat protocol (`BaseHeartbeat`,
    `_get_stale_trial_ids`, `FrozenTrial._trial_id`): `fail_stale_trials` must still go through it."""
    from focusml.tune.storage import HEARTBEAT_ATTR, open_storage, with_heartbeat

    monkeypatch.setenv("FOCUSML_TUNE_HEARTBEAT_S", "1")
    stale = []
    store = with_heartbeat(open_storage(str(tmp_path / "s.journal"), workers=2)[0], lambda s, t: stale.append(t.number))
    with warnings.catch_warnings():  # experimental, and meant for Study.optimize: both said in warnings
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=store)
        trial = study.ask()
        store.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 60)  # stopped beating a minute ago
        optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL and stale == [0]
    assert study.trials[0].system_attrs[STOPPING] == "its worker stopped (no Optuna heartbeat for 3 s)"  # first


def test_a_database_storage_writes_why_before_optuna_fails_a_stale_trial(tmp_path, monkeypatch):
    """`HeartbeatRDBStorage` wraps Optuna's private `RDBStorage._get_stale_trial_ids`: the reason is on the trial
    before `fail_stale_trials` fails it, so a process killed before the stale callback ran still gets it retried."""
    from focusml.tune.storage import with_heartbeat

    monkeypatch.setenv("FOCUSML_TUNE_HEARTBEAT_S", "1")
    store = with_heartbeat(f"sqlite:///{tmp_path / 'o.db'}", lambda s, t: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=store)
        trial = study.ask()
        store.record_heartbeat(trial._trial_id)
        deadline = time.time() + 30
        while not store._get_stale_trial_ids(study._study_id) and time.time() < deadline:
            time.sleep(0.2)  # the database's clock passes the 3 s grace period
    assert study.trials[0].state == TrialState.RUNNING
    assert study.trials[0].system_attrs[STOPPING] == "its worker stopped (no Optuna heartbeat for 3 s)"


# ---- the cut-off states between a trial's MLflow run ending and Optuna recording the trial --------------------


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A SQLite MLflow store for this module (creating one costs seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient()
    mp.undo()


def test_every_cut_off_between_a_runs_end_and_its_trials_record_is_made_truthful(tmp_path, mlflow_store):
    """A trial's run ends inside the objective; Optuna records the trial after it returns. Each state a kill can
    leave there, built directly (no timing luck), then `recover` (what the next `tune` call does first): a
    retried trial's runs all end KILLED saying why (a FAILED one keeps its own reason), a completed trial's run
    stays FINISHED, a live trial's is left alone, each trial is retried once; a second `recover` changes nothing."""
    from focusml.tune.recovery import RETRY_NOTE, on_stale, recover, retry_trial
    from focusml.tune.storage import open_storage, with_heartbeat

    client = mlflow_store
    experiment = client.create_experiment("cut-offs")
    study = optuna.create_study(study_name="cut", storage=with_heartbeat(open_storage(str(tmp_path / "j"))[0], on_stale))
    dead = _dead_pid()
    why = f"its worker process (pid {dead}) died"
    note = f"{why}; retried as a new trial with the same params"

    def trial_with_run(status: str, tags: dict | None = None, pid: int = dead) -> tuple:
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        trial.set_user_attr("worker_pid", pid)
        trial.set_user_attr("worker_host", HOST)
        run = client.create_run(experiment, tags={"optuna.study_name": "cut", "optuna.trial_number": str(trial.number),
                                                  **(tags or {})}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run, status)
        return trial, run

    # all trials first (`ask` would take a queued retry)
    # 0: the run FINISHED, the worker killed before `tell` (the race the whole-tune SIGKILL test hit)
    t0, finished = trial_with_run("FINISHED")
    # 1: pruned: the run ended KILLED (tag optuna.pruned), the worker killed before `tell` PRUNED
    t1, pruned = trial_with_run("KILLED", {"optuna.pruned": "true"})
    # 2: Ctrl-C: the run ended KILLED (SIGTERM), the retry queued, killed before its runs were closed and `tell`
    t2, stopped = trial_with_run("KILLED", {"focusml.killed": "SIGTERM"})
    # 3: the run FAILED on its own, the worker killed before `tell` FAIL
    t3, failed = trial_with_run("FAILED", {"focusml.failure": "RuntimeError: boom"})
    # 4: recovery relabelling a FINISHED run was cut off after its status, before its note
    t4, half = trial_with_run("FINISHED")
    # 5: Optuna failed a stale trial (its reason written first: `storage`), killed before `on_stale` queued the retry
    t5, stale = trial_with_run("FINISHED")
    # 6: a completed trial; 7: a trial whose worker lives (this process) and is about to `tell`
    t6, complete = trial_with_run("FINISHED")
    t7, live = trial_with_run("FINISHED", pid=os.getpid())

    real_close = recovery.close_trial_runs
    recovery.close_trial_runs = lambda *a: []  # the cut-off: retries queued, runs not closed
    try:
        retry_trial(study, running_of(study, t2.number), "stopped by SIGTERM")
        study._storage.set_trial_system_attr(t4._trial_id, STOPPING, why)
        retry_trial(study, study.tell(t4.number, state=TrialState.FAIL), why)
    finally:
        recovery.close_trial_runs = real_close
    client.set_tag(half, "focusml.status_before", "FINISHED")
    client.set_terminated(half, "KILLED")
    study._storage.set_trial_system_attr(t5._trial_id, STOPPING, "its worker stopped (no Optuna heartbeat for 60 s)")
    study.tell(t5.number, state=TrialState.FAIL)
    study.tell(t6.number, 0.5)
    ended = {run: client.get_run(run).info.end_time for run in (finished, pruned, stopped, failed, half, stale)}

    for _ in range(2):  # the second time: nothing left to do
        recover(study)
        trials = study.get_trials(deepcopy=False)
        assert [t.state.name for t in trials[:8]] == ["FAIL"] * 6 + ["COMPLETE", "RUNNING"]
        retries = {t.system_attrs["retry_history"][-1]: t for t in trials[8:]}
        assert sorted(retries) == [0, 1, 2, 3, 4, 5] and len(trials) == 14  # each stopped trial retried once
        assert all(retries[n].params == trials[n].params for n in retries)
        assert {n: retries[n].system_attrs[RETRY_NOTE] for n in (2, 5)} == {
            2: "stopped by SIGTERM; retried as a new trial with the same params",
            5: "its worker stopped (no Optuna heartbeat for 60 s); retried as a new trial with the same params"}
        for run, before, says in ((finished, "FINISHED", note), (pruned, None, note), (stopped, None, retries[2].system_attrs[RETRY_NOTE]),
                                  (half, "FINISHED", note), (stale, "FINISHED", retries[5].system_attrs[RETRY_NOTE])):
            r = client.get_run(run)
            assert (r.info.status, r.data.tags["focusml.killed"]) == ("KILLED", says), (run, r.info.status, r.data.tags)
            assert r.data.tags.get("focusml.status_before") == before and r.info.end_time == ended[run]
        r = client.get_run(failed)  # it failed for its own reason, which it says
        assert r.info.status == "FAILED" and "focusml.killed" not in r.data.tags and r.info.end_time == ended[failed]
        assert [client.get_run(run).info.status for run in (complete, live)] == ["FINISHED", "FINISHED"]
        assert "focusml.killed" not in client.get_run(complete).data.tags
    assert client.get_run(pruned).data.tags["optuna.pruned"] == "true"


def running_of(study: optuna.Study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def test_a_zombie_is_not_alive():
    """A worker SIGKILLed together with its `tune` parent is a zombie until init reaps it: dead for recovery."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while recovery.pid_alive(proc.pid) and time.time() < deadline:  # exited, not yet reaped (no wait())
        time.sleep(0.05)
    assert not recovery.pid_alive(proc.pid) and recovery.pid_alive(os.getpid())
    proc.wait()
