"""A study that loses nothing when a process dies: stale trials retried, their MLflow runs closed,
the parent runs of dead `tune` calls closed.

- A trial whose worker died (SIGKILL, a crash of the machine) stops sending heartbeats
  (`storage.with_heartbeat`); the next `study.optimize` anywhere fails it and calls `on_stale`.
  A trial whose worker is known dead at once (on this machine, its recorded pid is gone) is
  failed without waiting for the grace period (`fail_dead_local`).
- `retry_trial` closes the trial's MLflow child run (KILLED, tag `focusml.killed` saying why) and
  queues a copy of the trial with the same params (WAITING, `retry_history` as Optuna's
  `RetryFailedTrialCallback` writes it), which the next `ask` runs first; at most `MAX_RETRY` times.
  A trial stopped by Ctrl-C or SIGTERM is retried the same way.
- Every `tune` call records itself as study user attribute `focusml:parent:<run_id>` with a
  heartbeat (`ParentBeat`); a later call closes the parent runs of calls that stopped beating, and
  their child runs still RUNNING (KILLED, tag `focusml.killed`) — `close_stale_parents`.
- Recovery is a sequence of writes, and a process can die (or the tracking server be away) between
  any two; each step is redone by the next call. A trial failed for a dead worker carries the reason
  (`STOPPING`, written just before): one whose retry was never queued is queued (`retry_unqueued`;
  a trial is retried once, `retried`). The retry carries its note (`RETRY_NOTE`): the runs still
  RUNNING of every trial that no longer runs are closed with it (`close_retried_runs`), before
  `close_stale_parents` could close them with the parent's. `recover` runs them in that order.
- A trial's MLflow run ends before Optuna records the trial (the run ends inside the objective,
  the trial is told when the objective has returned), so a process killed between the two leaves
  a run that ended (FINISHED; KILLED when pruned or stopped by a signal) for a trial that recovery
  then fails and retries. Such a run is closed KILLED with the retry's note too (`ENDABLE`; tag
  `focusml.status_before` keeps what it had said): a retried trial's runs are all KILLED, saying
  why, and a completed trial has exactly its one FINISHED run, whatever was killed when. (Telling
  Optuna first is no cure: the trial would be COMPLETE for a run whose end-of-run logging, its test
  metrics and model, may never have happened, and `--register` would pick it; and a trial Optuna
  failed cannot be turned COMPLETE to adopt the finished run's result.) A FAILED run is left as it is:
  it failed for its own reason, which it says.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from focusml import tracking
from focusml.tune.storage import STOPPING, heartbeat, stale_reason

MAX_RETRY = 3  # a trial that keeps killing its worker (e.g. out of memory) is not retried for ever
HOST = socket.gethostname()
PARENT = "focusml:parent:"
CALL_ATTR = "tune_parent_run_id"  # the MLflow parent run of the `tune` call that ran the trial
WORKER_ATTRS = ("mlflow_run_id", "worker_pid", "worker_host", CALL_ATTR)  # belong to one attempt, not to its retry
RETRY_NOTE = "focusml:retry_note"  # on a queued retry: why the trial it repeats stopped (its runs' focusml.killed)
# STOPPING: on a trial `fail_dead_local` (or Optuna, for want of heartbeats: `storage`) fails, written just before: why
# the statuses of a stopped trial's runs that its retry's note overrides: RUNNING, or ended before the trial was
# recorded (see the module docstring); never FAILED
ENDABLE = ("RUNNING", "FINISHED", "KILLED")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (on this machine) lives. A zombie does not: a worker SIGKILLed with its `tune` parent
    waits as one until init reaps it, and a call started at once would otherwise count its trial as running."""
    if pid <= 0:  # never probe process groups (0, -1)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # "pid (comm) state ...": comm may hold spaces and parentheses
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (macOS): a zombie passes for alive
        return True


