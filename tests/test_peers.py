"""The published peers: RRR, RRR-G (Grad-CAM), counterexamples and CDEP (contextual decomposition)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focusml import FocusmlError
from focusml.core.cam import class_cam, grad_cam, mask_to_grid, minmax
from focusml.core.methods.cdep.decomposition import decompose, propagate
from focusml.core.methods import Batch, get
from focusml.core.models import CamNet, small_cnn, vgg_cam
from focusml.core.run import run
from focusml.core.train import train_step


def _one_channel_net(a=0.7, b=0.5, w=(1.5, -0.5, 0.25), beta=(0.1, -0.2, 0.0)) -> CamNet:
    """features A = ReLU(a·x + b) with one 1×1 filter, then GAP and a 1→3 linear layer."""
    model = CamNet(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()), 1, 3)
    with torch.no_grad():
        model.features[0].weight.fill_(a)
        model.features[0].bias.fill_(b)
        model.classifier.weight.copy_(torch.tensor(w)[:, None])
        model.classifier.bias.copy_(torch.tensor(beta))
    return model


def test_rrr_penalty_matches_hand_computation():
    a, w = 0.7, torch.tensor([1.5, -0.5, 0.25])
    model = _one_channel_net(a=a, w=tuple(w.tolist()))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 5, 5, generator=gen)  # ≥ 0, so a·x + b > 0: the ReLU is the identity
    m = torch.zeros(3, 5, 5)
    m[0, :2, :3] = 1  # 6 pixels
    m[1, 4, 4] = 1  # 1 pixel
    # image 2: no mask, contributes nothing
    method = get("rrr")({"lam": 2.0})
    xg = x.clone().requires_grad_(True)
    features, logits = model.forward_features(xg)
    pen = method.penalty(model, Batch(xg, m, torch.zeros(3, dtype=torch.long), torch.arange(3)), features, logits)

    # Σ_c log p_c = Σ_c z_c − C·logsumexp(z); z_c = w_c·mean(A) + β_c, so every pixel has
    # ∂/∂x = (Σ_c w_c − C·Σ_c p_c w_c) · a / (H·W).
    p = torch.softmax(logits.detach(), 1)
    coef = (w.sum() - 3 * (p * w).sum(1)) * a / 25
    hand = (m.flatten(1).sum(1) * coef**2).mean()
    from focusml.core.methods.rrr import SCALE

    assert pen.item() == pytest.approx(SCALE * hand.item(), rel=1e-5)
    pen.backward()  # create_graph: the penalty trains the weights (double backward)
    assert model.features[0].weight.grad.abs().item() > 0


def test_rrr_runs_in_the_training_step_and_adds_lam_times_penalty():
    model = _one_channel_net()
    x = torch.rand(2, 1, 5, 5)
    m = torch.ones(2, 5, 5)
    method = get("rrr")({"lam": 3.0})
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    _, ce, weighted = train_step(model, method, Batch(x.clone(), m, torch.tensor([0, 2]), torch.arange(2)), opt)
    xg = x.clone().requires_grad_(True)
    feats, logits = model.forward_features(xg)
    expected = 3.0 * method.penalty(model, Batch(xg, m, torch.tensor([0, 2]), torch.arange(2)), feats, logits)
    assert weighted == pytest.approx(expected.item(), rel=1e-5)
    assert ce == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 2])).item(), rel=1e-6)


def test_grad_cam_of_a_gap_model_is_proportional_to_cam():
    torch.manual_seed(0)
    model = small_cnn(1, 4)
    x = torch.rand(5, 1, 28, 28)
    classes = torch.tensor([0, 1, 2, 3, 1])
    cam, _ = class_cam(model, x, classes)
    assert (cam < 0).any() and (cam > 0).any()  # the ReLU of Grad-CAM matters here
    h, w = cam.shape[-2:]
    gc = grad_cam(model, x, classes)
    torch.testing.assert_close(gc, cam.clamp_min(0) / (h * w), rtol=1e-4, atol=1e-7)
    # default class: the predicted one
    torch.testing.assert_close(grad_cam(model, x), class_cam(model, x)[0].clamp_min(0) / (h * w), rtol=1e-4, atol=1e-7)


def test_rrr_gradcam_penalty_is_masked_normalised_cam_squared():
    torch.manual_seed(1)
    model = small_cnn(1, 3)
    x = torch.rand(4, 1, 28, 28)
    m = torch.zeros(4, 28, 28)
    m[0, :4, :4] = 1
    m[1, 20:, 10:14] = 1
    method = get("rrr_gradcam")({"lam": 1.0})
    features, logits = model.forward_features(x)
    pen = method.penalty(model, Batch(x, m, torch.zeros(4, dtype=torch.long), torch.arange(4)), features, logits)
    # For a GAP model Grad-CAM = ReLU(CAM)/(h·w), and min-max normalisation removes the factor.
    cam, _ = class_cam(model, x)
    cells = mask_to_grid(m, cam.shape[-2:])
    from focusml.core.methods.rrr_gradcam import SCALE

    expected = SCALE * ((cells * minmax(cam.clamp_min(0))) ** 2).flatten(1).sum(1).mean()
    assert pen.item() == pytest.approx(expected.item(), rel=1e-4)
    pen.backward()
    assert model.classifier.weight.grad.abs().sum() > 0  # trains through the Grad-CAM weights α
    zero = method.penalty(model, Batch(x, torch.zeros_like(m), torch.zeros(4, dtype=torch.long), torch.arange(4)),
                          *model.forward_features(x))
    assert zero.item() == 0.0


# --- counterexamples ---------------------------------------------------------------------------

def _ce_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=gen)
    m = torch.zeros(4, 8, 8)
    m[0, :2, :2] = 1
    m[2, 3:6, 4:] = 1
    m[3, 7, 0] = 1
    return Batch(x, m, torch.tensor([4, 1, 2, 0]), torch.tensor([10, 11, 12, 13]))


def test_counterexamples_change_only_masked_pixels_and_keep_labels():
    batch = _ce_batch()
    out = get("counterexamples")({"copies": 1}).transform_batch(batch, torch.Generator().manual_seed(0))
    src = torch.tensor([0, 2, 3])  # the images with a mask; image 1 has none and gets no copy
    assert len(out.x) == 4 + 3
    torch.testing.assert_close(out.x[:4], batch.x)
    assert out.y.tolist() == [4, 1, 2, 0, 4, 2, 0]
    assert out.index.tolist() == [10, 11, 12, 13, -1, -1, -1]
    torch.testing.assert_close(out.m[4:], batch.m[src])
    inside = batch.m[src][:, None].expand(-1, 3, -1, -1) > 0
    fakes, orig = out.x[4:], batch.x[src]
    assert torch.equal(fakes[~inside], orig[~inside])
    assert (fakes[inside] != orig[inside]).all()
    assert fakes.min() >= 0 and fakes.max() <= 1
    again = get("counterexamples")({"copies": 1}).transform_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(again.x, out.x)  # the loop's generator makes it reproducible


def test_counterexamples_copies_and_soft_masks():
    batch = _ce_batch()
    soft = batch.replace(m=batch.m * 0.5)
    out = get("counterexamples")({"copies": 2}).transform_batch(soft, torch.Generator().manual_seed(0))
    assert len(out.x) == 4 + 2 * 3 and out.y[4:].tolist() == [4, 2, 0, 4, 2, 0]
    src = torch.tensor([0, 2, 3, 0, 2, 3])
    inside = soft.m[src][:, None].expand(-1, 3, -1, -1) > 0
    # half-weight mask: x' = x/2 + noise/2, so x' − x/2 lies in [0, 1/2]
    diff = out.x[4:][inside] - soft.x[src][inside] / 2
    assert diff.min() >= 0 and diff.max() <= 0.5
    assert torch.equal(out.x[4:][~inside], soft.x[src][~inside])
    with pytest.raises(FocusmlError, match="copies"):
        get("counterexamples")({"copies": 0})


# --- contextual decomposition ------------------------------------------------------------------

def _parts(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rel = torch.randn(shape, generator=gen)
    irrel = torch.randn(shape, generator=gen)
    rel[0], irrel[0] = 0, 0  # a sample with both parts exactly zero: the bias must still be kept
    rel[1, ..., 0] = 0  # and zeros in one part only
    return rel, irrel


def _bn(train: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3]))
        bn.bias.copy_(torch.tensor([0.2, 0.1, -0.4]))
        bn.running_mean.copy_(torch.tensor([0.3, -0.1, 0.5]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.2]))
    return bn.train(train)


LAYERS = {
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "conv2d_strided_nobias": (lambda: nn.Conv2d(3, 4, 3, stride=2, bias=False), (2, 3, 7, 7)),
    "linear": (lambda: nn.Linear(5, 4), (3, 5)),
    "batchnorm2d_train": (lambda: _bn(True), (4, 3, 5, 5)),
    "batchnorm2d_eval": (lambda: _bn(False), (4, 3, 5, 5)),
    "relu_inplace": (lambda: nn.ReLU(inplace=True), (2, 3, 4, 4)),
    "maxpool2d": (lambda: nn.MaxPool2d(2, 2), (2, 3, 6, 6)),
    "maxpool2d_padded_ceil": (lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 7, 7)),
    "adaptive_avg_pool2d": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
    "avgpool2d": (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 2, 2)),
    "dropout_eval": (lambda: nn.Dropout(0.5).eval(), (2, 3, 4, 4)),
    "sequential": (lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), _bn(True), nn.ReLU(inplace=True),
                                         nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)),
                   (4, 3, 6, 6)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_decomposition_is_complete_for_each_layer(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    module = make()
    rel, irrel = _parts(shape)
    state = copy.deepcopy(module.state_dict())
    expected = copy.deepcopy(module)((rel + irrel).clone())
    out_rel, out_irrel = propagate(module, rel.clone(), irrel.clone())
    torch.testing.assert_close(out_rel + out_irrel, expected, rtol=1e-5, atol=1e-5)
    assert out_rel.abs().sum() > 0 and out_irrel.abs().sum() > 0
    for k, v in module.state_dict().items():  # no side effects (BatchNorm running statistics)
        assert torch.equal(v, state[k]), k


def test_decomposition_dropout_in_training_shares_one_mask():
    rel, irrel = _parts((2, 3, 4, 4))
    torch.manual_seed(7)
    out_rel, out_irrel = propagate(nn.Dropout(0.5), rel, irrel)
    torch.manual_seed(7)
    keep = F.dropout(torch.ones_like(rel), 0.5, training=True)
    torch.testing.assert_close(out_rel + out_irrel, (rel + irrel) * keep)
    assert ((out_rel == 0) == (out_irrel == 0))[keep == 0].all()


def _vgg_bn_net() -> CamNet:
    """A VGG-style stack with BatchNorm2d and Dropout, as torchvision's *_bn variants build it."""
    features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Dropout(0.3),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
    )
    return CamNet(features, 16, 5)


