"""Predictions on real files: the logged MLflow model takes paths, bytes and arrays of any size; `focusml predict`."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from focusml import FocusmlError
from focusml.core.data import DataOptions, load
from focusml.core.preprocess import ACCEPTED
from focusml.tracking.predict import model_uri


@pytest.fixture(scope="module")
def trained(mlflow_server, make_folder, tiny_config, tmp_path_factory):
    """(run id, the test images' paths, their float batch as training loads them) of a 1-epoch run on a folder."""
    from focusml.tracking import run

    root = make_folder(tmp_path_factory.mktemp("predict") / "data", {"train": 8, "val": 3, "test": 3},
                       {"train": 1, "val": 1, "test": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("FOCUSML_CACHE", str(tmp_path_factory.mktemp("cache")))
        mlflow.set_tracking_uri(mlflow_server)
        rid = run(tiny_config(dataset="folder", data_root=str(root), batch_size=16, log_model=True,
                              experiment="predict")).run_id
        test = load("folder", DataOptions(root=root)).split("test")
        paths = sorted(str(p) for p in (root / "images" / "test").rglob("*.png"))  # the split's order: class, name
        yield rid, paths, test.batch(torch.arange(len(test)))[0]


def _load(rid):
    return mlflow.pyfunc.load_model(model_uri(rid))  # the run's logged model, named after the run


def test_the_logged_model_predicts_from_files_bytes_and_arrays_as_training_saw_them(trained):
    rid, paths, x = trained
    model = _load(rid)
    with torch.no_grad():
        want = torch.softmax(model.unwrap_python_model().network(x), 1).numpy()
    grey = np.stack([np.asarray(Image.open(p)) for p in paths])  # N×H×W uint8
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # N×H×W×3: converted to the model's greyscale
    for given in (paths, [open(p, "rb").read() for p in paths], rgb, list(grey), pd.DataFrame({"image": paths}),
                  x.numpy()):
        out = model.predict(given)
        assert list(out.columns) == ["cat", "dog", "prediction"]
        np.testing.assert_allclose(out[["cat", "dog"]].to_numpy(), want, atol=1e-6)
        assert out["prediction"].tolist() == [["cat", "dog"][i] for i in want.argmax(1)]
    # another size and channel count: resized and converted by the model
    bigger = np.stack([np.asarray(Image.fromarray(g).convert("RGBA").resize((30, 30))) for g in grey])
    out = model.predict(bigger)
    assert len(out) == len(paths) and np.allclose(out[["cat", "dog"]].sum(axis=1), 1.0)


def test_the_model_says_what_it_takes_and_refuses_anything_else_in_one_line(trained):
    rid, _, x = trained
    model = _load(rid)
    assert model.metadata.metadata == {"input": ACCEPTED, "input_shape": [1, 12, 12]}
    assert model.metadata.get_input_schema() is None and model.metadata.get_output_schema() is not None
    example = np.asarray(model.input_example)
    assert example.shape == (2, 12, 12, 1) and 0 <= example.min() and example.max() <= 255  # images as stored
    assert len(model.predict(example)) == 2
    for bad, reason in ((x.numpy() * 255, "floats must be in [0, 1]"),
                        (np.zeros((12, 12, 5), np.uint8), "1–4 channels"),
                        (pd.DataFrame({"a": [1], "b": [2]}), "one column of images")):
        with pytest.raises(FocusmlError) as err:
            model.predict(bad)
        msg = str(err.value)
        assert reason in msg and "\n" not in msg and "[[" not in msg, msg


def _predict_cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "focusml", "predict", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_focusml_predict_prints_one_row_per_file(trained, mlflow_server, cli_env, tmp_path):
    rid, paths, _ = trained
    env = dict(cli_env, MLFLOW_TRACKING_URI=mlflow_server)
    res = _predict_cli([rid, *paths[:2], paths[-1]], env, tmp_path)
    assert res.returncode == 0, res.stderr
    header, rule, *rows = res.stdout.strip().splitlines()
    assert header.split() == ["file", "class", "probability"] and set(rule) == {"-", " "}
    assert [r.split()[0] for r in rows] == [*paths[:2], paths[-1]]
    for r in rows:
        _, cls, p = r.split()
        assert cls in ("cat", "dog") and 0.5 <= float(p) <= 1

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    for args, reason in (([rid, str(broken)], f"file {broken} is not a readable image"),
                         (["0123456789abcdef0123456789abcdef", paths[0]], "cannot load the model 0123456789abcdef"),
                         (["models:/no-such-model@champion", paths[0]], "cannot load the model models:/no-such-model"),
                         ([rid, str(tmp_path / "missing.png")], "no image file")):
        res = _predict_cli(args, env, tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.strip().count("\n") == 0 and reason in res.stderr, res.stderr
