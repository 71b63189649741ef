"""The logged MLflow model: a pyfunc that turns images into class probabilities and the class name.

`CamClassifier` is what `mlflow.pyfunc.load_model("models:/NAME@champion").predict(x)` runs. `x`
is what a user has (`focusml.core.preprocess.ACCEPTED`): image file paths, PNG/JPEG bytes, uint8
arrays of any size and channel count (H×W, H×W×C, N×H×W×C), a list or a one-column DataFrame of
those, or the network's own float input N×C×H×W in [0, 1]. The model applies the training
preprocessing itself (channels, resize, scale to [0, 1]) and refuses anything else with one line.
The result is a pandas DataFrame with one column per class (softmax probabilities, named after
the classes) and `prediction` (the most probable class's name), one row per image.

The network is kept as a plain state dict (`weights.pt`, loaded with `torch.load(weights_only=True)`)
and rebuilt from its architecture, so no pickled torch code runs on load;
`unwrap_python_model().network` gives the `torch.nn.Module` (with `forward_features`, for CAMs).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from focusml import FocusmlError
from focusml.core.preprocess import to_batch

PREDICTION = "prediction"

# MLflow suggests type hints on `predict` (a warning at class creation, shown even under filters);
# the inputs are checked by `focusml.core.preprocess` instead (no MLflow schema can say "paths, bytes or
# arrays of any size"), so the suggestion is not shown.
_show, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None


class CamClassifier(mlflow.pyfunc.PythonModel):
    """Logged as code (`pyfunc_model.py`, MLflow's models-from-code: nothing is pickled); the class
    names and the architecture come from the model's `model_config`, the weights from its artifacts."""

    def __init__(self, classes: list[str] | None = None, arch: dict[str, Any] | None = None):
        self.classes = list(classes or [])
        self.arch = dict(arch or {})  # model, in_channels, num_classes, image_size, input_shape [C, H, W]
        self.network = None

    def load_context(self, context):
        from focusml.core.models import build_model

        config = context.model_config or {}
        self.classes = list(config.get("classes", self.classes))
        self.arch = dict(config.get("arch", self.arch))
        a = self.arch
        net = rebuild_own(a) if "own" in a else build_model(a["model"], a["in_channels"], a["num_classes"],
                                                              a["image_size"])
        net.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.network = net.eval()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C×H×W of the training images (models logged before `input_shape` was kept: square `image_size`)."""
        a = self.arch
        return tuple(a.get("input_shape") or (a["in_channels"], a["image_size"], a["image_size"]))

    def probabilities(self, x) -> np.ndarray:
        """Softmax over the classes, one row per image of `x` (see the module docstring for what `x` may be)."""
        batch = to_batch(_cells(x), self.input_shape)
        with torch.no_grad():
            logits = self.network(batch)
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, context, model_input, params=None):
        return frame(self.probabilities(model_input), self.classes)


warnings.showwarning = _show


def own_architecture(model: torch.nn.Module) -> tuple[dict[str, Any] | None, list[str], str | None]:
    """How the logged model rebuilds your own network (`models.Adapted`): (arch entries, source files to log
    beside focusml, None), or (None, [], why not). A focusml model: ({}, [], None).

    The network is rebuilt at load by calling its builder (`model.code`: a class or function and its keyword
    arguments; default: the network's class without arguments) from its module, and the weights loaded into
    it: nothing is pickled. The builder's file travels with the model unless it comes from an installed
    package (torchvision). Checked here, so a model that would not load is never logged."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return {}, [], None
    builder, kwargs = model.code or (type(model.network), {})
    name = getattr(builder, "__qualname__", "")
    hint = "pass model_code=(class or function, its keyword arguments) that build the network"
    if "<locals>" in name or not name:
        return None, [], f"its builder {name or builder!r} is not importable (defined inside a function): {hint}"
    try:
        json.dumps(kwargs)
        fresh = builder(**kwargs).state_dict()
    except Exception as e:  # a builder that fails or needs arguments: said, not logged
        return None, [], f"{name}(**{kwargs!r}) failed ({type(e).__name__}: {str(e)[:200]}): {hint}"
    own = model.network.state_dict()
    if fresh.keys() != own.keys() or any(fresh[k].shape != own[k].shape for k in own):
        return None, [], f"{name}(**{kwargs!r}) builds a network with other tensors than the trained one: {hint}"
    try:
        path = inspect.getsourcefile(builder) or ""
    except TypeError:  # no source file (defined in an interactive session or exec'd text)
        path = ""
    if not path and builder.__module__.split(".")[0] != "focusml":
        return None, [], f"{name} has no source file to log with the model (define it in a .py file): {hint}"
    module = builder.__module__ if builder.__module__ != "__main__" else Path(path).stem
    installed = any(Path(path).is_relative_to(d) for d in
                    {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} if path)
    files = [] if installed or module.split(".")[0] == "focusml" else [path]
    return {"own": dict(spec), "build": {"module": module, "name": name, "kwargs": dict(kwargs)}}, files, None


def rebuild_own(arch: dict[str, Any]) -> torch.nn.Module:
    """Your own network from a logged model's `arch` (`own_architecture`), wrapped as it was trained."""
    from focusml.core.models import Adapted

    build = arch["build"]
    builder = functools.reduce(getattr, build["name"].split("."), importlib.import_module(build["module"]))
    return Adapted(builder(**build["kwargs"]), **arch["own"])


def _cells(x):
    """A one-column DataFrame (or Series) as its cells: paths, bytes, or image arrays (float ones stacked)."""
    if isinstance(x, pd.Series):
        x = x.to_frame()
    if not isinstance(x, pd.DataFrame):
        return x
    if x.shape[1] != 1:
        raise FocusmlError(f"the model takes one column of images (paths, bytes or arrays); got a DataFrame with "
                           f"{x.shape[1]} columns {[str(c) for c in x.columns[:5]]}")
    cells = x.iloc[:, 0].tolist()
    if cells and all(isinstance(c, np.ndarray) and c.dtype.kind == "f" for c in cells):
        return np.stack(cells)
    return cells


def frame(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One column per class (probabilities) and `prediction` (the argmax's class name)."""
    out = pd.DataFrame(probs.astype(np.float64), columns=list(classes))
    out[PREDICTION] = [classes[i] for i in probs.argmax(1)]
    return out
