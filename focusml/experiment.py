"""One tracked run end to end: validate → load data → build model → prepare → fit → evaluate → log.

`run` is what the CLI, the MLproject entry points, the Optuna tuner, the benchmarks and the tests
call. It returns the final metrics; with `tracking=False` nothing touches MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from focusml import methods, tracking
from focusml.config import RunConfig
from focusml.data import DataOptions, Dataset, load
from focusml.evaluate import predict, test_metrics
from focusml.models import build_model
from focusml.train import Callbacks, FitResult, fit, resolve_device


@dataclass
class RunResult:
    metrics: dict[str, float]
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    model: torch.nn.Module | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("FOCUSML_CACHE", Path.home() / ".cache" / "focusml"))


def load_data(config: RunConfig) -> Dataset:
    return load(config.dataset, DataOptions(
        seed=config.data_seed,
        root=Path(config.data_root) if config.data_root else None,
        download=config.download,
        image_size=config.image_size,
    ))


class _Tracker(Callbacks):
    """Logs per-epoch metrics and a CAM grid of fixed validation images as a step series."""

    def __init__(self, data: Dataset, device, inner: Callbacks):
        from focusml.figures import sample_indices

        self.data, self.device, self.inner = data, device, inner
        val = data.split("val")
        self.sample = sample_indices(val.labels, data.num_classes)

    def on_prepare(self, desc, step, steps):
        self.inner.on_prepare(desc, step, steps)

    def on_batch_end(self, epoch, step, steps, loss):
        self.inner.on_batch_end(epoch, step, steps, loss)

    def on_epoch_end(self, epoch, metrics, model):
        tracking.log_metrics(metrics, step=epoch)
        tracking.log_image_step(cam_grid_image(model, self.data, "val", self.sample, self.device,
                                               f"epoch {epoch}"), "cam_grid_val", epoch)
        self.inner.on_epoch_end(epoch, metrics, model)


def cam_grid_image(model, data: Dataset, split_name: str, index: torch.Tensor, device, title: str):
    from focusml.figures import to_pil

    return to_pil(_cam_grid(model, data, split_name, index, device, title))


def _cam_grid(model, data, split_name, index, device, title):
    from focusml.data import Split
    from focusml.figures import cam_grid

    split = data.split(split_name)
    sub = Split(split.images[index], split.masks[index], split.labels[index])
    p = predict(model, sub, device)
    return cam_grid(sub.images, sub.masks, p.pos_cams, p.labels, p.preds, data.classes, title=title)


def run(config: RunConfig, *, callbacks: Callbacks | None = None, tracking_enabled: bool = True,
        parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> RunResult:
    """Train and evaluate one configuration; log everything to MLflow unless disabled."""
    config.validate()
    method_cls = methods.get(config.method)
    if tracking_enabled:
        tracking.setup()
    data = load_data(config)
    data.split(method_cls.train_split)  # refuse early (e.g. upper_bound without a clean split)
    method = method_cls(config.method_params)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    c, h, w = data.image_shape
    model = build_model(config.model, c, data.num_classes, max(h, w), config.pretrained).to(device)
    callbacks = callbacks or Callbacks()
    if not tracking_enabled:
        fitted = _train(model, data, method, config, device, callbacks, log=None)
        metrics, _, _ = test_metrics(model, data, device)
        metrics.update(_summary(fitted))
        return RunResult(metrics, None, fitted.history, model)

    run_tags = {"focusml.method": config.method, "focusml.family": method_cls.family,
                "focusml.dataset": config.dataset, **(tags or {})}
    with tracking.start_run(config.experiment, config.run_name or f"{config.method}-{config.dataset}-s{config.seed}",
                            parent_run_id=parent_run_id, tags=run_tags) as active:
        fingerprint = data.fingerprint
        tracking.log_params({**config.to_params(), "dataset_fingerprint": fingerprint})
        tracking.log_dataset(data, fingerprint)
        if method_cls.uses_masks:
            _log_mask_examples(data, method_cls.train_split, config)
        fitted = _train(model, data, method, config, device, _Tracker(data, device, callbacks), log=tracking.log_artifact)
        metrics, cm, _ = test_metrics(model, data, device)
        metrics.update(_summary(fitted))
        tracking.log_metrics(metrics)
        _log_final_artifacts(model, data, cm, fitted, device, config)
        return RunResult(metrics, active.info.run_id, fitted.history, model)


def _train(model, data, method, config, device, callbacks, log) -> FitResult:
    from focusml.methods import PrepareContext

    ctx = PrepareContext(data=data, config=config, model=model, cache_dir=cache_dir(), device=device,
                         log_artifact=log or (lambda path, artifact_path: None), progress=callbacks.on_prepare)
    method.prepare(ctx)
    return fit(model, data, method, config, device, callbacks)


def _log_mask_examples(data, split_name: str, config: RunConfig) -> None:
    """The augmented-mask example grid (figures/mask_augmentation.png) of a mask-based run."""
    from focusml.data.masks import examples
    from focusml.figures import mask_augment_grid

    split = data.split(split_name)
    index, augmented = examples(split.masks, config.augment, config.seed)
    if len(index):
        tracking.log_figure(mask_augment_grid(split.images[index], split.masks[index], augmented,
                                              f"mask augmentation: {config.augment}"), "figures/mask_augmentation.png")


def _summary(fitted: FitResult) -> dict[str, float]:
    times = [h["time/epoch_s"] for h in fitted.history]
    return {"time/epoch_s_mean": sum(times) / len(times), "best_epoch": float(fitted.best_epoch)}


def _log_final_artifacts(model, data, cm, fitted: FitResult, device, config: RunConfig) -> None:
    from focusml.figures import confusion_figure, sample_indices

    tracking.log_figure(confusion_figure(cm, data.classes), "figures/confusion_matrix.png")
    test = data.split("test")
    tracking.log_figure(_cam_grid(model, data, "test", sample_indices(test.labels, data.num_classes), device,
                                  f"{config.method} on {config.dataset} (test, shortcut broken)"),
                        "figures/cam_grid_test.png")
    tracking.log_state_dict(model.state_dict(), "checkpoints", "last.pt")
    if fitted.best_state is not None:
        tracking.log_state_dict(fitted.best_state, "checkpoints", f"best_val_epoch{fitted.best_epoch}.pt")
    if config.log_model:
        x, _, _ = test.batch(torch.arange(min(2, len(test))))
        tracking.log_model(model, x)
