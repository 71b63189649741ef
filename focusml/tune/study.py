"""Running (or resuming) a study under one MLflow parent run.

How many trials a call runs: `--n-trials N` adds N. Without it the study file's `n_trials` is the
study's size: a call runs what is missing (finished = COMPLETE or PRUNED; trials running
elsewhere count as on their way), so re-running a call that was killed completes the study to
exactly `n_trials`, the stopped trials retried with their params (`tune.recovery`). A trial
running elsewhere that stops during the call (its machine died) is failed, and its retry runs as
one of this call's trials; the call then runs one trial more for it, so the study still ends with
exactly `n_trials`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import optuna
import sqlalchemy.exc

from focusml import FocusmlError, tracking
from focusml.core.config import RunConfig
from focusml.core.run import keep_data
from focusml.core.callbacks import Callbacks
from focusml.tracking.database import reason
from focusml.tune.report import log_setup, summarise
from focusml.tune.results import StudyResult, TrialRecord
from focusml.tune.spec import StudySpec
from focusml.tune.recovery import ParentBeat, on_stale, recover
from focusml.tune.storage import DEFAULT_JOURNAL, open_storage, with_heartbeat
from focusml.tune.trials import TrialContext, make_objective
from focusml.tune.workers import MAX_REPLACEMENTS, run_workers


def seed_offset(store, n_before: int, parent_id: str) -> int:
    """What this call adds to the study's sampler seed, so that its random draws repeat no earlier call's.

    Resuming: the trials already there. On a database server, where other machines may run the
    same study at the same time from the same count, also a number drawn from this call's MLflow
    run id (a study there is not reproducible draw for draw; on SQLite or a journal file it is).
    """
    shared = isinstance(store, optuna.storages.RDBStorage) and not store.url.startswith("sqlite")
    return n_before + (int(parent_id[:6], 16) if shared else 0)


def on_the_way(study: optuna.Study) -> int:
    """Trials finished (COMPLETE or PRUNED) or running, here or elsewhere: what a completing call counts as done."""
    on = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=on))


def run_study(spec: StudySpec, *, n_trials: int | None = None, study_name: str | None = None,
              storage: str | None = None, workers: int = 1, register: str | None = None,
              on_trial: Callable[[TrialRecord], None] | None = None,
              on_plan: Callable[[int], None] | None = None,
              trial_callbacks: Callable[[optuna.Trial], Callbacks | None] | None = None) -> StudyResult:
    """Run (or resume) a study under one MLflow parent run and return its summary.

    `n_trials`: trials to add; None = complete the study to the file's `n_trials` (see the module
    docstring). When nothing is missing, no parent run is made and `result.parent_run_id` is "".
    `on_plan(n)` is told how many trials this call runs, `on_trial` every trial that finishes
    during this call (for progress output);
    `trial_callbacks(trial)` may give per-trial training callbacks (single process only).
    """
    n = spec.n_trials if n_trials is None else n_trials
    if not isinstance(n, int) or n < 1:
        raise FocusmlError(f"--n-trials is {n}; it must be ≥ 1.")
    if not isinstance(workers, int) or workers < 1:
        raise FocusmlError(f"--workers is {workers}; it must be ≥ 1.")
    name = study_name or spec.study_name
    if register is not None:
        tracking.check_registry_names(register, "champion")  # before any trial: a bad name fails at the end otherwise
    if register and not spec.config({p.name: p.corners()[0] for p in spec.search}).log_model:
        raise FocusmlError(f"--register {register} needs the trials' models, but {spec.source} sets "
                           "`log_model: false`; remove it from `fixed`.")
    uri = tracking.setup()
    store, shown = open_storage(storage, workers)
    url = store if isinstance(store, str) else ""
    try:
        store = with_heartbeat(store, on_stale)
        study = optuna.create_study(study_name=name, storage=store, directions=spec.directions, load_if_exists=True,
                                    sampler=spec.make_sampler(), pruner=spec.make_pruner())
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as e:
        raise FocusmlError(f"cannot open the Optuna storage {shown}: {reason(e, url)}") from None
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise FocusmlError(f"study '{name}' in {shown} already exists with directions "
                           f"{[d.name.lower() for d in study.directions]}, but {spec.source} asks for {spec.directions}: "
                           "pick another --study-name.")
    study.set_metric_names([o.metric for o in spec.objectives])  # optuna-dashboard shows "acc/val_cf", not "Objective 0"
    n_before = len(study.trials)  # before the retries below: they are this call's trials
    recover(study)  # trials of dead workers failed and queued again, the runs of stopped trials and calls closed
    elsewhere: set[int] = set()  # trials running elsewhere when this call planned (completing only)
    if n_trials is None:  # complete the study to the file's n_trials
        n = spec.n_trials - on_the_way(study)
        elsewhere = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        if n <= 0:
            trials = study.get_trials(deepcopy=False)
            return StudyResult(name, shown, "", [o.metric for o in spec.objectives],
                               [TrialRecord.of(t) for t in trials], 0, None, [])
    if on_plan:
        on_plan(n)
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    start = time.perf_counter()
    experiment_name = spec.fixed.get("experiment", RunConfig().experiment)
    tags = {"focusml.kind": "tune", "optuna.study_name": name, "focusml.method": spec.method,
            "focusml.dataset": spec.dataset}
    with tracking.start_run(experiment_name, run_name=f"tune-{name}", tags=tags) as parent:
        os.environ.pop("MLFLOW_RUN_ID", None)  # consumed by the parent; trials must open new runs
        parent_id = parent.info.run_id
        experiment_name = tracking.experiment_name(parent.info.experiment_id)  # children next to the parent
        log_setup(spec, name, shown, n, workers, n_before)
        ctx = TrialContext(spec, name, parent_id, experiment_name)
        offset = seed_offset(store, n_before, parent_id)
        if offset:
            study.sampler = spec.make_sampler(offset)
        with ParentBeat(study, parent_id):
            todo, lost, planned = n, 0, n
            for round_ in range(len(elsewhere) + 1):  # each round after the first makes up for trials lost elsewhere
                if workers == 1:
                    report = (lambda s, t: on_trial(TrialRecord.of(t))) if on_trial else None
                    with keep_data():
                        study.optimize(make_objective(ctx, trial_callbacks), n_trials=todo,
                                       callbacks=[report] if report else None)
                else:  # a make-up round's workers draw from seeds no earlier worker or replacement had
                    storage_arg = storage or str(Path.cwd() / DEFAULT_JOURNAL)
                    run_workers(ctx, storage_arg, study, todo, min(workers, todo),
                                offset + round_ * workers * (MAX_REPLACEMENTS + 1), uri, on_trial)
                # A trial counted as on its way that stopped during this call (its machine died) was failed here and
                # its retry ran as one of this call's trials: without a make-up trial the study would end one short.
                now = sum(t.state == optuna.trial.TrialState.FAIL
                          for t in study.get_trials(deepcopy=False) if t.number in elsewhere)
                todo, lost = min(now - lost, spec.n_trials - on_the_way(study)), now
                if todo <= 0:
                    break
                planned += todo
                if on_plan:
                    on_plan(planned)
        result = summarise(study, spec, name, shown, parent_id)
        result.wall_s = time.perf_counter() - start
        tracking.log_metrics({"time/study_s": result.wall_s})
        if register:
            if result.best is None or not result.best.run_id:
                raise FocusmlError(f"study '{name}' has no completed trial to register.")
            version = tracking.register(result.best.run_id, register, "champion")
            result.registered = f"{register} version {version}"
            tracking.set_tags({"registered_model": register, "registered_version": version})
    return result
