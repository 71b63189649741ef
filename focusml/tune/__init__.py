"""Optuna studies from `studies/*.yaml`: search λ and mask augmentation, every trial an MLflow run.

A study file names a method, a dataset, fixed run options, a search space, the objective(s) and
their directions, the number of trials, the sampler, the pruner and a seed (docs/tuning.md).
`load_spec` parses and validates it (a wrong file raises `FocusmlError` naming the field, the
value and what is allowed); `run_study` runs it:

- one MLflow parent run per call (under `mlflow run`, the entry point's run); every trial is
  `tracking.run` as a child run with an explicit parent id, its trial number and params, and
  the same per-epoch logging as `focusml train`;
- trials run in this process, or in K worker processes sharing one Optuna storage (a journal
  file on one machine, an RDB URL across machines); re-running a study name resumes it;
- a single-objective trial reports its objective after every epoch, so a pruner can stop it: the
  run then ends KILLED with tag `optuna.pruned=true` (`tracking.StopRun`);
- the parent logs the study name, storage, best params and values, the optimisation history,
  parameter importances and (multi-objective) the Pareto front.

No test leakage: objectives are validation metrics of the epoch the run evaluates (`--select`),
by default `acc/val_cf` (counterfactual accuracy, which sees the shortcut where the confounded
`acc/val` cannot); `flip/val`, `evidence_in_mask/val`, `acc/val`, `wr/val`, `cam_in_mask/val`
are allowed too; test metrics are logged for every trial by
`tracking.run` but never read here.

Modules: `spec` (what a study is), `study_file` (reading and validating a study file),
`storage` (`--storage`), `trials` (one trial as an MLflow child run), `workers` (trials in
several processes), `results` (the outcome and the chosen trial), `report` (what the parent run
logs) and `study` (`run_study`, which ties them together).
"""

from focusml.tune.results import StudyResult, TrialRecord, choose, choose_trial
from focusml.tune.spec import OBJECTIVES, PARAM_TYPES, PRUNERS, SAMPLERS, TOP_KEYS, Objective, SearchParam, StudySpec
from focusml.tune.storage import DEFAULT_JOURNAL, DEFAULT_SQLITE, open_storage
from focusml.tune.study import run_study
from focusml.tune.study_file import load_spec, parse_spec
from focusml.tune.trials import TrialCallbacks, TrialPruned, objective_values

__all__ = [
    "DEFAULT_JOURNAL", "DEFAULT_SQLITE", "OBJECTIVES", "PARAM_TYPES", "PRUNERS", "SAMPLERS", "TOP_KEYS",
    "Objective", "SearchParam", "StudyResult", "StudySpec", "TrialCallbacks", "TrialPruned", "TrialRecord",
    "choose", "choose_trial", "load_spec", "objective_values", "open_storage", "parse_spec", "run_study",
]
