"""One run end to end, without tracking: validate → load data → build model → method.prepare → fit → test.

`run(config, callbacks)` is the core's single entry point: the tracked run of `focusml train`,
the MLproject entry points and the Optuna trials (`focusml.tracking.run`, which plugs MLflow
logging in as callbacks), the benchmarks and the tests all go through it. It returns the final
metrics and the trained model; nothing here imports MLflow.

`run(config, callbacks, resume=state)` continues a stopped run from a training state that
`Callbacks.on_checkpoint` saved (`train.training_state`). A run that ends at chance accuracy or
with an all-zero CAM carries a warning (`RunResult.warnings`) instead of passing for a result.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from pathlib import Path

import torch

from focusml import FocusmlError
from focusml.core import memory, methods
from focusml.core.cache import cache_dir
from focusml.core.callbacks import Callbacks, RunContext, RunResult, as_callbacks
from focusml.core.config import RunConfig
from focusml.core.data import DATASETS, DataOptions, Dataset, load
from focusml.core.data.masks import annotate
from focusml.core.evaluate import at_chance, counterfactuals, select_metric, test_metrics
from focusml.core.methods import Method, PrepareContext
from focusml.core.models import InitWeights, adapt, build_model, load_init_state, read_init_file, source_kind
from focusml.core.precision import Precision
from focusml.core.train import FitResult, fit, refit, resolve_device


_kept: dict = {"on": False, "key": None, "data": None}  # `keep_data`: the last built-in dataset loaded


@contextmanager
def keep_data():
    """While open, `load_data` keeps the last built-in (generated) dataset it made and hands it out
    again for the same options: a process running many trials (`focusml tune`) generates it once.
    Datasets are never modified in place (`annotate` and the methods make new splits)."""
    _kept["on"] = True
    try:
        yield
    finally:
        _kept.update(on=False, key=None, data=None)


def load_data(config: RunConfig) -> Dataset:
    """The dataset a config names, with its data options."""
    options = DataOptions(
        seed=config.data_seed,
        root=Path(config.data_root) if config.data_root else None,
        download=config.download,
        image_size=config.image_size,
        train_size=config.train_size,
        loading=config.data_loading,
        fits=lambda channels, height, width, classes, decoded, streamed: memory.check(
            config.model, channels, classes, height, width, config.batch_size, decoded, streamed, config.image_size,
            config.data_loading),
    )
    if not (_kept["on"] and DATASETS[config.dataset].builtin):
        return load(config.dataset, options)
    key = (config.dataset, repr(options))
    if _kept["key"] != key:
        _kept.update(key=key, data=load(config.dataset, options))
    return _kept["data"]


def summary(fitted: FitResult) -> dict[str, float]:
    """Run-level numbers from the loop: mean time per epoch, the selected epoch and its validation metrics."""
    times = [h["time/epoch_s"] for h in fitted.history]
    chosen = {f"selected/{k}": v for k, v in fitted.selected_metrics.items() if "/val" in k}
    # selected_epoch counts from 1, like the progress bar and the MLflow metric steps
    return {"time/epoch_s_mean": sum(times) / len(times), "selected_epoch": float(fitted.selected_epoch + 1), **chosen}


CHANCE_WARNING = "the model ends at chance accuracy"  # how that warning begins: a validation fact (the others: test)


def health_warnings(data: Dataset, fitted: FitResult, test_pos_cams: torch.Tensor) -> list[str]:
    """What makes a finished run's numbers suspect: chance accuracy on `val`, an all-zero CAM on `test`."""
    out = []
    acc = fitted.selected_metrics.get("acc/val")
    low, chance = at_chance(math.nan if acc is None else acc, data.split("val").labels, data.num_classes)
    if low:
        out.append(f"{CHANCE_WARNING} (acc/val {acc:.3f}, majority class {chance:.3f}): it learned "
                   "nothing; check the learning rate, λ and the number of epochs")
    if test_pos_cams.numel() and not bool((test_pos_cams > 0).any()):
        out.append("the CAM is zero on every test image (no positive evidence left in the last conv layer): "
                   "wr and cam_in_mask mean nothing for this run")
    return out


def selection_warnings(select: str, selected: str, data: Dataset) -> list[str]:
    """`--select auto` that fell back to the last epoch because no validation image has a mask: said, not hidden."""
    if select != "auto" or selected != "last" or data.num_classes < 2:
        return []
    return [f"no validation image of dataset '{data.name}' has a mask, so --select auto evaluated the last epoch "
            "(acc/val_cf needs annotated val images): draw masks on some of them (focusml masks serve) or pass "
            "--select acc/val or last"]


def counterfactual_counts(data: Dataset) -> dict[str, int]:
    """`cf_images_val`, `cf_images_test`: how many images the counterfactual metrics of each split count
    (its annotated images; `focusml.core.counterfactual`). Built once per split, shared with the evaluation."""
    return {f"cf_images_{name}": int(counterfactuals(data.split(name)).valid.sum())
            for name in ("val", "test") if name in data.splits}


