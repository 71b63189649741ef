"""Optuna studies from `studies/*.yaml`: search λ and mask augmentation, every trial an MLflow run.

A study file names a method, a dataset, fixed run options, a search space, the objective(s) and
their directions, the number of trials, the sampler, the pruner and a seed (`docs/tune.md`).
`load_spec` parses and validates it (a wrong file raises `FocusmlError` naming the field, the
value and what is allowed); `run_study` runs it:

- one MLflow parent run per call (under `mlflow run`, the entry point's run); every trial is
  `experiment.run` as a child run with an explicit parent id, its trial number and params, and
  the same per-epoch logging as `focusml train`;
- trials run in this process, or in K worker processes sharing one Optuna storage (a journal
  file on one machine, an RDB URL across machines); re-running a study name resumes it;
- a single-objective trial reports its objective after every epoch, so a pruner can stop it: the
  run then ends KILLED with tag `optuna.pruned=true` (`tracking.StopRun`);
- the parent logs the study name, storage, best params and values, the optimisation history,
  parameter importances and (multi-objective) the Pareto front.

No test leakage: objectives are the final epoch's validation metrics from the run's history
(`acc/val`, `wr/val`, `cam_in_mask/val`); test metrics are logged for every trial by
`experiment.run` but never read here.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from focusml import FocusmlError, tracking
from focusml.config import RunConfig, load_yaml
from focusml.train import Callbacks

#: Objectives: validation metrics only, each with the direction that makes sense for it.
OBJECTIVES = {"acc/val": "maximize", "wr/val": "minimize", "cam_in_mask/val": "minimize"}
PARAM_TYPES = ("float", "int", "categorical")
SAMPLERS = {
    "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler, "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler, "nsga3": optuna.samplers.NSGAIIISampler,
}
PRUNERS = {
    "none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
}
TOP_KEYS = ("method", "dataset", "fixed", "search", "objectives", "n_trials", "sampler", "pruner", "seed",
            "study_name", "enqueue")
DEFAULT_SQLITE = "optuna.db"
DEFAULT_JOURNAL = "optuna.journal"


# ----------------------------------------------------------------------------- the study file


@dataclass(frozen=True)
class SearchParam:
    """One searched option: `float`/`int` in [low, high] (optionally `log` or `step`), or `categorical`."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list:
        """The values at the edge of the space, to check the run options accept them."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def grid_values(self) -> list | None:
        """Every value, where the space is finite (categorical, int, or float with a step)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return None


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass
class StudySpec:
    """A validated study file."""

    source: str
    method: str
    dataset: str
    fixed: dict[str, Any]
    search: tuple[SearchParam, ...]
    objectives: tuple[Objective, ...]
    n_trials: int = 20
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = 0
    study_name: str = "study"
    enqueue: tuple[dict[str, Any], ...] = ()

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def config(self, params: dict[str, Any], **overrides) -> RunConfig:
        """The run config of one trial: method, dataset, fixed options, then the trial's params."""
        values = {"method": self.method, "dataset": self.dataset, **self.fixed, **params, **overrides}
        return RunConfig.from_flat(values).validate()

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        options = dict(self.sampler_options)
        if self.sampler == "grid":
            options["search_space"] = {p.name: p.grid_values() for p in self.search}
        seed = None if self.seed is None else self.seed + seed_offset
        try:
            return SAMPLERS[self.sampler](**options, seed=seed)
        except (TypeError, ValueError, ImportError) as e:
            raise FocusmlError(f"{self.source}: sampler '{self.sampler}' refused its options "
                               f"{self.sampler_options}: {e}") from None

    def make_pruner(self) -> optuna.pruners.BasePruner:
        try:
            return PRUNERS[self.pruner](**self.pruner_options)
        except (TypeError, ValueError) as e:
            raise FocusmlError(f"{self.source}: pruner '{self.pruner}' refused its options "
                               f"{self.pruner_options}: {e}") from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file (YAML)."""
    data = load_yaml(path)
    return parse_spec(data, source=str(path), default_name=Path(path).stem)


def _fail(source: str, where: str, value: Any, allowed: str) -> FocusmlError:
    return FocusmlError(f"{source}: {where} is {value!r}; {allowed}.")


def _mapping(source: str, where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(source, where, value, "it must be a mapping of name: value")
    return value


def _int(source: str, where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(source, where, value, f"it must be a whole number ≥ {low}")
    return value


def parse_spec(data: dict[str, Any], source: str = "study", default_name: str = "study") -> StudySpec:
    """Validate a study mapping; every error names the field, the value and what is allowed."""
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise _fail(source, f"key '{unknown[0]}'", data[unknown[0]], f"allowed top-level keys: {', '.join(TOP_KEYS)}")
    for key in ("method", "dataset"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(source, key, data.get(key), f"give the {key} name (see `focusml {key}s`)"
                        if key == "method" else "give a dataset name (see `focusml datasets list`)")
    fixed = {k.replace("-", "_"): v for k, v in _mapping(source, "fixed", data.get("fixed")).items()}
    for key in ("method", "dataset"):
        if key in fixed:
            raise _fail(source, f"fixed.{key}", fixed[key], f"set `{key}` at the top level of the study file")
    search = _parse_search(source, _mapping(source, "search", data.get("search")))
    for p in search:
        if p.name in fixed:
            raise _fail(source, f"search.{p.name}", "also in fixed", "a searched option cannot also be fixed")
    objectives = _parse_objectives(source, data.get("objectives", ["acc/val"]))
    sampler, sampler_options = _parse_choice(source, "sampler", data.get("sampler", "tpe"), SAMPLERS)
    pruner, pruner_options = _parse_choice(source, "pruner", data.get("pruner", "none"), PRUNERS)
    seed = data.get("seed", 0)
    if seed is not None:
        seed = _int(source, "seed", seed, 0)
    if "seed" in sampler_options:
        raise _fail(source, "sampler.seed", sampler_options["seed"], "put the seed at the top level (`seed:`)")
    name = data.get("study_name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, "study_name", name, "give a non-empty name")
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise _fail(source, "enqueue", enqueue, "it must be a list of {param: value} mappings tried first")
    names = {p.name for p in search}
    for i, e in enumerate(enqueue):
        extra = [k for k in e if k not in names]
        if extra:
            raise _fail(source, f"enqueue[{i}].{extra[0]}", e[extra[0]], f"enqueue only searched params: {', '.join(sorted(names))}")
    spec = StudySpec(source=source, method=data["method"], dataset=data["dataset"], fixed=fixed, search=search,
                     objectives=objectives, n_trials=_int(source, "n_trials", data.get("n_trials", 20), 1),
                     sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
                     seed=seed, study_name=name.strip(), enqueue=tuple(enqueue))
    _check_runs(spec)
    _check_strategy(spec)
    return spec


def _parse_search(source: str, raw: dict) -> tuple[SearchParam, ...]:
    if not raw:
        raise _fail(source, "search", raw, "give at least one searched option, e.g. `lam: {type: float, low: 0.01, high: 100, log: true}`")
    out = []
    for name, spec in raw.items():
        where = f"search.{name}"
        name = str(name).replace("-", "_")
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        spec = _mapping(source, where, spec)
        allowed_keys = {"type", "low", "high", "log", "step", "choices"}
        bad = [k for k in spec if k not in allowed_keys]
        if bad:
            raise _fail(source, f"{where}.{bad[0]}", spec[bad[0]], f"allowed keys: {', '.join(sorted(allowed_keys))}")
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise _fail(source, f"{where}.type", kind, f"choose one of {', '.join(PARAM_TYPES)}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or not all(
                    c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise _fail(source, f"{where}.choices", choices, "give a non-empty list of numbers or strings")
            extra = [k for k in spec if k not in ("type", "choices")]
            if extra:
                raise _fail(source, f"{where}.{extra[0]}", spec[extra[0]], "a categorical option takes only `choices`")
            out.append(SearchParam(name, kind, choices=tuple(choices)))
            continue
        if "choices" in spec:
            raise _fail(source, f"{where}.choices", spec["choices"], f"`choices` needs `type: categorical`, not {kind}")
        num = int if kind == "int" else (int, float)
        low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
        for key, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, num) or not math.isfinite(value):
                raise _fail(source, f"{where}.{key}", value, f"give a finite {'whole number' if kind == 'int' else 'number'}")
        if not low < high:
            raise _fail(source, f"{where}.high", high, f"it must be greater than low ({low})")
        if not isinstance(log, bool):
            raise _fail(source, f"{where}.log", log, "true or false")
        if log and low <= 0:
            raise _fail(source, f"{where}.low", low, "a log-scaled range needs low > 0")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, num) or step <= 0:
                raise _fail(source, f"{where}.step", step, f"give a {'whole number' if kind == 'int' else 'number'} > 0")
            if log:
                raise _fail(source, f"{where}.step", step, "`step` and `log: true` cannot be combined (Optuna)")
        out.append(SearchParam(name, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                               log, step))
    return tuple(out)


def _parse_objectives(source: str, raw: Any) -> tuple[Objective, ...]:
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _fail(source, "objectives", raw, f"give a list of metrics among {', '.join(OBJECTIVES)}")
    out = []
    for i, item in enumerate(raw):
        where = f"objectives[{i}]"
        if isinstance(item, str):
            item = {"metric": item}
        item = _mapping(source, where, item)
        bad = [k for k in item if k not in ("metric", "direction")]
        if bad:
            raise _fail(source, f"{where}.{bad[0]}", item[bad[0]], "allowed keys: metric, direction")
        metric = item.get("metric")
        if metric not in OBJECTIVES:
            leak = " (choosing on a test split leaks the test set into the choice)" if "test" in str(metric) else ""
            raise _fail(source, f"{where}.metric", metric, f"choose a validation metric: {', '.join(OBJECTIVES)}{leak}")
        direction = item.get("direction", OBJECTIVES[metric])
        if direction != OBJECTIVES[metric]:
            raise _fail(source, f"{where}.direction", direction, f"{metric} is only sensibly {OBJECTIVES[metric]}d")
        if metric in [o.metric for o in out]:
            raise _fail(source, f"{where}.metric", metric, "each metric may appear once")
        out.append(Objective(metric, direction))
    return tuple(out)


def _parse_choice(source: str, key: str, raw: Any, known: dict) -> tuple[str, dict]:
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = dict(_mapping(source, key, raw))
    name = raw.pop("name", None)
    if name not in known:
        raise _fail(source, f"{key}.name" if raw else key, name, f"choose one of {', '.join(known)}")
    return name, raw


def _check_runs(spec: StudySpec) -> None:
    """The fixed options, and every edge value of the space, must make a valid run (field named if not)."""
    try:
        spec.config({})
    except FocusmlError as e:
        raise FocusmlError(f"{spec.source}: fixed options do not make a valid run: {e}") from None
    for p in spec.search:
        for value in p.corners():
            try:
                spec.config({p.name: value})
            except FocusmlError as e:
                raise FocusmlError(f"{spec.source}: search.{p.name} value {value!r} does not make a valid run: {e}") from None
    base = {p.name: p.corners()[0] for p in spec.search}
    try:
        spec.config(base)
    except FocusmlError as e:
        raise FocusmlError(f"{spec.source}: search values {base} together do not make a valid run: {e}") from None


def _check_strategy(spec: StudySpec) -> None:
    if spec.multi and spec.pruner != "none":
        raise _fail(spec.source, "pruner", spec.pruner,
                    f"Optuna prunes single-objective studies only and this one has {len(spec.objectives)} objectives: use `pruner: none`")
    if spec.sampler == "grid":
        for p in spec.search:
            if p.grid_values() is None:
                raise _fail(spec.source, f"search.{p.name}", "a continuous float range",
                            "the grid sampler needs a finite set: give `step`, or `type: categorical` with `choices`")
    if spec.sampler == "cmaes" and spec.multi:
        raise _fail(spec.source, "sampler", spec.sampler, "CMA-ES is single-objective: use tpe, nsga2 or random")
    spec.make_sampler()
    spec.make_pruner()


# ----------------------------------------------------------------------------- storage


def open_storage(storage: str | None, workers: int = 1) -> tuple[Any, str]:
    """(what Optuna takes, a display string without passwords) for `--storage`.

    None → `optuna.db` (SQLite) here for one process, `optuna.journal` here for several; a URL
    (`sqlite:///…`, `postgresql://…`, `mysql://…`) → that database; any other string → a journal
    file at that path. SQLite is refused for several workers: it locks under parallel writers.
    """
    if storage in (None, ""):
        storage = str(Path.cwd() / (DEFAULT_SQLITE if workers == 1 else DEFAULT_JOURNAL))
        if workers == 1:
            storage = f"sqlite:///{storage}"
    if "://" in storage:
        if storage.startswith("sqlite") and workers > 1:
            raise FocusmlError(
                f"--storage {storage} is SQLite, which locks under {workers} parallel writers. Use a journal file "
                f"(--storage {DEFAULT_JOURNAL}) on one machine, or a database server URL (postgresql://…) across machines.")
        return storage, _redact(storage)
    path = Path(storage)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        raise FocusmlError(f"--storage {storage} looks like an SQLite file: write it as a URL, sqlite:///{path.resolve()} "
                           f"(or give a journal file such as {DEFAULT_JOURNAL}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path))), f"journal:{path.resolve()}"


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


# ----------------------------------------------------------------------------- trials


class TrialPruned(optuna.TrialPruned, tracking.StopRun):
    """Stops a pruned trial: Optuna records it PRUNED, its MLflow run ends KILLED, tagged pruned."""

    status = "KILLED"
    tags = {"optuna.pruned": "true"}


class TrialCallbacks(Callbacks):
    """Reports the per-epoch objective to the trial (single-objective) and prunes on request."""

    def __init__(self, trial: optuna.Trial, spec: StudySpec, inner: Callbacks | None = None):
        self.trial, self.spec, self.inner = trial, spec, inner or Callbacks()

    def on_prepare(self, desc, step, steps):
        self.inner.on_prepare(desc, step, steps)

    def on_batch_end(self, epoch, step, steps, loss):
        self.inner.on_batch_end(epoch, step, steps, loss)

    def on_epoch_end(self, epoch, metrics, model):
        import mlflow

        self.inner.on_epoch_end(epoch, metrics, model)
        run = mlflow.active_run()
        if run is not None and "mlflow_run_id" not in self.trial.user_attrs:
            self.trial.set_user_attr("mlflow_run_id", run.info.run_id)
        if self.spec.multi:
            return  # Optuna cannot prune multi-objective studies
        value = metrics[self.spec.objectives[0].metric]
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch} "
                              f"({self.spec.objectives[0].metric} = {value:.4g})")


def objective_values(history: list[dict[str, float]], spec: StudySpec) -> list[float]:
    """The final epoch's validation metrics, one per objective (never a test metric)."""
    final = history[-1]
    return [float(final[o.metric]) for o in spec.objectives]


