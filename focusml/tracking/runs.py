"""Runs read back from MLflow: an experiment's runs as a table, a run's info, its model and its data.

`search_runs` gives an experiment's runs as pandas rows (what `focusml compare` summarises);
`load_run_model` loads the run's weights (`checkpoints/…pt`) with `torch.load(weights_only=True)`
and never unpickles anything (a logged MLflow model is a pickle: loading it can run code, and a
shared server's runs are not to be trusted); `load_run_data` rebuilds the run's dataset from its params.
"""

from __future__ import annotations

import pickle
import re
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.entities import ViewType
from torch import nn

from focusml import FocusmlError
from focusml.core.data import DataOptions, Dataset, load
from focusml.core.models import build_model, input_channels
from focusml.tracking.store import setup


def search_runs(experiment: str, order_by: list[str] | None = None) -> pd.DataFrame:
    """Every run of experiment `experiment` as pandas rows (`mlflow.search_runs`). Needs tracking set up.

    An unknown experiment raises FocusmlError naming the experiments the store has.
    """
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in mlflow.search_experiments())) or "none"
        raise FocusmlError(f"experiment '{experiment}' not found in {mlflow.get_tracking_uri()} (experiments: {names}). "
                           "Pass --experiment NAME, or set MLFLOW_TRACKING_URI to the store your runs went to.")
    return mlflow.search_runs(experiment_ids=[exp.experiment_id], order_by=order_by, output_format="pandas")


MIN_PREFIX = 6
_PREFIX = re.compile(r"[0-9a-f]{%d,31}" % MIN_PREFIX)


def resolve_run_id(run_id: str, what: str = "") -> str:
    """The full id of the one run whose id starts with `run_id` (≥ 6 hex characters), in any experiment.

    A full 32-character id, or anything that is not a hex prefix, comes back unchanged (the caller's
    lookup names what is wrong with it). Needs tracking set up. FocusmlError when no run or several
    runs start with the prefix (naming the tracking URI, or the candidates); `what` begins the message
    (e.g. "--init-from abc123").
    """
    text = str(run_id).strip()
    head = f"{what}: " if what else ""
    if re.fullmatch(r"[0-9a-fA-F]{1,%d}" % (MIN_PREFIX - 1), text):
        raise FocusmlError(f"{head}run id {text} is too short: give at least {MIN_PREFIX} characters of it "
                           "(`focusml train` prints the whole id).")
    if re.fullmatch(r"[0-9a-fA-F]{32}", text):
        return text.lower()
    if not _PREFIX.fullmatch(text.lower()):
        return text
    prefix = text.lower()
    found = mlflow.search_runs(search_all_experiments=True, filter_string=f"attributes.run_id LIKE '{prefix}%'",
                               run_view_type=ViewType.ALL, max_results=6, output_format="list")
    if not found:
        raise FocusmlError(f"{head}no run id starts with {prefix} in {mlflow.get_tracking_uri()}. Check the id "
                           "(`focusml train` prints it) and MLFLOW_TRACKING_URI.")
    if len(found) > 1:
        shown = ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in sorted(found, key=lambda r: r.info.run_id)[:5])
        more = " and more" if len(found) > 5 else ""
        raise FocusmlError(f"{head}run id {prefix} is ambiguous: {shown}{more} start with it. Give more characters.")
    return found[0].info.run_id


def run_info(run_id: str):
    """The MLflow run `run_id` (a unique prefix of ≥ 6 characters will do; tracking URI from the environment);
    FocusmlError if unknown."""
    setup()
    run_id = resolve_run_id(run_id)
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(
            f"run {run_id} not found in {mlflow.get_tracking_uri()} ({e.message.splitlines()[0]}). "
            "Check the run id (`focusml train` prints it) and MLFLOW_TRACKING_URI."
        ) from None


def _check_cam_model(model, source: str) -> nn.Module:
    if not all(hasattr(model, a) for a in ("features", "classifier", "forward_features")):
        raise FocusmlError(f"the model from {source} is not a CAM-capable focusml model (needs .features and .classifier).")
    return model.cpu().eval()


def load_run_model(run_id: str, image_size: int | None = None) -> nn.Module:
    """A run's trained model (a CamNet) on the CPU in eval mode, from its weights only.

    The evaluated weights (`checkpoints/selected_epochN.pt` when `--select` chose an earlier
    epoch, else `checkpoints/last.pt`) are read with `torch.load(weights_only=True)`, and the
    network is rebuilt from the run's `model` param (`image_size` matters only for vgg11, whose
    poolings depend on it). The logged MLflow model is never loaded: it is a pickle, and
    unpickling runs code. A run without such a checkpoint, or whose checkpoint holds anything
    but tensors, is refused with FocusmlError.
    """
    run = run_info(run_id)
    run_id, params = run.info.run_id, run.data.params
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    chosen = sorted(n for n in names if n.startswith("checkpoints/selected_epoch"))  # the evaluated weights
    path = chosen[0] if chosen else "checkpoints/last.pt"
    if path not in names:
        raise FocusmlError(
            f"run {run_id} has no checkpoints/last.pt, and focusml loads a run's model from its weights only (never "
            "by unpickling the logged MLflow model, which can run code). Use a run logged by `focusml train`.")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
        try:
            state = torch.load(local, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            raise FocusmlError(f"run {run_id}: {path} is not a plain state dict of tensors "
                               f"({str(e).splitlines()[0][:200]}); it is not loaded.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FocusmlError(f"run {run_id}: {path} is not a state dict of tensors; it is not loaded.")
    try:
        in_ch = input_channels(state)  # features.0 (small, vgg11), features.conv1 (ResNet), features.conv0
        n_cls = state["classifier.weight"].shape[0]
        size = image_size or _param(params, "image_size", int) or 28
        model = build_model(params.get("model") or "small", in_ch, n_cls, size)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, FocusmlError) as e:
        raise FocusmlError(f"run {run_id}: {path} does not fit model '{params.get('model')}': "
                           f"{str(e).splitlines()[0]}") from None
    return _check_cam_model(model, f"run {run_id}")


def _param(params: dict, key: str, cast, default=None):
    value = params.get(key)
    if value in (None, "", "None"):
        return default
    try:
        return cast(value)
    except ValueError:
        raise FocusmlError(f"run param {key}={value!r} is not a valid {cast.__name__}.") from None


def load_run_data(params: dict) -> Dataset:
    """Rebuild the dataset a run trained on from its logged params (dataset, data_seed, data_root, image_size)."""
    name = params.get("dataset")
    if not name:
        raise FocusmlError("the run has no `dataset` param: it was not logged by `focusml train`.")
    root = _param(params, "data_root", str)
    return load(name, DataOptions(seed=_param(params, "data_seed", int, 0), root=Path(root) if root else None,
                                  download=False, image_size=_param(params, "image_size", int),
                                  train_size=_param(params, "train_size", int)))
