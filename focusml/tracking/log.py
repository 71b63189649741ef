"""What a run logs to MLflow: params, metrics, figures, images, tables, files, the datasets and the model.

Every function acts on the active run (`store.start_run`), except `log_artifacts_to`, which
adds a folder to a finished run named by its id.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from importlib.metadata import requires as metadata_requires
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature

import focusml
from focusml.core.figures import close
from focusml.core.preprocess import ACCEPTED
from focusml.tracking.database import retry_unique
from focusml.tracking.pyfunc import frame


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def experiment_name(experiment_id: str) -> str:
    return mlflow.get_experiment(experiment_id).name


def log_params(params: dict[str, Any]) -> None:
    """Log params not already on the run (`mlflow run` logs its entry-point params first)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: ("" if v is None else v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def log_metrics(metrics: dict[str, float], step: int | None = None, datasets: dict[str, Any] | None = None) -> None:
    """Log every value, none dropped: NaN (e.g. WR without masks) is stored as NaN, ±inf as MLflow's SQL
    stores keep it; only None (no value at all) is left out. With `datasets` ({"val": ..., "test":
    ...}, logged as the run's inputs already), each metric is linked to the dataset of its split,
    and all of them go in one `log_batch` call (one store write per epoch, not one per split)."""
    values = {k: float(v) for k, v in metrics.items() if v is not None}
    if not datasets:
        mlflow.log_metrics(values, step=step)
        return
    run_id, now = active_run_id(), int(time.time() * 1000)
    batch = []
    for key, value in values.items():
        split = metric_split(key)
        ds = datasets.get(split) if split else None
        batch.append(Metric(key, value, now, step or 0, dataset_name=ds.name if ds else None,
                            dataset_digest=ds.digest if ds else None, run_id=run_id))
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_figure(fig, path: str) -> None:
    """Log a matplotlib figure as `path` and close it."""
    mlflow.log_figure(fig, path)
    close(fig)


def log_image_step(image, key: str, step: int) -> None:
    """One step of an image series. Synchronous: MLflow's default here is a background upload whose
    failure is only logged, and which the process waits for at exit (a frozen server held a run that
    had given up for minutes more); this way a lost server surfaces at this call, as `TrackingLost`."""
    mlflow.log_image(image, key=key, step=step, synchronous=True)


def log_dict(obj: dict, path: str) -> None:
    mlflow.log_dict(obj, path)


def log_state_dict(state: dict, artifact_path: str, filename: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        torch.save(state, path)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts_to(run_id: str, folder: str | Path, artifact_path: str) -> None:
    """Add a local folder to the artifacts of run `run_id` (active or not)."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), artifact_path=artifact_path)


#: the input context each split is logged with (MLflow's conventional names)
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def split_dataset(data, split_name: str, fingerprint: str):
    """An MLflow dataset for one split: features N×C×H×W (uint8), targets N; digest from the content.

    A streamed split passes a zero-stride placeholder of the same shape and dtype: MLflow records only
    the schema and the shapes, and nothing is decoded."""
    split = data.split(split_name)
    digest = hashlib.sha256(f"{fingerprint}:{split_name}".encode()).hexdigest()[:12]
    features = (np.broadcast_to(np.zeros((), np.uint8), tuple(split.images.shape)) if split.streamed
                else split.images.numpy())
    return mlflow.data.from_numpy(features=features, targets=split.labels.numpy(),
                                  name=f"{data.name}-{split_name}", digest=digest)


def log_datasets(data, fingerprint: str, train_split: str = "train", log: bool = True) -> dict[str, Any]:
    """Log the train (the split the method trains on), val and test splits as run inputs
    (`log` False: a resumed run, whose inputs are logged already).

    Only metadata travels (name, digest, schema, profile with the shapes); the arrays stay local.
    Returns {"train"|"val"|"test": mlflow dataset} so metrics can name the split they come from.
    """
    tags = {"classes": ",".join(data.classes)[:250]}
    out = {}
    for role, name in (("train", train_split), ("val", "val"), ("test", "test")):
        if name not in data.splits:
            continue
        ds = split_dataset(data, name, fingerprint)
        if log:
            # runs starting together on one experiment insert the same dataset: made again if it lost the race
            retry_unique(lambda: mlflow.log_input(ds, context=SPLIT_CONTEXTS[role], tags=tags))
        out[role] = ds
    return out


def metric_split(key: str) -> str | None:
    """Which logged split a metric is computed on: `acc/test`, `flip/test`, `acc/test_cf` → test;
    `selected/acc/val_cf` → val; other splits (`acc/test_clean`, ...) and run-level numbers → None."""
    tail = key.rsplit("/", 1)[-1]
    return {"test": "test", "test_cf": "test", "val": "val", "val_cf": "val"}.get(tail)


def log_final_metrics(metrics: dict[str, float], model_id: str | None, datasets: dict[str, Any],
                      step: int = 0) -> None:
    """The run's final metrics at `step` (the evaluated epoch), linked to the logged model (MLflow 3
    LoggedModel metrics) and to the dataset of the split each is computed on."""
    groups: dict[str | None, dict[str, float]] = {}
    for key, value in metrics.items():
        groups.setdefault(metric_split(key), {})[key] = value
    for split, group in groups.items():
        values = {k: float(v) for k, v in group.items() if v is not None}
        if values:
            mlflow.log_metrics(values, step=step, model_id=model_id, dataset=datasets.get(split) if split else None)


def log_table(frame: pd.DataFrame, path: str) -> None:
    """A table as an MLflow table artifact (JSON; the UI shows it in the run's artifacts)."""
    mlflow.log_table(frame, artifact_file=path)


def requirements() -> list[str]:
    """focusml's runtime dependencies pinned to the installed versions (all on PyPI); focusml's
    own code travels with the model (`code_paths`), so a bare `focusml` is never required."""
    pins = {}
    try:
        declared = metadata_requires("focusml") or []
    except PackageNotFoundError:  # run from a source tree that was never installed: pyproject.toml's list
        declared = ["torch", "torchvision", "mlflow", "optuna", "pandas", "scikit-learn", "click", "pyyaml",
                    "matplotlib", "pillow", "tqdm", "tabulate", "jinja2", "psutil"]
    for req in declared:
        if "extra ==" in req:
            continue
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip()
        try:
            pins[name] = version(name).split("+")[0]  # a local build tag (+cu130, +cpu) is no PyPI version
        except PackageNotFoundError:
            continue
    pins.setdefault("cloudpickle", version("cloudpickle"))
    return [f"{name}=={v}" for name, v in pins.items()]


def model_name(run_name: str | None) -> str:
    """A LoggedModel's name from its run's (`pas-decoy-digits-s0`): the UI's model lists then say which run
    each model is. MLflow refuses / : . % " ' in the name, each run of them becomes "-"; "model" if none is left."""
    return re.sub(r"[/:.%\"']+", "-", run_name or "").strip("-") or "model"


def run_models(run_id: str) -> list:
    """The LoggedModels run `run_id` logged (deleted ones left out), oldest first."""
    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}'",
                                         output_format="list")
    return sorted(models, key=lambda m: m.creation_timestamp)