@dataclass
class _Context:
    """What a trial needs, picklable for worker processes."""

    spec: StudySpec
    study_name: str
    parent_run_id: str
    experiment: str


def _objective(ctx: _Context, inner_factory: Callable[[optuna.Trial], Callbacks | None] | None = None):
    from focusml import experiment

    def objective(trial: optuna.Trial):
        params = {p.name: p.suggest(trial) for p in ctx.spec.search}
        config = ctx.spec.config(params, experiment=ctx.experiment,
                                 run_name=f"{ctx.study_name}-trial-{trial.number}")
        trial.set_user_attr("worker_pid", os.getpid())
        inner = inner_factory(trial) if inner_factory else None
        result = experiment.run(config, callbacks=TrialCallbacks(trial, ctx.spec, inner),
                                parent_run_id=ctx.parent_run_id,
                                tags={"optuna.study_name": ctx.study_name, "optuna.trial_number": str(trial.number),
                                      "focusml.tune.parent": ctx.parent_run_id})
        trial.set_user_attr("mlflow_run_id", result.run_id)
        values = objective_values(result.history, ctx.spec)
        return values if ctx.spec.multi else values[0]

    return objective


def _worker(ctx: _Context, storage: str, n_trials: int, seed_offset: int, uri: str, verbosity: int, errors) -> None:
    """One worker process: load the shared study and run its share of the trials."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # trials are children of the parent, never the env run
    os.environ["MLFLOW_TRACKING_URI"] = uri
    optuna.logging.set_verbosity(verbosity)
    try:
        store, _ = open_storage(storage)  # explicit, already checked by the parent process
        study = optuna.load_study(study_name=ctx.study_name, storage=store,
                                  sampler=ctx.spec.make_sampler(seed_offset), pruner=ctx.spec.make_pruner())
        study.optimize(_objective(ctx), n_trials=n_trials)
    except BaseException as e:  # report to the parent process, which raises it
        errors.put(f"{type(e).__name__}: {e}")
        raise


# ----------------------------------------------------------------------------- the study


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


def run_study(spec: StudySpec, *, n_trials: int | None = None, study_name: str | None = None,
              storage: str | None = None, workers: int = 1, register: str | None = None,
              on_trial: Callable[[TrialRecord], None] | None = None,
              trial_callbacks: Callable[[optuna.Trial], Callbacks | None] | None = None) -> StudyResult:
    """Run (or resume) a study under one MLflow parent run and return its summary.

    `on_trial` is called with every trial that finishes during this call (for progress output);
    `trial_callbacks(trial)` may give per-trial training callbacks (single process only).
    """
    n = spec.n_trials if n_trials is None else n_trials
    if not isinstance(n, int) or n < 1:
        raise FocusmlError(f"--n-trials is {n}; it must be ≥ 1.")
    if not isinstance(workers, int) or workers < 1:
        raise FocusmlError(f"--workers is {workers}; it must be ≥ 1.")
    name = study_name or spec.study_name
    if register and not spec.config({p.name: p.corners()[0] for p in spec.search}).log_model:
        raise FocusmlError(f"--register {register} needs the trials' models, but {spec.source} sets "
                           "`log_model: false`; remove it from `fixed`.")
    uri = tracking.setup()
    store, shown = open_storage(storage, workers)
    try:
        study = optuna.create_study(study_name=name, storage=store, directions=spec.directions, load_if_exists=True,
                                    sampler=spec.make_sampler(), pruner=spec.make_pruner())
    except (optuna.exceptions.StorageInternalError, ValueError, OSError) as e:
        raise FocusmlError(f"cannot open the Optuna storage {shown}: {e}") from None
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise FocusmlError(f"study '{name}' in {shown} already exists with directions "
                           f"{[d.name.lower() for d in study.directions]}, but {spec.source} asks for {spec.directions}: "
                           "pick another --study-name.")
    n_before = len(study.trials)
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    if n_before:  # resuming: a fresh sampler seed so random draws do not repeat the earlier ones
        study.sampler = spec.make_sampler(n_before)
    start = time.perf_counter()
    experiment_name = spec.fixed.get("experiment", RunConfig().experiment)
    tags = {"focusml.kind": "tune", "optuna.study_name": name, "focusml.method": spec.method,
            "focusml.dataset": spec.dataset}
    with tracking.start_run(experiment_name, run_name=f"tune-{name}", tags=tags) as parent:
        os.environ.pop("MLFLOW_RUN_ID", None)  # consumed by the parent; trials must open new runs
        parent_id = parent.info.run_id
        import mlflow

        experiment_name = mlflow.get_experiment(parent.info.experiment_id).name  # children next to the parent
        _log_setup(spec, name, shown, n, workers, n_before)
        ctx = _Context(spec, name, parent_id, experiment_name)
        if workers == 1:
            report = (lambda s, t: on_trial(TrialRecord.of(t))) if on_trial else None
            study.optimize(_objective(ctx, trial_callbacks), n_trials=n, callbacks=[report] if report else None)
        else:
            storage_arg = storage or str(Path.cwd() / DEFAULT_JOURNAL)
            _run_workers(ctx, storage_arg, study, n, workers, n_before, uri, on_trial)
        result = _summarise(study, spec, name, shown, parent_id, n_before)
        result.wall_s = time.perf_counter() - start
        mlflow.log_metric("time/study_s", result.wall_s)
        if register:
            if result.best is None or not result.best.run_id:
                raise FocusmlError(f"study '{name}' has no completed trial to register.")
            version = tracking.register(result.best.run_id, register, "champion")
            result.registered = f"{register} version {version}"
            mlflow.set_tags({"registered_model": register, "registered_version": version})
    return result


def _run_workers(ctx: _Context, storage: str, study: optuna.Study, n: int, workers: int, n_before: int, uri: str,
                 on_trial: Callable[[TrialRecord], None] | None) -> None:
    """K spawned processes, each running its share of n trials; report finished trials as they land."""
    import multiprocessing as mp

    mpc = mp.get_context("spawn")
    errors = mpc.Queue()
    shares = [n // workers + (i < n % workers) for i in range(workers)]
    procs = [mpc.Process(target=_worker, name=f"focusml-tune-{i}",
                         args=(ctx, storage, share, n_before + i, uri, optuna.logging.get_verbosity(), errors))
             for i, share in enumerate(shares) if share]
    for p in procs:
        p.start()
    seen: set[int] = set()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    try:
        while True:
            alive = any(p.is_alive() for p in procs)
            for t in study.get_trials(deepcopy=False, states=finished):
                if t.number not in seen:
                    seen.add(t.number)
                    if on_trial and t.number >= n_before:
                        on_trial(TrialRecord.of(t))
            if not alive:
                break
            time.sleep(1.0)
    except BaseException:  # Ctrl-C reaches the workers too (same process group): let them end their runs
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        raise
    for p in procs:
        p.join()
    failed = [p for p in procs if p.exitcode != 0]
    if failed:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        raise FocusmlError(f"{len(failed)} of {len(procs)} tune workers failed: {'; '.join(msgs) or 'no message'}")


def _log_setup(spec: StudySpec, name: str, shown: str, n: int, workers: int, n_before: int) -> None:
    import mlflow

    tracking.log_params({
        "study_name": name, "study_file": spec.source, "storage": shown, "method": spec.method,
        "dataset": spec.dataset, "objectives": ",".join(f"{o.metric}:{o.direction}" for o in spec.objectives),
        "sampler": spec.sampler, "pruner": spec.pruner, "sampler_seed": spec.seed, "trials_requested": n,
        "workers": workers, "trials_before": n_before,
        "search_space": json.dumps({p.name: _space(p) for p in spec.search}),
        **{f"fixed.{k}": v for k, v in spec.fixed.items()},
    })
    if Path(spec.source).is_file():
        mlflow.log_artifact(spec.source, artifact_path="study")


def _space(p: SearchParam) -> Any:
    if p.type == "categorical":
        return list(p.choices)
    return {"type": p.type, "low": p.low, "high": p.high, **({"log": True} if p.log else {}),
            **({"step": p.step} if p.step else {})}


def _summarise(study: optuna.Study, spec: StudySpec, name: str, shown: str, parent_id: str, n_before: int) -> StudyResult:
    """Log the study's outcome on the parent run and return it."""
    import mlflow

    trials = study.get_trials(deepcopy=False)
    best = choose(study, spec)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pareto = (study.best_trials if spec.multi else [best]) if best else []
    result = StudyResult(name, shown, parent_id, [o.metric for o in spec.objectives], [TrialRecord.of(t) for t in trials],
                         len(trials) - n_before, TrialRecord.of(best) if best else None, [TrialRecord.of(t) for t in pareto])
    counts = {f"trials/{s.lower()}": float(result.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL")}
    tracking.log_metrics({**counts, "trials/total": float(len(trials)), "trials/this_call": float(result.new_trials)})
    for t in done:  # the optimisation history as step series (step = trial number)
        tracking.log_metrics({f"trial/{o.metric}": v for o, v in zip(spec.objectives, t.values)}, step=t.number)
    if best is not None:
        tracking.log_params({f"best.{k}": v for k, v in best.params.items()})
        tracking.log_metrics({f"best/{o.metric}": v for o, v in zip(spec.objectives, best.values)})
        mlflow.set_tags({"best.trial_number": str(best.number), "best.run_id": best.user_attrs.get("mlflow_run_id", "")})
    mlflow.log_dict({"chosen": best.number if best else None,
                     "pareto_front": [vars(r) for r in result.pareto],
                     "trials": [vars(r) for r in result.trials]}, "study/trials.json")
    _log_figures(study, spec, result)
    return result


def _log_figures(study: optuna.Study, spec: StudySpec, result: StudyResult) -> None:
    """History, importances (need ≥ 2 completed trials with varying params) and the Pareto front.

    Each figure is optional: when Optuna cannot draw one (too few trials, one distinct value),
    the reason is kept in `result.skipped` and tagged on the parent run instead.
    """
    import mlflow
    from optuna.visualization import matplotlib as ovm

    import focusml.figures  # noqa: F401  (selects the Agg backend)

    targets = [(o.metric, (lambda t, i=i: t.values[i]) if spec.multi else None) for i, o in enumerate(spec.objectives)]
    plots: list[tuple[str, Callable[[], Any]]] = []
    for metric, target in targets:
        slug = metric.replace("/", "_")
        plots.append((f"optimization_history_{slug}", lambda t=target, m=metric: ovm.plot_optimization_history(
            study, target=t, target_name=m)))
        plots.append((f"param_importances_{slug}", lambda t=target, m=metric: ovm.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=t, target_name=m)))
    if spec.multi:
        plots.append(("pareto_front", lambda: ovm.plot_pareto_front(study, target_names=result.objectives)))
    elif result.count("PRUNED"):
        plots.append(("intermediate_values", lambda: ovm.plot_intermediate_values(study)))
    n_done = result.count("COMPLETE")
    for name, draw in plots:
        if name.startswith("param_importances") and n_done < 2:
            result.skipped[name] = f"needs ≥ 2 completed trials, has {n_done}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
        except Exception as e:  # an optional figure must never fail the study
            result.skipped[name] = f"{type(e).__name__}: {e}"
            continue
        fig = getattr(ax, "figure", None) or ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        tracking.log_figure(fig, f"figures/{name}.png")
        result.figures.append(f"figures/{name}.png")
    if result.skipped:
        mlflow.set_tags({f"figure_skipped.{k}": v[:500] for k, v in result.skipped.items()})
    if not spec.multi and n_done >= 2:
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            tracking.log_metrics({f"importance/{k}": v for k, v in imp.items()})
        except (RuntimeError, ValueError):
            pass  # already recorded as a skipped figure