def close_trial_runs(study_name: str, number: int, why: str) -> list[str]:
    """End the MLflow runs of stopped trial `number` of `study_name` as KILLED, tagged `focusml.killed`: those
    still RUNNING, and those that ended before the trial was recorded (`ENDABLE`, the module docstring)."""
    closed = []
    try:
        runs = tracking.search_runs_where(f"tags.`optuna.study_name` = '{study_name}' and "
                                          f"tags.`optuna.trial_number` = '{number}'")
    except Exception as e:  # the tracking store is away: the trial is still retried
        warnings.warn(f"could not close the MLflow runs of trial {number}: {e}")
        return closed
    for run_id in runs:
        if tracking.terminate_run(run_id, "KILLED", {"focusml.killed": why}, states=ENDABLE):
            closed.append(run_id)
    return closed


def retry_trial(study: optuna.Study, trial: FrozenTrial, why: str) -> None:
    """Queue a copy of `trial` (same params) unless it was retried `MAX_RETRY` times, then close its MLflow runs.

    The copy is queued first, right after the trial was failed: closing runs talks to the tracking
    server and can take seconds, and a process killed in between must not lose the retry."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    again = len(history) <= MAX_RETRY
    note = f"{why}; retried as a new trial with the same params" if again else f"{why}; retried {MAX_RETRY} times, given up"
    if again and not retried(study, trial.number):  # once: a call cut short here is redone by `recover`
        # the note travels with the retry, written in the same call: `close_retried_runs` finds it there
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in WORKER_ATTRS},
            system_attrs={**{k: v for k, v in trial.system_attrs.items() if not k.startswith("focusml:")},
                          "failed_trial": history[0], "retry_history": history, RETRY_NOTE: note},
        ))
    close_trial_runs(study.study_name, trial.number, note)


def retried(study: optuna.Study, number: int) -> bool:
    """Whether a retry of trial `number` is already in the study."""
    return any((t.system_attrs.get("retry_history") or [None])[-1] == number for t in study.get_trials(deepcopy=False))


def retry_unqueued(study: optuna.Study) -> list[int]:
    """Queue the retry of each trial `fail_dead_local` failed (it wrote `STOPPING` first) whose process died
    before it could queue it; the retry closes the trial's runs too."""
    queued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if STOPPING in t.system_attrs and not retried(study, t.number):
            retry_trial(study, t, t.system_attrs[STOPPING])
            queued.append(t.number)
    return queued


def close_retried_runs(study: optuna.Study) -> list[str]:
    """End the MLflow runs of this study's trials that no longer run (KILLED), with the note their retry carries:
    what `retry_trial` had queued but could not close (killed, or the server away).

    - a RUNNING run of a trial that ended: KILLED, with its retry's note, else the trial's state;
    - a FINISHED or KILLED run of a retried trial without its retry's note: KILLED with it (its process
      was killed after the run ended, before Optuna recorded the trial; or its Ctrl-C, or its pruning,
      was cut short; the module docstring).
    One search per status (the ended ones only when a trial was retried); a run whose trial still runs (here or
    elsewhere), or completed, is left alone."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    notes = {t.system_attrs["retry_history"][-1]: t.system_attrs[RETRY_NOTE]
             for t in trials.values() if RETRY_NOTE in t.system_attrs and t.system_attrs.get("retry_history")}
    closed = []
    for status in ENDABLE if notes else ENDABLE[:1]:
        try:
            runs = tracking.search_run_tags_where(f"tags.`optuna.study_name` = '{study.study_name}' and "
                                                  f"attributes.status = '{status}'")
        except Exception as e:  # the tracking store is away: the next call tries again
            warnings.warn(f"could not close the MLflow runs of stopped trials: {e}")
            return closed
        for run_id, tags in runs.items():
            try:
                trial = trials[int(tags.get("optuna.trial_number", ""))]
            except (ValueError, KeyError):
                continue  # the study's parent run (no trial number)
            if trial.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            note = notes.get(trial.number) if trial.state == TrialState.FAIL else None
            if status != "RUNNING" and (note is None or tags.get("focusml.killed") == note):
                continue  # an ended run of a trial that was not retried says what happened; or it says so already
            why = note or f"its trial ended {trial.state.name} while the run was open"
            if tracking.terminate_run(run_id, "KILLED", {"focusml.killed": why}, states=ENDABLE if note else (status,)):
                closed.append(run_id)
    return closed


def recover(study: optuna.Study) -> None:
    """What a `tune` call does first: retry the trials of dead workers, close the runs of retried trials,
    then close the parent runs (and their open children) of dead `tune` calls — in this order, so each
    run is closed with the most precise reason known."""
    fail_dead_local(study)
    retry_unqueued(study)
    close_retried_runs(study)
    close_stale_parents(study)


def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat-stale callback: the trial was just failed for want of heartbeats."""
    retry_trial(study, trial, trial.system_attrs.get(STOPPING) or stale_reason(heartbeat()[1]))


