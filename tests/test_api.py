"""The Python API (docs/api.md): your own network and your own data through `focusml.fit`, `refine`, `score`.

Networks: torchvision's (random init, built offline), a small one defined here (not from focusml.core.models),
a timm-style one (`forward_features` + `get_classifier`; timm itself is not installed). Data: a
`torch.utils.data.Dataset` yielding (image, mask or None, label). The tracked tests use a real MLflow server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import focusml
from focusml import FocusmlError
from focusml.core.callbacks import Callbacks
from focusml.core.models import Adapted, adapt

SIZE = 32


class Squares(torch.utils.data.Dataset):
    """RGB 32×32: the class is where a bright bar is (left or right); a decoy in the top-left corner (red for
    class 0, green for class 1) follows the label when `decoy`, else is random; the mask marks the corner
    (every other image unannotated: mask None)."""

    def __init__(self, n: int, decoy: bool = True, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            y = i % 2
            image = torch.rand(3, SIZE, SIZE, generator=gen) * 0.2
            left = 4 if y == 0 else SIZE // 2 + 2
            image[:, 10:22, left:left + 8] = 1.0
            colour = y if decoy else int(torch.randint(2, (1,), generator=gen))
            image[colour, :6, :6] = 1.0
            mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
            mask[:6, :6] = 1
            self.items.append((image, mask if i % 4 < 2 else None, y))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class TinyNet(nn.Module):
    """Two conv layers, global average pooling, one linear layer: CAM is exact."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        return self.out(self.body(x).mean((2, 3)))


class TimmStyle(nn.Module):
    """What timm models offer: forward_features (the feature map), get_classifier, forward_head."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, classes)

    def forward_features(self, x):
        return self.stem(x)

    def get_classifier(self):
        return self.head

    def forward_head(self, a):
        return self.head(a.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class MaxPooled(nn.Module):
    """Global max pooling: CAM is not exact, so the layers must be named."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.body(x).amax((2, 3)))


@pytest.fixture(scope="module")
def splits():
    return Squares(32, seed=0), Squares(16, seed=1), Squares(16, decoy=False, seed=2)


# ---- finding the CAM layers -----------------------------------------------------------------------

@pytest.mark.parametrize("arch, layer, head", [("resnet18", "layer4", "fc"), ("densenet121", "features", "classifier"),
                                               ("efficientnet_b0", "features", "classifier.1"),
                                               ("mobilenet_v2", "features", "classifier.1"),
                                               ("regnet_x_400mf", "trunk_output", "fc")])
def test_torchvision_networks_are_found_exactly(arch, layer, head):
    net = getattr(torchvision.models, arch)(weights=None, num_classes=3).eval()
    model = adapt(net, (3, 64, 64))
    assert isinstance(model, Adapted) and model.spec == {"feature_layer": layer, "head": head, "relu": False,
                                                         "exact": True}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, logits = model.forward_features(x)
        assert torch.allclose(logits, net(x), atol=1e-5)  # the network's own forward, unchanged
        assert torch.allclose(model.classifier(a.mean((2, 3))), logits, atol=1e-4)  # CAM is exact
    assert next(iter(model.state_dict())).startswith("network.")  # the user's tensors under network.*


def test_timm_protocol_and_own_layers():
    timm_like = adapt(TimmStyle(), (3, SIZE, SIZE))
    assert timm_like.spec["feature_layer"] is None and timm_like.classifier is timm_like.network.head
    assert adapt(TinyNet(), (3, SIZE, SIZE)).spec == {"feature_layer": "body", "head": "out", "relu": False,
                                                       "exact": True}
    with pytest.raises(FocusmlError, match="features=..., head="):
        adapt(MaxPooled(), (3, SIZE, SIZE))
    named = adapt(MaxPooled(), (3, SIZE, SIZE), features="body", head="out")
    assert named.exact is False
    with pytest.raises(FocusmlError, match="no such module"):
        adapt(TinyNet(), (3, SIZE, SIZE), features="nope")


