"""Logging a run to MLflow as `Callbacks` plugged into the core `focusml.run.run`.

`RunLogger.run_scope` opens the MLflow run once the inputs are accepted (so a refused input
leaves no run behind) and logs the params, the dataset and the mask-augmentation examples; each
epoch logs its metrics and a CAM grid of fixed validation images as an image step series; the
end logs the test metrics, the figures, the checkpoints and the model. Progress hooks are passed
on to `inner` (the CLI's bars, an Optuna trial), after the logging, so a pruned trial's last
epoch is logged before it stops.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from focusml.callbacks import Callbacks
from focusml.data.masks import examples
from focusml.figures import confusion_figure, mask_augment_grid, sample_indices, split_cam_grid, to_pil
from focusml.run import RunContext, RunResult
from focusml.tracking.log import (log_artifact, log_dataset, log_figure, log_image_step, log_metrics, log_model,
                                  log_params, log_state_dict)
from focusml.tracking.sources import Source, log_lineage
from focusml.tracking.store import start_run


class RunLogger(Callbacks):
    def __init__(self, inner: Callbacks | None = None, parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None, lineage: Source | None = None):
        self.inner = inner or Callbacks()
        self.parent_run_id, self.tags = parent_run_id, tags or {}
        self.lineage = lineage  # --init-from: its tags go on the run, its logged model becomes an input
        self.run_id: str | None = None
        self.ctx: RunContext | None = None
        self.sample: torch.Tensor | None = None

    @contextmanager
    def run_scope(self, ctx: RunContext):
        config, data, method = ctx.config, ctx.data, ctx.method
        tags = {"focusml.method": config.method, "focusml.family": method.family, "focusml.dataset": config.dataset,
                **(self.lineage.tags if self.lineage else {}), **self.tags}
        name = config.run_name or f"{config.method}-{config.dataset}-s{config.seed}"
        with start_run(config.experiment, name, parent_run_id=self.parent_run_id, tags=tags) as active:
            self.run_id, self.ctx = active.info.run_id, ctx
            fingerprint = data.fingerprint
            log_params({**config.to_params(), "dataset_fingerprint": fingerprint})
            log_dataset(data, fingerprint)
            log_lineage(self.lineage)
            if method.uses_masks:
                _log_mask_examples(ctx)
            self.sample = sample_indices(data.split("val").labels, data.num_classes)
            with self.inner.run_scope(ctx):
                yield

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        log_artifact(path, artifact_path)
        self.inner.log_artifact(path, artifact_path)

    def log_params(self, params: dict) -> None:
        log_params(params)
        self.inner.log_params(params)

    def on_prepare(self, desc, step, steps):
        self.inner.on_prepare(desc, step, steps)

    def on_batch_end(self, epoch, step, steps, loss):
        self.inner.on_batch_end(epoch, step, steps, loss)

    def on_epoch_end(self, epoch, metrics, model):
        ctx = self.ctx
        log_metrics(metrics, step=epoch)
        log_image_step(to_pil(split_cam_grid(model, ctx.data, "val", self.sample, ctx.device, f"epoch {epoch}")),
                       "cam_grid_val", epoch)
        self.inner.on_epoch_end(epoch, metrics, model)

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        result.run_id = self.run_id
        log_metrics(result.metrics)
        _log_final_artifacts(ctx, result)
        self.inner.on_run_end(ctx, result)


def _log_mask_examples(ctx: RunContext) -> None:
    """The augmented-mask example grid (figures/mask_augmentation.png) of a mask-based run."""
    config = ctx.config
    split = ctx.data.split(ctx.method.train_split)
    index, augmented = examples(split.masks, config.augment, config.seed)
    if len(index):
        log_figure(mask_augment_grid(split.images[index], split.masks[index], augmented,
                                     f"mask augmentation: {config.augment}"), "figures/mask_augmentation.png")


def _log_final_artifacts(ctx: RunContext, result: RunResult) -> None:
    config, data, model, fitted = ctx.config, ctx.data, ctx.model, result.fit
    log_figure(confusion_figure(result.confusion, data.classes), "figures/confusion_matrix.png")
    test = data.split("test")
    log_figure(split_cam_grid(model, data, "test", sample_indices(test.labels, data.num_classes), ctx.device,
                              f"{config.method} on {config.dataset} (test, shortcut broken)"),
               "figures/cam_grid_test.png")
    # last.pt: the last epoch; selected_epochN.pt: the evaluated weights, when `--select` chose another epoch.
    log_state_dict(result.last_state if result.last_state is not None else model.state_dict(), "checkpoints", "last.pt")
    if result.last_state is not None:
        log_state_dict(model.state_dict(), "checkpoints", f"selected_epoch{fitted.selected_epoch}.pt")
    if config.log_model:
        x, _, _ = test.batch(torch.arange(min(2, len(test))))
        log_model(model, x)
