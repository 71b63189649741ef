"""PAS and PASA follow METHODS.md; λ and p are refused outside their ranges, also on the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from focusml import FocusmlError
from focusml.cli import main as cli_main
from focusml.core.methods import Batch, get
from focusml.core.methods.pas import SCALE as PAS_SCALE
from focusml.core.methods.pas import pas_term
from focusml.core.methods.pasa import SCALE as PASA_SCALE
from focusml.core.methods.pasa import pasa_term
from focusml.core.models import small_cnn
from focusml.core.run import run


def corner_masks(n=4, size=28, patch=4):
    m = torch.zeros(n, size, size)
    m[:, :patch, :patch] = 1
    return m


def test_pas_matches_the_definition_on_a_hand_made_example():
    feats = torch.zeros(2, 2, 2, 2)  # N=2, K=2, 2×2 grid
    feats[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    feats[0, 1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    feats[1, 0] = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, -3.0], [0.5, 0.0]])  # C=2
    y = torch.tensor([0, 1])
    m = torch.zeros(2, 4, 4)
    m[0, 0, 0] = 1  # one pixel → the whole top-left cell (adaptive max pooling)
    m[0, 0, 3] = 1  # and the top-right cell
    m[1, 3, 3] = 1  # bottom-right cell only
    # image 0, class 0: CAM = A0 − 3·A1 = [[-2, 2], [3, 4]] → masked cells (0,0),(0,1): ReLU → 0 + 2, over 2 cells
    # image 1, class 1: CAM = 0.5·A0 = [[2.5, 0], [0, 0.5]] → masked cell (1,1): 0.5, over max(1, 1)
    expected = (2.0 / 2 + 0.5 / 1) / 2
    assert torch.isclose(pas_term(feats, weight, y, m), torch.tensor(expected))


def test_pas_is_zero_without_a_mask_and_its_gradient_reaches_only_masked_cells():
    torch.manual_seed(0)
    feats = torch.rand(4, 8, 7, 7, requires_grad=True)
    weight = torch.rand(10, 8)  # positive weights: every CAM cell is positive
    y = torch.tensor([1, 2, 3, 4])
    zero = pas_term(feats, weight, y, torch.zeros(4, 28, 28))
    assert zero.item() == 0.0
    m = corner_masks()
    m[1] = 0  # an image without annotation contributes nothing
    m[2, 10, 10] = 1  # a single pixel marks the cell (2, 2)
    pen = pas_term(feats, weight, y, m)
    pen.backward()
    cells = F.adaptive_max_pool2d(m[:, None], (7, 7))[:, 0] > 0
    g = feats.grad.abs().sum(1)  # N×7×7
    assert torch.all(g[~cells] == 0) and torch.all(g[cells] > 0)
    assert torch.all(g[1] == 0)


def test_pas_uses_the_true_class_only():
    torch.manual_seed(1)
    feats, weight = torch.rand(3, 4, 7, 7), torch.randn(10, 4)
    m = corner_masks(3)
    y = torch.tensor([0, 5, 9])
    by_hand = torch.stack([F.relu(torch.einsum("k,khw->hw", weight[c], f))[0, 0] for c, f in zip(y, feats)]).mean()
    assert torch.isclose(pas_term(feats, weight, y, m), by_hand)


def test_pasa_is_unchanged_when_all_activations_are_scaled():
    torch.manual_seed(2)
    feats = torch.rand(5, 8, 7, 7)
    weight, logits = torch.randn(10, 8), torch.randn(5, 10)
    m = corner_masks(5)
    m[3, 12:20, 12:20] = 1
    ref = pasa_term(feats, weight, logits, m)
    assert ref > 0
    for c in (1e-2, 0.5, 3.0, 100.0):
        assert torch.isclose(pasa_term(c * feats, weight, logits, m), ref, rtol=1e-4)
    # PAS, by contrast, shrinks with the activations: the loophole PASA closes
    y = torch.zeros(5, dtype=torch.long)
    assert torch.isclose(pas_term(0.5 * feats, weight, y, m), 0.5 * pas_term(feats, weight, y, m))


def test_pasa_matches_the_definition_and_detaches_p():
    feats = torch.zeros(1, 1, 1, 2, requires_grad=True)
    with torch.no_grad():
        feats[0, 0, 0] = torch.tensor([1.0, 3.0])
    weight = torch.tensor([[1.0], [-1.0]])  # class 1 has no positive evidence
    logits = torch.tensor([[2.0, 0.0]], requires_grad=True)
    m = torch.zeros(1, 2, 4)
    m[0, :, :2] = 1  # the left cell
    p0 = torch.softmax(logits.detach(), 1)[0, 0]
    val = pasa_term(feats, weight, logits, m)
    assert torch.isclose(val, p0 * 1.0 / (4.0 + 1e-6))
    val.backward()
    assert logits.grad is None or torch.all(logits.grad == 0)
    assert pasa_term(feats, weight, logits, torch.zeros_like(m)).item() == 0.0


@pytest.mark.parametrize("name,evidence", [("pas", "positive"), ("pasa", "positive"), ("pasa", "all")])
def test_lambda_one_is_of_the_order_of_ce_at_initialisation(name, evidence, digits):
    """The thesis's forms (exact m↓) and pasa's share of all evidence (auto margin); pas's all-evidence form is
    in logits² and has no CE-sized start (its default λ is chosen on validation data instead)."""
    x, m, y = digits.split("train").batch(torch.arange(256))
    method = get(name)({"lam": 1.0, "evidence": evidence, "grid_dilate": 0 if evidence == "positive" else "auto"})
    for seed in range(3):
        torch.manual_seed(seed)
        model = small_cnn(1, 10)
        feats, logits = model.forward_features(x)
        ce = F.cross_entropy(logits, y).item()
        pen = method.lam * method.penalty(model, Batch(x, m, y, torch.arange(256)), feats, logits).item()
        assert ce / 5 < pen < ce * 5, (seed, pen, ce)


@pytest.mark.parametrize("name,opts,flag", [
    ("pas", {"lam": -1.0}, "--lam"), ("pasa", {"lam": float("nan")}, "--lam"), ("pas", {"lam": float("inf")}, "--lam"),
    ("random_crop", {"p": 1.5}, "--p"), ("generative", {"p": -0.1}, "--p"),
    ("selective_dropout", {"p": float("nan")}, "--p"), ("pas", {"p": 0.5}, "--p does not apply"),
])
def test_bad_lambda_and_p_are_refused(name, opts, flag, tiny_config):
    with pytest.raises(FocusmlError, match=flag):
        get(name)(opts)
    with pytest.raises(FocusmlError, match=flag):
        tiny_config(method=name, method_params=opts).validate()


@pytest.mark.parametrize("argv,needle", [
    (["--method", "pas", "--lam", "-1"], "--lam for method 'pas' is -1.0; it must be ≥ 0"),
    (["--method", "pasa", "--lam", "nan"], "--lam for method 'pasa' is nan"),
    (["--method", "random_crop", "--p", "2"], "--p for method 'random_crop' is 2.0; it must be ≤ 1"),
    (["--method", "selective_dropout", "--p", "-0.5"], "it must be ≥ 0"),
])
def test_cli_refuses_bad_values_with_exit_status_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", *argv, "--epochs", "1"])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_cli_binary_refuses_negative_lambda(tmp_path, venv_bin):
    proc = subprocess.run([str(venv_bin / "focusml"), "train", "--method", "pas", "--lam", "-1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "--lam for method 'pas' is -1.0; it must be ≥ 0" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was tracked


@pytest.fixture(scope="module")
def baseline_state(tiny_config):
    return run(tiny_config(method="baseline")).model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pas", "pasa"])
def test_loss_training_changes_the_model_and_logs_the_penalty(name, baseline_state, tiny_config):
    base = baseline_state
    result = run(tiny_config(method=name, method_params={"lam": 1.0}))
    diff = max(float((result.model.state_dict()[k] - v).abs().max()) for k, v in base.items())
    assert diff > 1e-3
    h = result.history[0]
    assert h["loss/penalty"] > 0 and abs(h["loss/train"] - h["loss/ce"] - h["loss/penalty"]) < 1e-4


def test_grid_dilate_grows_the_grid_mask_by_whole_cells_only():
    from focusml.core.cam import mask_to_grid

    m = torch.zeros(1, 28, 28)
    m[0, :4, :4] = 1  # the decoy: exactly cell (0, 0) of the 7×7 grid
    assert mask_to_grid(m, (7, 7)).sum() == 1
    grown = mask_to_grid(m, (7, 7), 1)
    assert grown.sum() == 4 and grown[0, :2, :2].sum() == 4
    feats = torch.rand(1, 3, 7, 7, requires_grad=True)
    weight = torch.rand(10, 3)
    pas_term(feats, weight, torch.tensor([2]), m, grid_dilate=1).backward()
    touched = feats.grad.abs().sum(1)[0] > 0
    assert torch.equal(touched, grown[0] > 0)
    # PASA with and without dilation differ only through the extra cells
    logits = torch.rand(1, 10)
    assert pasa_term(feats, weight, logits, m, grid_dilate=1) > pasa_term(feats, weight, logits, m)
