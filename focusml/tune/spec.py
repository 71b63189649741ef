"""What a study is: its searched options, its objectives, the samplers and pruners it may name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from focusml import FocusmlError
from focusml.core.config import RunConfig

#: Objectives: validation metrics only, each with the direction that makes sense for it.
OBJECTIVES = {"acc/val_cf": "maximize", "flip/val": "minimize", "evidence_in_mask/val": "minimize",
              "acc/val": "maximize", "wr/val": "minimize", "cam_in_mask/val": "minimize"}
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
    overrides: tuple[str, ...] = ()  # `focusml tune --set KEY=VALUE` given on the command line, as typed

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
