"""Refine the model you have (`focusml refine SOURCE`): two tracked stages from a trained model and its masks.

1. **head**: `head_refit` keeps the model's features and refits its linear head on shortcut-swapped
   training images (seconds on a CPU);
2. **full**: the whole network fine-tuned from the refitted model with a mask method (`random_crop`
   by default) for a few epochs at a low learning rate (`FULL_DEFAULTS`), its checkpoint chosen on
   the selection metric like any run.

`stages="auto"` runs both and keeps the full stage only when its selection metric (`acc/val_cf`
where val has masks) is better than the head refit's, or the head refit ends at chance accuracy on
val and the full stage does not: validation decides whether the features had
to change. `"head"` stops after stage 1; `"full"` keeps stage 2. Each stage is a normal tracked run
(FINISHED, logged model, registrable) with lineage SOURCE → head → full, tagged
`focusml.refine_stage`; the kept one gets `focusml.refine_chosen = true`.

The dataset, its options, the architecture, the seed and the experiment default to the source
run's own params, so `refine RUN_ID` refines on the data the run was trained on and lands beside
its references (`focusml register` and `focusml compare` pair runs by experiment, dataset and seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import mlflow
import torch

from focusml import FocusmlError
from focusml.core import methods
from focusml.core.callbacks import Callbacks
from focusml.core.config import MaskAugment, RunConfig
from focusml.core.data import Dataset
from focusml.core.evaluate import SELECTABLE
from focusml.core.models import source_kind
from focusml.core.run import CHANCE_WARNING, RunResult
from focusml.tracking.runs import run_info
from focusml.tracking.sources import source_run
from focusml.tracking.store import setup
from focusml.tracking.tracked import run as tracked_run

STAGES = ("auto", "head", "full")
HEAD = "head_refit"
#: what a run inherits from the source run unless given (data, architecture, pairing, where it lands)
INHERITED = ("dataset", "data_root", "data_seed", "image_size", "train_size", "data_loading", "model", "seed",
             "experiment")
#: the full stage's schedule: a fifth of the default from-scratch budget, and a learning rate a tenth of
#: it (a fresh Adam at the from-scratch rate undoes a trained network's first epoch: docs/training.md)
FULL_DEFAULTS = {"epochs": 5, "lr": 3e-4}


@dataclass
class Refinement:
    """The stages run (name → result, in order) and the one kept."""

    source: str
    stages: dict[str, RunResult] = field(default_factory=dict)
    chosen: str = "head"
    metric: str = "acc/val_cf"

    @property
    def result(self) -> RunResult:
        return self.stages[self.chosen]


def source_params(source: str) -> dict[str, str]:
    """The params of the run SOURCE names (empty for a local file or a run not logged by focusml)."""
    if source_kind(source) == "file":
        return {}
    run_id = source_run(source)[0]  # a run, runs:/ or models:/ (refused if missing); the weights are read later
    return dict(run_info(run_id).data.params)


def stage_configs(source: str, options: dict, method: str) -> tuple[dict, dict]:
    """Flat options of the head stage and of the full stage (whose init_from is filled in later)."""
    inherited = {k: v for k, v in source_params(source).items() if k in INHERITED and v not in ("", "None")}
    for key in ("seed", "data_seed", "image_size", "train_size"):
        if key in inherited:
            inherited[key] = int(inherited[key])
    head_keys = {p.name for p in methods.get(HEAD).params}
    common = {**inherited, **{k: v for k, v in options.items() if k not in head_keys and v is not None}}
    not_head = {*methods.all_params(), *FULL_DEFAULTS, *(f.name for f in fields(MaskAugment))}
    head = {**{k: v for k, v in common.items() if k not in not_head},
            **{k: v for k, v in options.items() if k in head_keys and v is not None},
            "method": HEAD, "init_from": source}
    full = {**FULL_DEFAULTS, **common, "method": method}
    return head, full


def _rank(result: RunResult, metric: str) -> tuple[float, float]:
    """How a stage ranks (higher is better): one above chance accuracy on val first, then its selection metric.
    A head that answers one class scores acc/val_cf 1.0 when the annotated val images are all of that class.
    (The other warnings speak of the test split, which never chooses.)"""
    value = result.metrics.get(f"selected/{metric}", math.nan)
    sign = 1.0 if SELECTABLE.get(metric, "max") == "max" else -1.0
    low = any(w.startswith(CHANCE_WARNING) for w in result.warnings)
    return (0.0 if low else 1.0), (sign * value if math.isfinite(value) else -math.inf)


def refine(source: str, options: dict | None = None, *, stages: str = "auto", method: str = "random_crop",
           callbacks: Callable[[str, RunConfig], Callbacks | None] | None = None, data: Dataset | None = None,
           model: torch.nn.Module | None = None) -> Refinement:
    """Refine SOURCE (a run id, runs:/, models:/ or a local file): head refit, then full refinement.

    `options`: flat run options (as `RunConfig.from_flat` takes) over the source run's; the head
    refit's own (`l2`, `copies`) go to stage 1, everything else to both stages (a method's options and the
    schedule to stage 2 only). `callbacks(stage, config)` gives each stage its callbacks (progress bars).
    `data`, `model`: your own dataset and network (the architecture the source was trained as), for both stages.
    Bad input is refused before any run starts.
    """
    if stages not in STAGES:
        raise FocusmlError(f"--stages is {stages!r}; choose one of {', '.join(STAGES)}.")
    cls = methods.get(method)
    if cls.replaces_training or not cls.uses_masks:
        raise FocusmlError(f"--method {method}: the full stage fine-tunes with a mask-based training method "
                           f"(e.g. random_crop, pas); '{method}' is not one.")
    setup()
    head_flat, full_flat = stage_configs(source, dict(options or {}), method)
    own = {"own_data": data is not None, "own_model": model is not None}
    head_config = RunConfig.from_flat(head_flat).validate(**own)
    full_config = RunConfig.from_flat({**full_flat, "init_from": source}).validate(**own) if stages != "head" else None
    out = Refinement(source)
    pick = callbacks or (lambda name, config: None)
    out.stages["head"] = tracked_run(head_config, callbacks=pick("head", head_config), data=data, model=model,
                                     tags={"focusml.refine_stage": "head", "focusml.refine_of": source})
    out.metric = out.stages["head"].fit.select if out.stages["head"].fit else "last"
    if full_config is not None:
        full_config.init_from = out.stages["head"].run_id
        out.stages["full"] = tracked_run(full_config, callbacks=pick("full", full_config), data=data, model=model,
                                         tags={"focusml.refine_stage": "full", "focusml.refine_of": source})
        better = _rank(out.stages["full"], out.metric) > _rank(out.stages["head"], out.metric)
        out.chosen = "full" if stages == "full" or better else "head"
    mlflow.MlflowClient().set_tag(out.result.run_id, "focusml.refine_chosen", "true")
    return out
