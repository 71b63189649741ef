"""Logging a run to MLflow as `Callbacks` plugged into the core `focusml.core.run.run`.

`RunLogger.run_scope` opens the MLflow run once the inputs are accepted (so a refused input
leaves no run behind) and logs the params, the train/val/test datasets and (when mask
augmentation is on) its examples and the untrained network's CAM grid (step 0); each epoch logs
its metrics (one batch) and a CAM grid of fixed validation images as an image step series, at step =
epoch counted from 1 (as the progress bar counts): every epoch, or every `cam_every` epochs and
always the first and the last (the figure is made once and redrawn, `figures.CamSeries`);
the end logs the model (an MLflow 3 LoggedModel named after the run, at the evaluated epoch's step,
so it carries that epoch's validation metrics), the final metrics linked to it and to their split's dataset, the figures, the per-image test predictions as a table and the checkpoints.
It hands nothing on: a tracked run's callbacks are one list with the logger first
(`keeper.RunKeeper`), so the logging of an epoch comes before the caller's callbacks see it (a
pruned trial's last epoch is logged before it stops).
The end is idempotent: a resumed run whose earlier attempt was killed while it logged its end keeps
that attempt's model if it was completed (READY), else replaces it (`log.keep_one_model`), so a run has
one LoggedModel whatever was killed when.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from focusml.core.callbacks import Callbacks, RunContext, RunResult
from focusml.core.data.masks import examples
from focusml.core.evaluate import Predictions
from focusml.core.figures import CamSeries, confusion_figure, mask_augment_grid, sample_indices, split_cam_grid
from focusml.tracking.log import (experiment_name, log_artifact, log_datasets, log_figure, log_final_metrics,
                                  log_image_step, log_metrics, log_model, log_params, log_state_dict, log_table,
                                  keep_one_model, model_name, set_tags)
from focusml.tracking.pyfunc import own_architecture
from focusml.tracking.sources import Source, log_lineage
from focusml.tracking.store import start_run

PREDICTIONS_TABLE = "tables/test_predictions.json"


def cam_due(step: int, epochs: int, every: int) -> bool:
    """Whether epoch `step` (from 1) gets a `cam_grid_val` image: every `every`-th, the first and the last."""
    return step in (1, epochs) or step % every == 0


def same_value(a: float, b: float) -> bool:
    """Two logged values of one metric are the same (NaN equals NaN; float round-trips through the store)."""
    return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9)


def epoch_step(epoch: int) -> int:
    """The MLflow step of an epoch's metrics: one-based, as the progress bar and the CAM grid titles
    count (also what `tracking.keeper` checks when a resumed run re-sends them)."""
    return epoch + 1


class RunLogger(Callbacks):
    def __init__(self, parent_run_id: str | None = None, tags: dict[str, str] | None = None, run_id: str | None = None,
                 lineage: Source | None = None):
        self.parent_run_id, self.tags = parent_run_id, tags or {}
        self.resume_id = run_id  # continue this run (`focusml train --resume`): its inputs are already logged
        self.lineage = lineage  # --init-from: its tags go on the run, its logged model becomes an input
        self.run_id: str | None = None
        self.run_name: str | None = None  # as the store has it (a resumed or adopted run keeps its own)
        self.model_id: str | None = None
        self.ctx: RunContext | None = None
        self.sample: torch.Tensor | None = None
        self.cams: CamSeries | None = None  # the cam_grid_val figure, made once and redrawn each time
        self.datasets: dict = {}

    @contextmanager
    def run_scope(self, ctx: RunContext):
        config, data, method = ctx.config, ctx.data, ctx.method
        tags = {"focusml.kind": "training", "focusml.method": config.method, "focusml.family": method.family,
                "focusml.dataset": config.dataset, **(self.lineage.tags if self.lineage else {}), **self.tags}
        name = config.run_name or f"{config.method}-{config.dataset}-s{config.seed}"
        with start_run(config.experiment, name, parent_run_id=self.parent_run_id, tags=tags,
                       run_id=self.resume_id, system_metrics=config.system_metrics) as active:
            self.run_id, self.run_name, self.ctx = active.info.run_id, active.info.run_name or name, ctx
            fingerprint = data.fingerprint
            log_params({**config.to_params(), "experiment": experiment_name(active.info.experiment_id),
                        "dataset_fingerprint": fingerprint})
            fresh = self.resume_id is None  # a resumed run has its inputs and step 0 logged already
            self.datasets = log_datasets(data, fingerprint, method.train_split, log=fresh)
            # one validation image per class (two when there are few classes): the MLflow UI shows an
            # image series as a thumbnail of at most 256 px, where fewer, larger panels stay legible
            self.sample = sample_indices(data.split("val").labels, data.num_classes, 1 if data.num_classes > 5 else 2)
            self.cams = CamSeries(data, "val", self.sample)
            if fresh:
                log_lineage(self.lineage)
                if method.uses_masks and config.augment.active:  # without augmentation every row would be the mask
                    _log_mask_examples(ctx)
                # step 0 of the CAM series: the network before training (steps count epochs from 1, and
                # the MLflow UI opens an image series at step 0)
                log_image_step(self.cams.image(ctx.model, ctx.device, f"{config.method} on {config.dataset}: before "
                                               f"training, epoch 0/{config.epochs} (val)"), "cam_grid_val", 0)
            try:
                yield
            finally:
                self.cams.close()

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        log_artifact(path, artifact_path)

    def log_params(self, params: dict) -> None:
        log_params(params)

    def on_epoch_end(self, epoch, metrics, model):
        ctx = self.ctx
        step = epoch_step(epoch)
        log_metrics(metrics, step=step, datasets=self.datasets)
        if cam_due(step, ctx.config.epochs, ctx.config.cam_every):
            title = f"{ctx.config.method} on {ctx.config.dataset}: epoch {step}/{ctx.config.epochs} (val)"
            log_image_step(self.cams.image(model, ctx.device, title), "cam_grid_val", step)

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        result.run_id = self.run_id
        config, data = ctx.config, ctx.data
        selected = selected_step(result, config.epochs)
        own, code_paths, why_not = own_architecture(ctx.model) if config.log_model else ({}, [], None)
        if why_not:
            result.warnings.append(f"no MLflow model logged (the weights are in checkpoints/): {why_not}")
        # a resumed run whose earlier attempt was killed at its end may have logged the model already
        kept = keep_one_model(self.run_id, model_name(self.run_name)) if self.resume_id and config.log_model else None
        if kept is not None:
            self.model_id = kept.model_id
            result.model_uri = f"models:/{kept.model_id}"
        elif config.log_model and own is not None:  # first, so the final metrics can name it
            test = data.split("test")
            x, _, _ = test.batch(torch.arange(min(2, len(test))))
            c, h, w = data.image_shape
            info = log_model(ctx.model, x, data.classes,
                             {"model": config.model, "in_channels": c, "num_classes": data.num_classes,
                              "image_size": max(h, w), "input_shape": [c, h, w], **own},
                             step=selected, name=model_name(self.run_name),
                             tags={"focusml.method": config.method, "focusml.dataset": config.dataset,
                                   "focusml.selected_epoch": str(selected)}, code_paths=code_paths)
            self.model_id = info.model_id
            result.model_uri = f"models:/{info.model_id}"
            ctx.model.to(ctx.device)
        log_final_metrics(self._unsent(result.metrics), self.model_id, self.datasets, step=selected)
        _log_final_artifacts(ctx, result)
        if result.warnings:
            set_tags({"focusml.warning": "; ".join(result.warnings)[:5000]})

    def _unsent(self, metrics: dict[str, float]) -> dict[str, float]:
        """`metrics` less those a cut-off earlier attempt of a resumed run already logged (not sent twice)."""
        if self.resume_id is None:
            return metrics
        have = mlflow.MlflowClient().get_run(self.run_id).data.metrics
        return {k: v for k, v in metrics.items() if k not in have or not same_value(have[k], v)}


def selected_step(result: RunResult, epochs: int) -> int:
    """The evaluated epoch, counted from 1 (the model's and the final metrics' step): the loop's own choice,
    as `run.summary` puts it in `selected_epoch`. Not read from `result.metrics`, which a resumed run
    narrows to the metrics its cut-off earlier attempt had not logged yet."""
    if result.fit is not None:
        return result.fit.selected_epoch + 1
    return int(result.metrics.get("selected_epoch", epochs))


def _log_mask_examples(ctx: RunContext) -> None:
    """The augmented-mask example grid (figures/mask_augmentation.png) of a mask-based run."""
    config = ctx.config
    split = ctx.data.split(ctx.method.train_split)
    index, augmented = examples(split.masks, config.augment, config.seed)
    if len(index):
        log_figure(mask_augment_grid(split.images[index], split.masks[index], augmented,
                                     f"mask augmentation: {config.augment}"), "figures/mask_augmentation.png")


def predictions_table(p: Predictions, classes: list[str]) -> pd.DataFrame:
    """One row per test image: label, prediction and its probability, and what the model predicts on
    the image's counterfactual (masked content from an image of another class) and whether it flips
    (empty where the image has no counterfactual: neither it nor its donor has a mask)."""
    valid = p.cf_valid.tolist() if p.cf_valid is not None else [False] * len(p.preds)
    cf = p.cf_preds.tolist() if p.cf_preds is not None else [None] * len(p.preds)
    return pd.DataFrame({
        "index": range(len(p.labels)),
        "label": [classes[i] for i in p.labels.tolist()],
        "prediction": [classes[i] for i in p.preds.tolist()],
        "probability": np.round(p.probability.astype(np.float64), 4).tolist(),
        "correct": (p.preds == p.labels).tolist(),
        "counterfactual_prediction": [classes[c] if v else None for c, v in zip(cf, valid)],
        "flip": [bool(a != c) if v else None for a, c, v in zip(p.preds.tolist(), cf, valid)],
    })


def _log_final_artifacts(ctx: RunContext, result: RunResult) -> None:
    config, data, model, fitted = ctx.config, ctx.data, ctx.model, result.fit
    log_figure(confusion_figure(result.confusion, data.classes), "figures/confusion_matrix.png")
    test = data.split("test")
    selected = selected_step(result, config.epochs)
    log_figure(split_cam_grid(model, data, "test", sample_indices(test.labels, data.num_classes), ctx.device,
                              f"{config.method} on {config.dataset}: test (shortcut broken), epoch {selected}"),
               "figures/cam_grid_test.png")
    log_table(predictions_table(result.predictions, data.classes), PREDICTIONS_TABLE)
    # last.pt: the last epoch; selected_epochN.pt (N from 1): the evaluated weights, when `--select` chose another epoch.
    log_state_dict(result.last_state if result.last_state is not None else model.state_dict(), "checkpoints", "last.pt")
    if result.last_state is not None:
        log_state_dict(model.state_dict(), "checkpoints", f"selected_epoch{fitted.selected_epoch + 1}.pt")