def keep_one_model(run_id: str, name: str):
    """Before a resumed run logs its model: the model named `name` an earlier attempt of the run completed
    (READY; the newest), to be used again, or None. Every other model of that name the run has (a PENDING
    upload the kill cut short, a FAILED one, a surplus) is deleted, so the run ends with one LoggedModel."""
    models = [m for m in run_models(run_id) if m.name == name]
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    kept = ready[-1] if ready else None
    client = mlflow.MlflowClient()
    for m in models:
        if kept is None or m.model_id != kept.model_id:
            client.delete_logged_model(m.model_id)
    return kept


def run_model(run):
    """The LoggedModel of `run` (an MLflow Run): the first of its model outputs that still exists and is READY
    (a resumed run may list the deleted stale attempt `keep_one_model` replaced); None if it has none."""
    client = mlflow.MlflowClient()
    for output in (run.outputs.model_outputs if run.outputs else []):
        try:
            model = client.get_logged_model(output.model_id)
        except MlflowException:  # deleted
            continue
        if model.status == LoggedModelStatus.READY:
            return model
    return None


def log_model(model: torch.nn.Module, example: torch.Tensor, classes: list[str], arch: dict[str, Any],
              step: int = 0, tags: dict[str, str] | None = None, code_paths: list[str] | None = None,
              name: str = "model"):
    """Log the evaluated network as an MLflow 3 LoggedModel named `name` (`model_name`: its run's name;
    `runs:/RUN_ID/NAME` loads it): a pyfunc returning class probabilities and the predicted class name
    (`pyfunc.CamClassifier`, logged as code with the weights as an artifact). Returns the ModelInfo.

    Its requirements are focusml's dependencies, pinned; the focusml package travels with it
    (`code_paths`), so it loads and serves anywhere those install. MLflow gives the model the
    run's params and links it to the run's metrics logged at `step`: pass the evaluated epoch
    (counted from 1), so the model carries that epoch's validation metrics. `code_paths`: more source
    files to log beside focusml (the file defining your own network: `pyfunc.own_architecture`).
    """
    model = model.cpu().eval()
    x = example.cpu().numpy().astype(np.float32)
    with torch.no_grad():
        out = frame(torch.softmax(model(example.cpu()), dim=1).numpy(), classes)
    # The example is what a user has: uint8 images N×H×W×C. The signature describes the output only: the
    # input (paths, bytes or arrays of any size) is checked by the model itself, and `metadata` says what it takes.
    pixels = (example.cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: nothing pickled
            model_config={"classes": list(classes), "arch": dict(arch)},
            artifacts={"weights": str(weights)},
            signature=ModelSignature(outputs=infer_signature(x, out).outputs),
            input_example=pixels,
            metadata={"input": ACCEPTED, "input_shape": list(x.shape[1:])},
            pip_requirements=requirements(),
            code_paths=[str(Path(focusml.__file__).parent), *(code_paths or [])],
            step=step,
            tags=tags,
            model_type="cnn-classifier",
        )
    # Validating the input example loads the model, which makes it MLflow's "active model": every
    # metric logged afterwards in this process (system metrics, the next Optuna trial's epochs)
    # would be linked to it. Only the metrics `log_final_metrics` names go to the model.
    mlflow.clear_active_model()
    return info
