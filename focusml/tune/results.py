"""A study's outcome: every trial as a record, and the trial chosen to report and register."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from focusml.tune.spec import StudySpec


@dataclass
class TrialRecord:
    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    run_id: str | None

    @classmethod
    def of(cls, t: optuna.trial.FrozenTrial) -> "TrialRecord":
        return cls(t.number, t.state.name, list(t.values) if t.values else None, dict(t.params),
                   t.user_attrs.get("mlflow_run_id"))


@dataclass
class StudyResult:
    study_name: str
    storage: str
    parent_run_id: str
    objectives: list[str]
    trials: list[TrialRecord]  # every trial of the study, earlier invocations included
    new_trials: int  # trials run by this call
    best: TrialRecord | None  # the chosen trial (single objective: best value; multi: see `choose`)
    pareto: list[TrialRecord]  # the Pareto front (single objective: the best trial)
    registered: str | None = None  # "NAME version V" when --register was given
    figures: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure → why it was not drawn
    wall_s: float = 0.0

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def choose(study: optuna.Study, spec: StudySpec) -> optuna.trial.FrozenTrial | None:
    """The trial to report and register.

    Single objective: the best value. Multi-objective: among the Pareto front, the trial best on
    the first objective, ties broken by the next ones (the front lists every trade-off; the
    first objective says which one a user wants as the default model).
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        return None
    if not spec.multi:
        return study.best_trial
    sign = [-1.0 if o.direction == "maximize" else 1.0 for o in spec.objectives]
    return min(study.best_trials, key=lambda t: [s * v for s, v in zip(sign, t.values)])