def test_named_layers_run_the_methods_that_need_no_exact_cam(splits):
    train, val, test = splits
    with pytest.raises(FocusmlError, match="needs an exact CAM"):
        focusml.fit(MaxPooled(), train, "pas", val=val, test=test, features="body", head="out", epochs=1, track=False)
    for method in ("random_crop", "counterexamples", "rrr", "selective_dropout"):
        result = focusml.fit(MaxPooled(), train, method, val=val, test=test, features="body", head="out", epochs=1,
                             track=False, device="cpu")
        assert 0 <= result.metrics["acc/test"] <= 1, method
    with pytest.raises(FocusmlError, match="cdep decomposes"):
        focusml.fit(TinyNet(), train, "cdep", val=val, test=test, epochs=1, track=False)


def test_a_timm_style_network_trains_with_cam_methods(splits):
    train, val, test = splits
    for method in ("pas", "selective_dropout"):  # exact CAM; `last` is the feature map the head pools
        result = focusml.fit(TimmStyle(), train, method, val=val, test=test, epochs=1, track=False, device="cpu")
        assert isinstance(result.model, Adapted) and 0 <= result.metrics["acc/test"] <= 1, method


def test_import_focusml_stays_light():
    code = "import sys, focusml; print([m for m in ('torch', 'mlflow') if m in sys.modules], callable(focusml.fit))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[] True", out.stderr


def test_own_data_conversion_and_refusals(splits):
    train, val, test = splits
    data = focusml.as_dataset(train, val, test, classes=["left", "right"])
    s = data.split("train")
    assert s.images.dtype == torch.uint8 and s.images.shape == (32, 3, SIZE, SIZE) and s.masks.shape == (32, SIZE, SIZE)
    assert int(s.annotated.sum()) == 16 and s.labels.dtype == torch.int64
    tensors = focusml.as_dataset((s.images, s.labels), (s.images, s.masks, s.labels), (s.images.float() / 255, s.labels))
    assert torch.equal(tensors.split("test").images, s.images) and not tensors.split("train").annotated.any()
    pil = [(Image.fromarray(s.images[i].permute(1, 2, 0).numpy()), None, int(s.labels[i])) for i in range(4)]
    assert torch.equal(focusml.as_dataset(pil, pil, pil).split("train").images, s.images[:4])  # PIL images too
    with pytest.raises(FocusmlError, match="differ in size"):
        focusml.as_dataset([(torch.rand(3, 8, 8), None, 0), (torch.rand(3, 9, 9), None, 1)], pil, pil)
    with pytest.raises(FocusmlError, match="val and test"):
        focusml.as_dataset(train)
    with pytest.raises(FocusmlError, match=r"\[0, 1\]"):
        focusml.as_dataset((s.images.float(), s.labels), val, test)


