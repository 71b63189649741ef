"""The Python API: train, refine and evaluate your own network on your own data, tracked like `focusml train`.

Thin over the one code path the CLI takes: `fit` builds a `RunConfig` from the same options and calls
`focusml.tracking.run` (or the untracked core `focusml.core.run.run` with `track=False`), `refine` calls
`focusml.tracking.refine`; your network and data travel as `model=` / `data=` of those runs. So the
metrics, the checkpoint selection, the CAM images and the logged model are those of the CLI. docs/api.md.

- `model`: None (the `model` option, default `small`), a focusml model name, or any `torch.nn.Module` whose
  logits are global average pooling + one linear layer over a feature map (found automatically:
  `models.adapt`); name the layers otherwise (`features=`, `head=`).
- `data`: a focusml dataset name, a folder (docs/datasets.md), a focusml `Dataset`, or the train split with
  `val=` and `test=` (a `torch.utils.data.Dataset` yielding (image, mask or None, label), or tensors:
  `data.own.as_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from focusml import FocusmlError
from focusml.core.callbacks import Callbacks
from focusml.core.config import RunConfig
from focusml.core.data import DATASETS, Dataset
from focusml.core.data.own import as_dataset
from focusml.core.evaluate import test_metrics
from focusml.core.models import Adapted, adapt
from focusml.core.run import RunResult, load_data
from focusml.core.run import run as run_untracked
from focusml.core.train import resolve_device

__all__ = ["as_dataset", "adapt", "discover", "evaluate", "fit", "refine"]


def _data(data, val, test, classes, flat: dict) -> Dataset | None:
    """Your data as the run takes it: a name or folder goes into the options (logged and reloadable as the
    CLI's), anything else becomes a `Dataset` passed to the run."""
    if data is None:
        return None
    if isinstance(data, str) and data in DATASETS:
        flat["dataset"] = data
        return None
    if isinstance(data, (str, Path)):
        if not Path(data).is_dir():
            raise FocusmlError(f"data {str(data)!r} is neither a focusml dataset ({', '.join(sorted(DATASETS))}) nor "
                               "a folder; give one of those, a Dataset, or the splits (data=train, val=..., test=...).")
        flat.update(dataset="folder", data_root=str(Path(data).resolve()))
        return None
    own = as_dataset(data, val, test, classes=classes, name=str(flat.get("dataset") or "own"))
    flat["dataset"] = own.name
    return own


def _model(model, features, head, model_code, flat: dict, own: Dataset | None) -> torch.nn.Module | None:
    """Your network under the CamNet contract (or None: a focusml model by name, in the options)."""
    if model is None:
        return None
    if isinstance(model, str):
        flat["model"] = model
        return None
    if not isinstance(model, torch.nn.Module):
        raise FocusmlError(f"model is a {type(model).__name__}; give a torch.nn.Module or a focusml model name.")
    shape = own.image_shape if own is not None else load_data(RunConfig.from_flat(flat)).image_shape
    adapted = adapt(model, shape, features, head)
    if isinstance(adapted, Adapted):
        flat["model"] = type(adapted.network).__name__
        if model_code is not None:
            builder, kwargs = model_code if isinstance(model_code, tuple) else (model_code, {})
            adapted.code = (builder, dict(kwargs))
    return adapted


def fit(model=None, data=None, method: str = "baseline", *, val=None, test=None, classes=None,
        features: str | None = None, head: str | None = None, model_code=None, callbacks: Callbacks | list[Callbacks] | None = None,
        track: bool = True, **options: Any) -> RunResult:
    """Train (and evaluate) `model` on `data` with `method`: a baseline, an upper bound or a refinement method.

    `options`: any `focusml train` option by its flat name (`epochs`, `lr`, `lam`, `select`, `experiment`,
    ...). `model_code`: the class or function that builds your network, with its keyword arguments
    (`(torchvision.models.resnet18, {"num_classes": 2})`), so the logged MLflow model can rebuild it (default:
    its class without arguments). `track=False` runs without MLflow. Returns the run's `RunResult`:
    `metrics`, `run_id`, `model` (the evaluated network), `warnings`.
    """
    flat = {**options, "method": method}
    own = _data(data, val, test, classes, flat)
    net = _model(model, features, head, model_code, flat, own)
    config = RunConfig.from_flat(flat)
    if not track:
        return run_untracked(config, callbacks, data=own, model=net)
    from focusml import tracking  # MLflow loads only for a tracked run

    return tracking.run(config, callbacks=callbacks, data=own, model=net)


def refine(source, data=None, *, model=None, stages: str = "auto", method: str = "random_crop", val=None, test=None,
           classes=None, features: str | None = None, head: str | None = None, model_code=None,
           callbacks: Callbacks | list[Callbacks] | None = None, **options: Any):
    """Refine a trained model (`focusml refine`): its head refit on shortcut-swapped images, then the whole network
    fine-tuned with `method`, kept if validation says so (`stages`: auto, head or full).

    `source`: the `RunResult` of `fit` (its network is reused as the architecture), a run id, runs:/ or
    models:/ URI, or a local state-dict file (then give `model`). `data`: as in `fit` (default: the source
    run's dataset by name). Returns a `focusml.tracking.Refinement`: `stages`, `chosen`, `result`.
    """
    from focusml import tracking

    if isinstance(source, RunResult):
        if source.run_id is None:
            raise FocusmlError("refine starts from a tracked run, and this result has no run id (fit(track=False)); "
                               "train with track=True.")
        if model is None and isinstance(source.model, Adapted):
            model = source.model
        source = source.run_id
    flat = dict(options)
    own = _data(data, val, test, classes, flat)
    net = _model(model, features, head, model_code, flat, own) if isinstance(model, torch.nn.Module) else None
    if isinstance(model, str):
        flat["model"] = model
    return tracking.refine(str(source), flat, stages=stages, method=method, data=own, model=net,
                           callbacks=(lambda stage, config: callbacks) if callbacks is not None else None)


def discover(source, data=None, *, model=None, val=None, test=None, classes=None, features: str | None = None,
             head: str | None = None, splits: tuple[str, ...] = ("train", "val"), seed: int = 0, out=None,
             experiment: str | None = None):
    """Shortcut proposals from a trained model (`focusml discover`), logged as a run, written as a proposals file.

    `source`, `data`, `model`: as in `refine`. Returns a `focusml.tracking.discover.Discovery` (`proposals`,
    `path`, `run_id`); answer the file in `focusml masks serve`, or accept proposals with
    `focusml.core.discover.masks_from`.
    """
    from focusml.tracking.discover import discover as run_discover

    if isinstance(source, RunResult):
        if model is None and isinstance(source.model, Adapted):
            model = source.model
        source = source.run_id
    flat: dict = {}
    own = _data(data, val, test, classes, flat)
    if own is None:  # a name or a folder, else the run's own dataset
        from focusml.tracking.runs import load_run_data, run_info

        own = load_data(RunConfig.from_flat(flat)) if flat else load_run_data(dict(run_info(str(source)).data.params))
    net = _model(model, features, head, None, flat, own) if isinstance(model, torch.nn.Module) else None
    return run_discover(str(source), splits=tuple(splits), seed=seed, out=out, experiment=experiment, data=own,
                        model=net)


def evaluate(model, data, *, val=None, test=None, classes=None, features: str | None = None,
             head: str | None = None, device: str = "auto") -> dict[str, float]:
    """The test metrics of `model` on `data` (accuracy, counterfactual accuracy and flips where there are masks,
    WR, evidence in the mask, ...), as a run reports them. `model`: a network, a `RunResult`, or a logged
    model (run id, runs:/ID/model, models:/NAME@ALIAS). `data`: as in `fit`, or one split (used as test)."""
    if isinstance(model, RunResult):
        model = model.model
    if isinstance(model, str):
        from focusml.tracking.predict import load_classifier

        model = load_classifier(model).unwrap_python_model().network
    if isinstance(data, str) and data in DATASETS:
        data = load_data(RunConfig(dataset=data))
    elif not isinstance(data, (Dataset, str, Path)) and val is None and test is None:
        data = as_dataset(data, data, data, classes=classes)  # one split: the test split (val only for shapes)
    else:
        data = as_dataset(data, val, test, classes=classes)
    net = adapt(model, data.image_shape, features, head)
    device_ = resolve_device(device)
    metrics, _, _ = test_metrics(net.to(device_), data, device_)
    return metrics