@pytest.mark.parametrize("build,train", [
    (lambda: small_cnn(1, 10), True),
    (lambda: vgg_cam(1, 10, 28), True),
    (_vgg_bn_net, False),
])
def test_decomposition_of_the_logits_is_complete_for_focusml_models(build, train):
    torch.manual_seed(0)
    model = build().train(train)
    x = torch.rand(3, 1, 28, 28)
    x[..., :, 20:] = 0  # black background, as in the digits: both parts vanish there
    m = torch.zeros(3, 28, 28)
    m[0, :4, :4] = 1
    m[1, 10:20, 5:9] = 0.5  # soft masks split the pixel between the parts
    rel, irrel = decompose(model, x, m)
    logits = model(x)
    torch.testing.assert_close(rel + irrel, logits, rtol=1e-4, atol=1e-4)
    assert rel[2].abs().max() == 0  # image 2 has no mask: nothing is due to it
    assert rel[0].abs().sum() > 0
    # every pixel relevant (and no black background, whose bias goes to irrel): all evidence is rel
    x = torch.rand(3, 1, 28, 28) + 0.1
    rel_all, irrel_all = decompose(model, x, torch.ones(3, 28, 28))
    assert irrel_all.abs().max() == 0
    torch.testing.assert_close(rel_all, model(x), rtol=1e-4, atol=1e-4)


