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
from focusml.tune.recovery import HOST, PARENT, ParentBeat, close_stale_parents, fail_dead_local
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
    monkeypatch.setattr(recovery.tracking, "terminate_run", lambda run_id, status, tags: seen.append(run_id) or True)
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