def fail_dead_local(study: optuna.Study) -> list[int]:
    """Fail and retry RUNNING trials whose worker ran on this machine and is gone; then the stale ones."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("worker_pid"), t.user_attrs.get("worker_host")
        if host != HOST or not isinstance(pid, int) or pid_alive(pid):
            continue
        why = f"its worker process (pid {pid}) died"
        try:  # the reason first, on the running trial: a call killed after failing it queues no retry, `recover` does.
            # Optuna has no public way to write a running trial's attribute from another process: storage API,
            # pinned by tests/test_tune_recovery.py and tests/test_faults.py.
            study._storage.set_trial_system_attr(t._trial_id, STOPPING, why)
            frozen = study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first (tell refuses a finished trial, the storage a race)
        retry_trial(study, frozen, why)
        failed.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


class ParentBeat:
    """The heartbeat of one `tune` call (its MLflow parent run) in the study's user attributes."""

    def __init__(self, study: optuna.Study, run_id: str):
        self.study, self.key = study, PARENT + run_id
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="focusml-parent-heartbeat", daemon=True)

    def _write(self, done: bool = False) -> None:
        self.study.set_user_attr(self.key, {"host": HOST, "pid": os.getpid(), "beat": time.time(), "done": done})

    def _beat(self) -> None:
        interval = heartbeat()[0]
        while not self.stop_event.wait(interval):
            try:
                self._write()
            except Exception:
                pass  # a missed beat is caught up by the next

    def __enter__(self):
        self._write()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        try:
            self._write(done=True)
        except Exception:
            pass
        return False


def close_stale_parents(study: optuna.Study) -> list[str]:
    """End the MLflow parent runs of earlier `tune` calls on this study whose process is gone (KILLED)."""
    now, grace = time.time(), heartbeat()[1]
    closed = []
    for key, value in study.user_attrs.items():
        if not key.startswith(PARENT) or not isinstance(value, dict) or value.get("done"):
            continue
        if value.get("host") == HOST:  # here the process itself says whether the call lives
            stale = not pid_alive(int(value.get("pid", -1)))
        else:
            stale = now - float(value.get("beat", now)) > grace
        if not stale:
            continue  # a call that is still working (here or elsewhere)
        run_id = key[len(PARENT):]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value.get("beat", now))))
        why = f"the tune process stopped (last heartbeat {when}); the study was resumed later"
        try:
            if tracking.terminate_run(run_id, "KILLED", {"focusml.killed": why}):
                closed.append(run_id)
            # its workers died with it: a trial run whose closing the kill cut short is closed here
            for child in tracking.search_runs_where(f"tags.`mlflow.parentRunId` = '{run_id}' and "
                                                    "attributes.status = 'RUNNING'"):
                tracking.terminate_run(child, "KILLED", {"focusml.killed": why})
        except Exception as e:
            warnings.warn(f"could not close the MLflow parent run {run_id}: {e}")
            continue
        study.set_user_attr(key, {**value, "done": True})
    return closed
