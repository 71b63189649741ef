"""The logged MLflow model: a pyfunc that turns an image batch into class probabilities and the class name.

`CamClassifier` is what `mlflow.pyfunc.load_model("models:/NAME@champion").predict(x)` runs:
`x` is a float32 array N×C×H×W with values in [0, 1] (as focusml feeds its networks), the
result a pandas DataFrame with one column per class (softmax probabilities, named after the
classes) and `prediction` (the most probable class's name). The network itself is kept as a
plain state dict (`weights.pt`, loaded with `torch.load(weights_only=True)`) and rebuilt from
its architecture, so no pickled torch code runs on load; `unwrap_python_model().network` gives
the `torch.nn.Module` (with `forward_features`, for CAMs).
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

PREDICTION = "prediction"

# MLflow suggests type hints on `predict` (a warning at class creation, shown even under filters);
# the model has an explicit tensor signature instead, so the suggestion is not shown.
_show, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None


class CamClassifier(mlflow.pyfunc.PythonModel):
    """Logged as code (`pyfunc_model.py`, MLflow's models-from-code: nothing is pickled); the class
    names and the architecture come from the model's `model_config`, the weights from its artifacts."""

    def __init__(self, classes: list[str] | None = None, arch: dict[str, Any] | None = None):
        self.classes = list(classes or [])
        self.arch = dict(arch or {})  # model, in_channels, num_classes, image_size
        self.network = None

    def load_context(self, context):
        from focusml.models import build_model

        config = context.model_config or {}
        self.classes = list(config.get("classes", self.classes))
        self.arch = dict(config.get("arch", self.arch))
        a = self.arch
        net = build_model(a["model"], a["in_channels"], a["num_classes"], a["image_size"])
        net.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.network = net.eval()

    def probabilities(self, x) -> np.ndarray:
        """Softmax over the classes for an N×C×H×W batch in [0, 1] (numpy or DataFrame of one tensor column)."""
        if isinstance(x, pd.DataFrame):
            x = np.stack(x.iloc[:, 0].to_numpy())
        arr = np.asarray(x)
        if arr.dtype == np.uint8:  # images as stored on disk: bring them to [0, 1]
            arr = arr.astype(np.float32) / 255.0
        with torch.no_grad():
            logits = self.network(torch.as_tensor(arr, dtype=torch.float32))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, context, model_input, params=None):
        return frame(self.probabilities(model_input), self.classes)


warnings.showwarning = _show


def frame(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One column per class (probabilities) and `prediction` (the argmax's class name)."""
    out = pd.DataFrame(probs.astype(np.float64), columns=list(classes))
    out[PREDICTION] = [classes[i] for i in probs.argmax(1)]
    return out