def test_decomposition_refuses_unsupported_layers():
    model = CamNet(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU()), 2, 3)
    with pytest.raises(FocusmlError, match="GELU"):
        decompose(model, torch.rand(1, 1, 8, 8), torch.ones(1, 8, 8))


def test_cdep_penalty_is_the_mean_summed_rel_share_of_masked_images():
    torch.manual_seed(2)
    model = small_cnn(1, 4)
    x = torch.rand(3, 1, 28, 28)
    m = torch.zeros(3, 28, 28)
    m[0, :4, :4] = 1
    m[2, 24:, 24:] = 1
    method = get("cdep")({"lam": 1.0})
    batch = Batch(x, m, torch.zeros(3, dtype=torch.long), torch.arange(3))
    pen = method.penalty(model, batch, *model.forward_features(x))
    rel, irrel = decompose(model, x, m)
    share = torch.sigmoid(rel - irrel)  # softmax([rel, irrel])[0]
    expected = (share[0].sum() + share[2].sum()) / 3  # image 1 has no mask and adds nothing
    assert pen.item() == pytest.approx(expected.item(), rel=1e-5)
    pen.backward()
    assert model.features[0].weight.grad.abs().sum() > 0
    none = method.penalty(model, batch.replace(m=torch.zeros_like(m)), *model.forward_features(x))
    assert none.item() == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("rrr", {}), ("rrr_gradcam", {}), ("cdep", {}), ("counterexamples", {})])
def test_each_peer_trains_one_epoch(method, options, tiny_config):
    result = run(tiny_config(method=method, method_params=options, batch_size=128))
    epoch = result.history[0]
    assert 0.0 <= result.metrics["acc/test"] <= 1.0
    if method == "counterexamples":
        assert epoch["loss/penalty"] == 0.0
    else:
        assert epoch["loss/penalty"] > 0.0
