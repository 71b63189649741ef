"""Predictions of a logged model on image files: what `focusml predict` prints.

The model is loaded as the MLflow pyfunc it was logged as (`pyfunc.CamClassifier`), so these are
exactly the predictions `mlflow.pyfunc.load_model(URI).predict(paths)` and a served model give.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow

from focusml import FocusmlError
from focusml.tracking.database import redact
from focusml.tracking.log import run_model
from focusml.tracking.pyfunc import PREDICTION, CamClassifier
from focusml.tracking.store import setup

CHUNK = 256  # images decoded and predicted at a time


def model_uri(source: str) -> str:
    """A bare run id, or `runs:/ID/model`, means the run's logged model (`models:/m-…`: it is named after its run,
    and was named `model` before); anything else is an MLflow model URI or folder. Needs tracking set up."""
    match = re.fullmatch(r"(runs:/)?([0-9a-f]{32})(/model)?/?", source)
    if not match or bool(match.group(1)) != bool(match.group(3)):
        return source
    run = mlflow.MlflowClient().get_run(match.group(2))
    logged = run_model(run)
    return f"models:/{logged.model_id}" if logged is not None else f"runs:/{match.group(2)}/model"


def load_classifier(source: str) -> mlflow.pyfunc.PyFuncModel:
    """The focusml model at `source` (run id, runs:/ID/model or runs:/ID/RUN_NAME, models:/NAME@ALIAS, models:/m-ID,
    a model folder);
    FocusmlError in one line when it cannot be loaded or is not a focusml classifier."""
    uri = setup()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the table is the output
    try:
        model = mlflow.pyfunc.load_model(model_uri(source))
    except (mlflow.exceptions.MlflowException, OSError, ValueError) as e:
        reason = (getattr(e, "message", None) or str(e) or type(e).__name__).strip().splitlines()[0]
        raise FocusmlError(f"cannot load the model {source} ({reason}); give a run id, runs:/RUN_ID/model, "
                           f"models:/NAME@ALIAS or a model folder, from the store {redact(uri)} "
                           "(MLFLOW_TRACKING_URI)") from None
    try:
        ours = isinstance(model.unwrap_python_model(), CamClassifier)
    except mlflow.exceptions.MlflowException:
        ours = False
    if not ours:
        raise FocusmlError(f"{source} is not a model logged by focusml (no CamClassifier inside); give the model "
                           "of a focusml run")
    return model


def predict_files(source: str, files: list[str]) -> list[dict]:
    """One row per file: `file`, `class` (the predicted class's name), `probability` (its softmax probability)."""
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FocusmlError(f"no image file {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                             else "") + ": give paths of existing PNG/JPEG files")
    model = load_classifier(source)
    rows = []
    for start in range(0, len(files), CHUNK):
        part = [os.fspath(f) for f in files[start:start + CHUNK]]
        out = model.predict(part)
        for f, (_, r) in zip(part, out.iterrows()):
            rows.append({"file": f, "class": r[PREDICTION], "probability": float(r[r[PREDICTION]])})
    return rows