def training_data(config: RunConfig, data: Dataset) -> tuple[Dataset, int | None]:
    """The dataset as training sees it: `--mask-budget` and `--mask-corruption` applied to the training split of
    a mask-based method (once, before training); and the number of annotated training images (None: no masks).

    A mask-based method on a training split without a single mask is refused: it would train a baseline."""
    method_cls = methods.get(config.method)
    if not method_cls.uses_masks:
        return data, None
    out, annotated = annotate(data, method_cls.train_split, config.mask_budget, config.mask_corruption,
                              config.corruption_strength, config.seed)
    if annotated == 0:
        raise FocusmlError(f"--method {config.method} learns from masks, and no image of the {method_cls.train_split} "
                           f"split of dataset '{data.name}' has one (a folder dataset: no mask file, or an all-black "
                           "one). Draw some with `focusml masks serve DATA_ROOT`, or use --method baseline.")
    return out, annotated


def init_weights(config: RunConfig, init: InitWeights | None) -> InitWeights | None:
    """The weights `--init-from` names: given by a tracker (which resolves runs and registered models), or
    read here from a local file. A run id or URI without a tracker is refused (FocusmlError)."""
    if init is not None or not config.init_from:
        return init
    if source_kind(config.init_from) != "file":
        raise FocusmlError(f"--init-from {config.init_from}: runs and registered models are resolved by a tracked run "
                           "(focusml train, mlflow run, focusml tune, or focusml.tracking.run); the core run reads "
                           "local files only.")
    return read_init_file(config.init_from)


def own_model(module: torch.nn.Module, method_cls: type[Method], config: RunConfig, data: Dataset) -> torch.nn.Module:
    """A copy of your network under the CamNet contract (`models.adapt`, found automatically unless `module` is
    already adapted); the given module stays untouched. A method that needs an exact CAM is refused on a
    network whose CAM is approximate (named layers)."""
    if config.pretrained:
        raise FocusmlError("pretrained weights go into your own network before the run (load_state_dict); drop "
                           "the pretrained option.")
    model = adapt(copy.deepcopy(module), data.image_shape)  # named layers: pass `adapt(module, shape, features, head)`
    if method_cls.exact_cam and not getattr(model, "exact", True):
        raise FocusmlError(f"method '{config.method}' needs an exact CAM (logits = linear head over the globally "
                           f"pooled feature map), and {type(module).__name__} with the named layers has none; use "
                           "random_crop, generative, counterexamples, rrr or selective_dropout.")
    return model


def run(config: RunConfig, callbacks: Callbacks | None = None, init: InitWeights | None = None,
        resume: dict | None = None, *, data: Dataset | None = None, model: torch.nn.Module | None = None) -> RunResult:
    """Train and evaluate one configuration. Bad input raises `FocusmlError` before `run_scope` opens.

    `init`: the weights to start from when `config.init_from` names a run or a registered model
    (`focusml.tracking` resolves those); a local file is read here. `resume`: a training state
    saved by `Callbacks.on_checkpoint` for this same config; training continues after its epoch.
    `data`: a ready `Dataset` in place of the one `config.dataset` names (your own data: `data.own`);
    `model`: your own network in place of `config.model`, trained on a copy (`own_model`).
    """
    callbacks = as_callbacks(callbacks)  # one Callbacks or a list of them
    config.validate(own_data=data is not None, own_model=model is not None)
    method_cls = methods.get(config.method)
    init = init_weights(config, init)
    data = load_data(config) if data is None else data
    data.split(method_cls.train_split)  # refuse early (e.g. upper_bound without a clean split)
    data, annotated = training_data(config, data)
    selected = select_metric(config.select, data)  # refuse early a selection metric the data cannot compute
    method = method_cls(config.method_params)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    c, h, w = data.image_shape
    model = (build_model(config.model, c, data.num_classes, max(h, w), config.pretrained) if model is None
             else own_model(model, method_cls, config, data))
    if init is not None:  # every tensor must fit: a wrong architecture is refused before any run exists
        load_init_state(model, init, config.model, max(h, w))
    precision = Precision.for_run(config.amp, config.channels_last, config.model, device)
    model = precision.model(model.to(device))  # --channels-last: the training step converts its batches too
    method.check(model, data, device)  # options that must fit the model (layer names, an inpainter)
    ctx = RunContext(config, data, model, method, device)
    with callbacks.run_scope(ctx):
        if annotated is not None:
            callbacks.log_params({"annotated_images": annotated})
        callbacks.log_params(counterfactual_counts(data))
        callbacks.log_params(precision.params)  # what --amp and --channels-last resolved to on this device
        method.prepare(PrepareContext(data=data, config=config, model=model, cache_dir=cache_dir(), device=device,
                                      log_artifact=callbacks.log_artifact, log_params=callbacks.log_params,
                                      progress=callbacks.on_prepare))
        fitted = (refit(model, data, method, config, device, callbacks) if method.replaces_training
                  else fit(model, data, method, config, device, callbacks, resume=resume))
        last_state = None
        if fitted.selected_state is not None:
            last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(fitted.selected_state)
        metrics, cm, preds = test_metrics(model, data, device)
        metrics.update(summary(fitted))
        result = RunResult(metrics, None, fitted.history, model, fitted, confusion=cm, last_state=last_state,
                           warnings=selection_warnings(config.select, selected, data)
                           + health_warnings(data, fitted, preds.pos_cams), predictions=preds)
        callbacks.on_run_end(ctx, result)
    return result
