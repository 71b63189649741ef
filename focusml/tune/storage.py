"""Where a study lives: `--storage` as an Optuna storage (SQLite, journal file or database URL),
with heartbeats, so that a trial whose process died is noticed and retried.

`with_heartbeat` gives Optuna's heartbeat to either kind of storage: an RDB URL becomes an
`RDBStorage(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)`, and a journal
file a `HeartbeatJournalStorage` (Optuna's `JournalStorage` has no heartbeat of its own: this one
records it as the trial system attribute `focusml:heartbeat`, a Unix time). Every running trial
then writes a heartbeat every `heartbeat()[0]` seconds, and each `study.optimize` fails the
trials whose last heartbeat is older than the grace period and calls `on_stale` on them
(`tune.recovery`: close their MLflow runs, queue a retry).

Optuna fails a stale trial, then calls `on_stale`: a process killed in between would leave a failed
trial with no retry. Both storages here therefore write the reason (`STOPPING`) on each stale trial
before Optuna fails it (`_get_stale_trial_ids`), as `recovery.fail_dead_local` does for a dead local
worker, and `recovery.retry_unqueued` queues the retry that was cut off.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the protocol `fail_stale_trials` checks (no public name)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from focusml import FocusmlError, tracking

DEFAULT_SQLITE = "optuna.db"
DEFAULT_JOURNAL = "optuna.journal"


def check_storage(storage: str | None, workers: int = 1) -> str:
    """`--storage` as a URL or a journal path (None → the defaults below), refused (FocusmlError) where it
    cannot work: SQLite for several workers, an SQLite file written as a path, a folder, a file that
    is no database, a folder that does not exist (nothing is created but the store file itself)."""
    if storage in (None, ""):
        storage = str(Path.cwd() / (DEFAULT_SQLITE if workers == 1 else DEFAULT_JOURNAL))
        if workers == 1:
            storage = f"sqlite:///{storage}"
    if "://" in storage:
        path = tracking.sqlite_path(storage) if storage.startswith("sqlite") else None
        if path is not None:
            tracking.check_sqlite_file(path, f"--storage {storage}")
        if storage.startswith("sqlite") and workers > 1:
            raise FocusmlError(
                f"--storage {storage} is SQLite, which locks under {workers} parallel writers. Use a journal file "
                f"(--storage {DEFAULT_JOURNAL}) on one machine, or a database server URL (postgresql://…) across machines.")
        return storage
    path = Path(storage)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        raise FocusmlError(f"--storage {storage} looks like an SQLite file: write it as a URL, sqlite:///{path.resolve()} "
                           f"(or give a journal file such as {DEFAULT_JOURNAL}).")
    if path.is_dir():
        raise FocusmlError(f"--storage {storage} is a folder; give a journal file, e.g. --storage {path / DEFAULT_JOURNAL}.")
    if not path.parent.is_dir():
        raise FocusmlError(f"--storage {storage}: the folder {path.parent} does not exist; create it (mkdir -p "
                           f"{path.parent}) or name a file in an existing folder.")
    return storage


def open_storage(storage: str | None, workers: int = 1) -> tuple[Any, str]:
    """(what Optuna takes, a display string without passwords) for `--storage`.

    None → `optuna.db` (SQLite) here for one process, `optuna.journal` here for several; a URL
    (`sqlite:///…`, `postgresql://…`, `mysql://…`) → that database; any other string → a journal
    file at that path (`check_storage` refuses what cannot work). A database URL comes back naming
    an installed driver (`tracking.with_driver`: FocusmlError if none is).
    """
    storage = check_storage(storage, workers)
    if "://" in storage:
        return tracking.with_driver(storage, "--storage"), tracking.redact(storage)
    path = Path(storage)
    return HeartbeatJournalStorage(JournalFileBackend(str(path))), f"journal:{path.resolve()}"


HEARTBEAT_ATTR = "focusml:heartbeat"
STOPPING = "focusml:stopping"  # on a trial about to be failed for its dead worker, written just before: why


def stale_reason(grace: int) -> str:
    return f"its worker stopped (no Optuna heartbeat for {grace} s)"


def _mark_stopping(storage, trial_ids: list[int], grace: int) -> list[int]:
    """Write the reason on each stale trial that `fail_stale_trials` is about to fail (see the module docstring)."""
    marked = []
    for trial_id in trial_ids:
        try:
            storage.set_trial_system_attr(trial_id, STOPPING, stale_reason(grace))
            marked.append(trial_id)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError, RuntimeError):
            pass  # it just ended: nothing to fail
    return marked


def heartbeat() -> tuple[int, int]:
    """(interval, grace period) in seconds: `FOCUSML_TUNE_HEARTBEAT_S` (default 20) and three times it."""
    try:
        interval = max(1, int(os.environ.get("FOCUSML_TUNE_HEARTBEAT_S", "20")))
    except ValueError:
        raise FocusmlError(f"FOCUSML_TUNE_HEARTBEAT_S is {os.environ['FOCUSML_TUNE_HEARTBEAT_S']!r}; give whole "
                           "seconds ≥ 1.") from None
    return interval, 3 * interval


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal-file storage with Optuna's heartbeat protocol (see the module docstring)."""

    def __init__(self, backend, interval: int | None = None, grace: int | None = None,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None):
        super().__init__(backend)
        self.heartbeat_interval, self.grace_period, self.on_stale = interval, grace, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # the trial just ended

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna's private heartbeat protocol (what `fail_stale_trials` calls; it takes storage-internal trial
        # ids): pinned by tests/test_tune_recovery.py
        now, grace = time.time(), self.grace_period or 2 * (self.heartbeat_interval or 0)
        return _mark_stopping(self, [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False,
                                                                            states=(TrialState.RUNNING,))
                                     if HEARTBEAT_ATTR in t.system_attrs and now - t.system_attrs[HEARTBEAT_ATTR] > grace],
                              grace)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.on_stale


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's database storage, writing the reason on each stale trial before Optuna fails it (the module docstring)."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:  # Optuna's private protocol, as above
        return _mark_stopping(self, super()._get_stale_trial_ids(study_id),
                              self.grace_period or 2 * (self.heartbeat_interval or 0))


def with_heartbeat(store: Any, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> Any:
    """`store` (from `open_storage`) with heartbeats on: interval and grace from `heartbeat()`."""
    interval, grace = heartbeat()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if isinstance(store, str):  # machines starting together on a new database race to create the tables
            return tracking.retry_unique(lambda: HeartbeatRDBStorage(
                store, heartbeat_interval=interval, grace_period=grace, heartbeat_stale_trial_callback=on_stale))
    if isinstance(store, HeartbeatJournalStorage):
        store.heartbeat_interval, store.grace_period, store.on_stale = interval, grace, on_stale
    return store

