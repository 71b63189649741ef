"""Models (small CNN, VGG with GAP head, local pretrained weights) and RunConfig validation."""

import math

import pytest
import torch

from focusml import FocusmlError
from focusml.core.config import MaskAugment, RunConfig, load_yaml
from focusml.core.models import build_model, load_pretrained


def test_vgg_cam_grid_and_channels():
    model = build_model("vgg11", 1, 10, 28)
    a, logits = model.forward_features(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert a.shape[-1] >= 4 and (a >= 0).all()
    assert isinstance(model.features[-1], torch.nn.ReLU)


def test_pretrained_loads_local_weights_only(tmp_path):
    src = build_model("small", 1, 10, 28)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = build_model("small", 1, 10, 28, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    with pytest.raises(FocusmlError, match="not found"):
        load_pretrained(dst, tmp_path / "missing.pt")


def test_pretrained_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(Exception):
        load_pretrained(build_model("small", 1, 10, 28), path)


@pytest.mark.parametrize("kw, fragment", [
    ({"epochs": 0}, "--epochs"),
    ({"epochs": -3}, "--epochs"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"model": "resnet"}, "unknown model"),
    ({"lr": float("nan")}, "--lr"),
    ({"augment": MaskAugment(keep_fraction=1.5)}, "--keep-fraction"),
    ({"augment": MaskAugment(dilate=-1)}, "--dilate"),
    ({"augment": MaskAugment(blur=float("nan"))}, "--blur"),
])
def test_bad_config_is_refused_with_the_option_named(kw, fragment):
    with pytest.raises(FocusmlError, match=fragment.replace("-", r"\-")):
        RunConfig(**kw).validate()


def test_from_flat_sorts_keys_and_refuses_unknown():
    c = RunConfig.from_flat({"method": "baseline", "epochs": 3, "dilate": 2, "keep-fraction": 0.5})
    assert c.epochs == 3 and c.augment.dilate == 2 and math.isclose(c.augment.keep_fraction, 0.5)
    with pytest.raises(FocusmlError, match="unknown option 'wat'"):
        RunConfig.from_flat({"wat": 1})


def test_method_option_for_wrong_method_is_refused():
    with pytest.raises(FocusmlError, match="does not apply to method 'baseline'"):
        RunConfig(method="baseline", method_params={"lam": 1.0}).validate()


def test_yaml_must_be_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(FocusmlError, match="mapping"):
        load_yaml(p)
    p.write_text("epochs: [\n")
    with pytest.raises(FocusmlError, match="not valid YAML"):
        load_yaml(p)