def test_untracked_fit_keeps_the_given_module_and_scores(splits):
    train, val, test = splits
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = focusml.fit(net, train, "pas", val=val, test=test, epochs=1, track=False, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # trained on a copy
    metrics = focusml.score(result, test)
    assert metrics["acc/test"] == pytest.approx(result.metrics["acc/test"])
    assert {"acc/test_cf", "flip/test", "evidence_in_mask/test"} <= metrics.keys()


# ---- tracked: train, refine, load the logged model, predict PNG files ---------------------------------

class Seen(Callbacks):
    def __init__(self):
        self.checkpoints, self.epochs = [], []

    def on_checkpoint(self, epoch, state):
        self.checkpoints.append(epoch)

    def on_epoch_end(self, epoch, metrics, model):
        self.epochs.append(epoch)


def write_pngs(dataset, folder: Path, n: int = 4) -> list[str]:
    folder.mkdir()
    paths = []
    for i in range(n):
        image = (dataset[i][0] * 255).round().byte().permute(1, 2, 0).numpy()
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("build", [lambda: torchvision.models.resnet18(weights=None, num_classes=2), TinyNet],
                         ids=["resnet18", "own"])
def test_train_refine_and_load_own_network(build, splits, tracking_env, tmp_path):
    train, val, test = splits
    seen = Seen()
    code = (torchvision.models.resnet18, {"num_classes": 2}) if build is not TinyNet else None
    base = focusml.fit(build(), train, "baseline", val=val, test=test, classes=["left", "right"], epochs=1,
                       device="cpu", experiment="api", model_code=code, callbacks=seen)
    assert seen.checkpoints == [0] and seen.epochs == [0]  # every hook reaches the caller's callbacks
    assert not [w for w in base.warnings if "MLflow model" in w]
    client = mlflow.MlflowClient()
    run = client.get_run(base.run_id)
    assert run.info.status == "FINISHED" and {"acc/test", "acc/test_cf", "wr/test"} <= run.data.metrics.keys()
    assert run.data.params["dataset"] == "own" and run.data.params["model"] == type(base.model.network).__name__
    assert "figures/cam_grid_test.png" in {f.path for f in client.list_artifacts(base.run_id, "figures")}
    assert any("cam_grid_val" in f.path for f in client.list_artifacts(base.run_id, "images"))

    found = focusml.discover(base, train, val=val, test=test, classes=["left", "right"], out=tmp_path / "p.json")
    assert found.path.is_file() and json.loads(found.path.read_text())["classes"] == ["left", "right"]
    assert client.get_run(found.run_id).data.tags["focusml.discover_of"] == base.run_id
    assert all(len(q.members) == len(q.cells) for q in found.proposals)

    refined = focusml.refine(base, train, val=val, test=test, classes=["left", "right"], epochs=1, device="cpu")
    assert set(refined.stages) == {"head", "full"} and refined.chosen in ("head", "full")
    for stage in refined.stages.values():
        assert client.get_run(stage.run_id).info.status == "FINISHED"
    kept = refined.result

    loaded = mlflow.pyfunc.load_model(kept.model_uri)
    pngs = write_pngs(test, tmp_path / "pngs")
    out = loaded.predict(pngs)
    assert list(out.columns) == ["left", "right", "prediction"] and len(out) == 4
    with torch.no_grad():  # the same numbers as the trained network on the same pixels
        x = torch.stack([(test[i][0] * 255).round() / 255 for i in range(4)])
        probs = torch.softmax(kept.model.cpu().eval()(x), 1).numpy()
    assert np.allclose(out[["left", "right"]].to_numpy(), probs, atol=1e-4)
    if build is TinyNet:  # in a fresh process, the class comes from the file logged with the model
        code = (f"import mlflow; m = mlflow.pyfunc.load_model('{kept.model_uri}'); "
                f"print(m.predict({pngs!r})['prediction'].tolist())")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == repr(out["prediction"].tolist())


@pytest.mark.slow
def test_an_unbuildable_network_is_not_logged_as_a_model_and_says_why(splits, tracking_env):
    train, val, test = splits
    result = focusml.fit(torchvision.models.resnet18(weights=None, num_classes=2), train, "baseline", val=val,
                         test=test, epochs=1, device="cpu", experiment="api")
    assert any(re.search(r"no MLflow model logged .*model_code", w) for w in result.warnings), result.warnings
    tags = mlflow.MlflowClient().get_run(result.run_id).data.tags
    assert "model_code" in tags["focusml.warning"]


# ---- docs/api.md: its examples run ------------------------------------------------------------------

@pytest.mark.slow
def test_docs_api_examples_run(tracking_env, tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "docs_api"}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), scope)


def test_a_list_of_callbacks_each_gets_every_hook(splits):
    """`callbacks=[a, b]`: one dispatcher, every hook (on_checkpoint included) reaches each, in order."""
    train, val, test = splits

    class Hooks(Callbacks):
        def __init__(self, log, name):
            self.log, self.name = log, name

        def on_checkpoint(self, epoch, state):
            self.log.append((self.name, "checkpoint", epoch))

        def on_epoch_end(self, epoch, metrics, model):
            self.log.append((self.name, "epoch", epoch))

        def on_run_end(self, ctx, result):
            self.log.append((self.name, "end", None))

    log = []
    focusml.fit(TinyNet(), train, "baseline", val=val, test=test, epochs=2, track=False, device="cpu",
                callbacks=[Hooks(log, "a"), Hooks(log, "b")])
    assert log == [(n, hook, e) for e in (0, 1) for hook in ("checkpoint", "epoch") for n in "ab"] + \
        [("a", "end", None), ("b", "end", None)]
