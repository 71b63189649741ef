"""The torchvision backbones (resnet18, resnet50, densenet121): exact CAM, any input size ≥ 16, 1 or 3
channels, ImageNet-format weights from a local file only, and every method that needs a layer on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from focusml import FocusmlError
from focusml.core.cam import cam_from_features
from focusml.core.config import RunConfig
from focusml.core.data import DataOptions, load
from focusml.core.methods import METHODS, Batch
from focusml.core.methods.base import PrepareContext
from focusml.core.methods.cdep.decomposition import decompose
from focusml.core.models import build_model, guess_architecture, imagenet_file, load_pretrained
from focusml.core.run import run
from focusml.core.train import train_step

BACKBONES = ["resnet18", "resnet50", "densenet121"]
#: resnet18 in the fast loop; the two big nets (seconds to build and run on a CPU) only in `make test`
HEAVY = [pytest.param(name, marks=pytest.mark.slow) for name in BACKBONES[1:]]


@pytest.mark.parametrize("name, size, channels, grid", [
    ("resnet18", 64, 3, 4), ("resnet18", 28, 1, None), ("resnet18", 224, 3, 7),
    *(pytest.param(name, size, channels, grid, marks=pytest.mark.slow)
      for name in BACKBONES[1:] for size, channels, grid in ((64, 3, 4), (28, 1, None)))])
def test_backbone_gives_an_exact_cam_on_a_grid_of_at_least_4(name, size, channels, grid):
    torch.manual_seed(0)
    model = build_model(name, channels, 5, size).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        a, logits = model.forward_features(x)
        cams = cam_from_features(a, model.classifier.weight)
    assert (a >= 0).all() and a.shape[-1] >= 4 and (grid is None or a.shape[-1] == grid)
    # GAP + linear: the logit is the CAM's mean plus the bias, so the CAM is exact
    assert torch.allclose(cams.mean((-2, -1)) + model.classifier.bias, logits, atol=1e-4)


def test_backbones_refuse_images_below_16_pixels():
    with pytest.raises(FocusmlError, match="at least 16×16"):
        build_model("resnet18", 1, 10, 12)


def tv_state(name: str) -> dict:
    torch.manual_seed(1)
    return getattr(torchvision.models, name)(weights=None).state_dict()


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_a_torchvision_format_state_dict_loads_into_3_and_1_channel_models(tmp_path, name):
    state = tv_state(name)
    if name == "densenet121":  # the published file still uses the old `norm.1` names, as torchvision's loader knows
        state = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    first = "features.conv1.weight" if name.startswith("resnet") else "features.conv0.weight"
    rgb = build_model(name, 3, 7, 64, pretrained=str(path))
    own = rgb.state_dict()
    tv_first = state["conv1.weight" if name.startswith("resnet") else "features.conv0.weight"]
    assert torch.equal(own[first], tv_first)
    deep = "features.layer4.1.conv2.weight" if name.startswith("resnet") else "features.denseblock1.denselayer1.norm1.weight"
    source = state["layer4.1.conv2.weight"] if name.startswith("resnet") else state["features.denseblock1.denselayer1.norm.1.weight"]
    assert torch.equal(own[deep], source)
    assert own["classifier.weight"].shape == (7, own["classifier.weight"].shape[1])  # the ImageNet head is not loaded
    grey = build_model(name, 1, 7, 64, pretrained=str(path))
    assert torch.allclose(grey.state_dict()[first], tv_first.sum(1, keepdim=True))
    # a grey image x gives the response the RGB net gives to (x, x, x)
    x = torch.rand(1, 1, 64, 64)
    conv_rgb = rgb.features.conv1 if name.startswith("resnet") else rgb.features.conv0
    conv_grey = grey.features.conv1 if name.startswith("resnet") else grey.features.conv0
    assert torch.allclose(conv_grey(x), conv_rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_pretrained_imagenet_reads_torchvision_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FocusmlError) as err:
        build_model("resnet18", 3, 10, 64, pretrained="imagenet")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "never downloads" in msg and "weights='IMAGENET1K_V1'" in msg
    target = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    state = tv_state("resnet18")
    torch.save(state, target)
    assert imagenet_file("resnet18") == target
    model = build_model("resnet18", 3, 10, 64, pretrained="imagenet")
    assert torch.equal(model.state_dict()["features.conv1.weight"], state["conv1.weight"])
    with pytest.raises(FocusmlError, match="has no ImageNet weights"):
        build_model("small", 1, 10, 28, pretrained="imagenet")


def test_pretrained_with_nothing_that_fits_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"something.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(FocusmlError, match="no tensor matches the layers of model 'resnet18'"):
        load_pretrained(build_model("resnet18", 3, 10, 32), path, "resnet18")


def test_architecture_is_recognised_from_a_checkpoint():
    for name, size in [("small", 28), ("small-bn", 28), ("resnet18", 64), ("densenet121", 32)]:
        state = build_model(name, 1, 4, size).state_dict()
        assert guess_architecture(state, size) == name


@pytest.mark.parametrize("name", ["resnet18", *HEAVY])
def test_cdep_decomposition_is_complete_through_residual_and_dense_blocks(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 5, 32)
    x, m = torch.rand(3, 3, 32, 32), torch.zeros(3, 32, 32)
    m[:, :8, :8] = 1
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            rel, irrel = decompose(model, x, m)
            logits = model(x)
        assert torch.allclose(rel + irrel, logits, atol=1e-4), (name, training)
        assert rel.abs().sum() > 0 and irrel.abs().sum() > 0


def write_folder(root, per_class=(4, 2, 2), size=64):
    """An RGB folder dataset: two classes, a coloured 12×12 tag in a corner (the shortcut), masks on the tag."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val", "test"), per_class):
        for k, cls in enumerate(("left", "right")):
            for i in range(n):
                img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
                img[20:44, (8 if k == 0 else 36):(28 if k == 0 else 56)] = 200
                img[:12, :12] = (255, 0, 0) if k == 0 else (0, 0, 255)
                mask = np.zeros((size, size), np.uint8)
                mask[:12, :12] = 255
                for sub, arr in (("images", img), ("masks", mask)):
                    path = root / sub / split / cls / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(path)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_trains_on_64px_rgb_folder_data_with_cam_pas_pasa_rrr(tmp_path, name):
    root = write_folder(tmp_path / "ds", per_class=(2, 1, 1))
    base = dict(dataset="folder", data_root=str(root), model=name, epochs=1, batch_size=4, device="cpu",
                log_model=False, select="last")
    result = run(RunConfig(method="pas", **base))
    assert 0 <= result.metrics["acc/test"] <= 1
    assert np.isfinite(result.metrics["wr/test"]) and np.isfinite(result.metrics["cam_in_mask/test"])  # CAM metrics
    model = result.model.train()  # as in training (the evaluated model comes back in eval mode)
    data = load("folder", DataOptions(root=root))
    x, m, y = data.split("train").batch(torch.arange(4))
    assert data.image_shape == (3, 64, 64)
    for method in ("pasa", "rrr", "rrr_gradcam", "cdep", "selective_dropout"):
        config = RunConfig(method=method, **base).validate()
        meth = METHODS[method](config.method_params)
        meth.prepare(PrepareContext(data=data, config=config, model=model, cache_dir=tmp_path, device=torch.device("cpu")))
        batch = meth.transform_batch(Batch(x, m, y, torch.arange(4)), torch.Generator().manual_seed(0))
        loss, ce, pen = train_step(model, meth, batch, torch.optim.SGD(model.parameters(), lr=1e-4))
        assert np.isfinite(loss), method
        if method in ("pasa", "rrr", "cdep"):
            assert pen > 0, method


def test_selective_dropout_layers_on_a_resnet(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=(1, 1, 1), size=32)
    data = load("folder", DataOptions(root=root))
    model = build_model("resnet18", 3, 2, 32)

    def prepare(layers):  # as a run does: check before the run starts, then prepare
        meth = METHODS["selective_dropout"]({"layers": layers})
        meth.check(model, data, torch.device("cpu"))
        meth.prepare(PrepareContext(data=data, config=None, model=model, cache_dir=tmp_path, device=torch.device("cpu")))
        return meth.layers

    assert prepare("input,last") == ["input", "features.layer4"]
    assert prepare("features.layer3.1") == ["features.layer3.1"]
    with pytest.raises(FocusmlError, match="runs 2 times per forward pass.*features.layer3.1"):
        prepare("features.layer3.1.relu")
    with pytest.raises(FocusmlError) as err:
        prepare("features.nope")
    assert "features.layer2" in str(err.value) and "in all" in str(err.value)
