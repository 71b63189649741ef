"""A study's outcome: every trial as a record, and the trial chosen to report and register.

A trial whose run warns (chance accuracy, an all-zero CAM, ...: `RunResult.warnings`, the run's
`focusml.warning` tag, kept on the trial as user attribute `focusml_warning`) is never chosen while
a trial without a warning completed; where it still is chosen (every trial warns) or where it was
passed over, the result says so (`StudyResult.notes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import optuna

from focusml.tune.spec import StudySpec


@dataclass
class TrialRecord:
    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    run_id: str | None
    warning: str | None = None  # what the trial's run warns about; None: a healthy run

    @classmethod
    def of(cls, t: optuna.trial.FrozenTrial) -> "TrialRecord":
        return cls(t.number, t.state.name, list(t.values) if t.values else None, dict(t.params),
                   t.user_attrs.get("mlflow_run_id"), warning_of(t))


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
    notes: list[str] = field(default_factory=list)  # warnings about the choice (`choose_trial`), to print

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


#: The Optuna user attribute holding what a trial's run warns about (its `focusml.warning` tag).
WARNING_ATTR = "focusml_warning"


def warning_of(t: optuna.trial.FrozenTrial) -> str | None:
    return t.user_attrs.get(WARNING_ATTR) or None


def choose_trial(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str]
                 ) -> tuple[optuna.trial.FrozenTrial | None, list[str]]:
    """The completed trial to report and register, and what to say about the choice.

    The best on the objectives in order (one objective: the best value, the earliest of ties; several:
    the best on the first, ties broken by the next, which is always on the Pareto front), among the
    trials whose run does not warn when there is one; a warning trial that scored better is named as
    passed over, and a chosen trial that warns (all do) is named as such.
    """
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    sign = [-1.0 if d == "maximize" else 1.0 for d in directions]

    def rank(t):
        return [s * v for s, v in zip(sign, t.values)]

    healthy = [t for t in done if not warning_of(t)]
    chosen = min(healthy or done, key=rank, default=None)
    if chosen is None:
        return None, []
    if warning_of(chosen):
        return chosen, [f"trial #{chosen.number}, reported as best, did not train well: {warning_of(chosen)} "
                        f"(every completed trial warns; check the search space and the epochs)"]
    better = sorted((t for t in done if warning_of(t) and rank(t) < rank(chosen)), key=rank)
    return chosen, [f"trial #{t.number} scored better ({_shown(t.values)}) but its run warns: {warning_of(t)}; "
                    f"passed over for trial #{chosen.number} ({_shown(chosen.values)})" for t in better[:3]] + (
        [f"{len(better) - 3} more trials that warn scored better and were passed over"] if len(better) > 3 else [])


def _shown(values: Sequence[float]) -> str:
    return "/".join(f"{v:.4g}" for v in values)


def choose(study: optuna.Study, spec: StudySpec) -> optuna.trial.FrozenTrial | None:
    """The trial to report and register (`choose_trial` without its notes)."""
    return choose_trial(study.get_trials(deepcopy=False), spec.directions)[0]
