"""One trial: a tracked run (`focusml.tracking.run`) as an MLflow child run that reports its objective to Optuna."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from focusml import tracking
from focusml.core.callbacks import Callbacks, listed
from focusml.tune.recovery import CALL_ATTR, HOST, retry_trial
from focusml.tune.results import WARNING_ATTR
from focusml.tune.spec import StudySpec


class TrialPruned(optuna.TrialPruned, tracking.StopRun):
    """Stops a pruned trial: Optuna records it PRUNED, its MLflow run ends KILLED, tagged pruned."""

    status = "KILLED"
    tags = {"optuna.pruned": "true"}


class TrialCallbacks(Callbacks):
    """Reports the per-epoch objective to the trial (single-objective) and prunes on request; the last of a
    trial's callbacks, so the epoch is logged and shown before a pruned trial stops."""

    def __init__(self, trial: optuna.Trial, spec: StudySpec):
        self.trial, self.spec = trial, spec

    def on_epoch_end(self, epoch, metrics, model):
        run_id = tracking.active_run_id()
        if run_id is not None and "mlflow_run_id" not in self.trial.user_attrs:
            self.trial.set_user_attr("mlflow_run_id", run_id)
        if self.spec.multi:
            return  # Optuna cannot prune multi-objective studies
        value = metrics[self.spec.objectives[0].metric]
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch} "
                              f"({self.spec.objectives[0].metric} = {value:.4g})")


def objective_values(history: list[dict[str, float]], spec: StudySpec, epoch: int = -1) -> list[float]:
    """The validation metrics of the evaluated epoch (the one `--select` chose), one per objective; never a test metric."""
    chosen = history[epoch]
    return [float(chosen.get(o.metric, float("nan"))) for o in spec.objectives]


@dataclass
class TrialContext:
    """What a trial needs, picklable for worker processes."""

    spec: StudySpec
    study_name: str
    parent_run_id: str
    experiment: str


def running(trial: optuna.Trial) -> FrozenTrial:
    """The stored record of `trial` (params, attributes) while it runs, through Optuna's public API."""
    return next(t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number == trial.number)


def make_objective(ctx: TrialContext, inner_factory: Callable[[optuna.Trial], Callbacks | None] | None = None):
    def objective(trial: optuna.Trial):
        trial.set_user_attr("worker_pid", os.getpid())  # first: a dead worker's trial is then recognised at once
        trial.set_user_attr("worker_host", HOST)
        trial.set_user_attr(CALL_ATTR, ctx.parent_run_id)  # which call ran it: several may share the study
        params = {p.name: p.suggest(trial) for p in ctx.spec.search}
        config = ctx.spec.config(params, experiment=ctx.experiment,
                                 run_name=f"{ctx.study_name}-trial-{trial.number}")
        inner = listed(inner_factory(trial)) if inner_factory else []
        try:
            result = tracking.run(config, callbacks=[*inner, TrialCallbacks(trial, ctx.spec)],
                                  parent_run_id=ctx.parent_run_id, checkpoints=False,
                                  tags={"optuna.study_name": ctx.study_name, "optuna.trial_number": str(trial.number),
                                        "focusml.tune.parent": ctx.parent_run_id})
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the run ended KILLED; the next call retries the trial
            retry_trial(trial.study, running(trial), f"stopped by {getattr(e, 'signal_name', 'SIGINT')}")
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        if result.warnings:  # the run's focusml.warning: such a trial is not chosen while a healthy one exists
            trial.set_user_attr(WARNING_ATTR, "; ".join(result.warnings)[:5000])
        values = objective_values(result.history, ctx.spec, result.fit.selected_epoch)
        return values if ctx.spec.multi else values[0]

    return objective
