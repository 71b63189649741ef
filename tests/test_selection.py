"""Checkpoint selection on validation metrics, the learning-rate schedule, and the grid margin."""

from __future__ import annotations

import math

import pytest
import torch

from focusml import FocusmlError
from focusml.core.cam import region_evidence
from focusml.core.config import RunConfig
from focusml.core.data import Dataset, Split
from focusml.core.evaluate import select_metric
from focusml.core.methods import Batch, get
from focusml.core.methods.pas import all_evidence_term, pas_term
from focusml.core.models import build_model, grid_margin, receptive_field
from focusml.core.run import run
from focusml.core.train import FitResult, Selector


class Tiny(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(value))


def test_selector_keeps_the_best_epoch_in_the_metrics_direction_later_on_ties():
    model = Tiny(0.0)
    best = Selector("acc/val_cf")
    for epoch, value in enumerate([0.2, 0.7, 0.5, 0.7, 0.1]):
        model.w.data.fill_(epoch)
        best.update(epoch, {"acc/val_cf": value}, model)
    result = best.finish(FitResult(history=[{}] * 5), last_epoch=4)
    assert result.selected_epoch == 3 and result.selected_state["w"].item() == 3.0
    low = Selector("flip/val")
    for epoch, value in enumerate([0.5, 0.1, float("nan"), 0.3]):
        low.update(epoch, {"flip/val": value}, model)
    assert low.finish(FitResult(), last_epoch=3).selected_epoch == 1


def test_selector_falls_back_to_the_last_epoch():
    never = Selector("acc/val_cf")
    for epoch in range(3):
        never.update(epoch, {"acc/val_cf": math.nan}, Tiny(0.0))
    result = never.finish(FitResult(), last_epoch=2)
    assert result.selected_epoch == 2 and result.selected_state is None
    last = Selector("last")
    for epoch in range(3):
        last.update(epoch, {}, Tiny(0.0))
    assert last.finish(FitResult(), last_epoch=2).selected_epoch == 2


@pytest.mark.parametrize("bad", ["acc/test", "acc/test_cf", "nosuch"])
def test_select_refuses_test_splits_and_unknown_metrics(bad):
    with pytest.raises(FocusmlError, match="--select") as err:
        RunConfig(select=bad).validate()
    assert ("test split" in str(err.value)) == ("test" in bad)


def _dataset(masked: bool, clean: bool) -> Dataset:
    n = 8
    split = Split(torch.zeros(n, 1, 8, 8, dtype=torch.uint8), torch.zeros(n, 8, 8, dtype=torch.uint8),
                  torch.arange(n) % 2)
    if masked:
        split.masks[:, :2, :2] = 1
    splits = {"train": split, "val": split, "test": split}
    if clean:
        splits["val_clean"] = split
    return Dataset("toy", ["a", "b"], splits)


def test_auto_selection_uses_counterfactuals_when_val_has_masks():
    assert select_metric("auto", _dataset(masked=True, clean=False)) == "acc/val_cf"
    assert select_metric("auto", _dataset(masked=False, clean=False)) == "last"
    with pytest.raises(FocusmlError, match="needs masks on the validation images"):
        select_metric("acc/val_cf", _dataset(masked=False, clean=False))
    with pytest.raises(FocusmlError, match="clean validation split"):
        select_metric("acc/val_clean", _dataset(masked=True, clean=False))
    assert select_metric("acc/val_clean", _dataset(masked=True, clean=True)) == "acc/val_clean"


def test_run_evaluates_the_selected_epoch_and_the_schedule_anneals(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCUSML_CACHE", str(tmp_path))
    config = RunConfig(epochs=4, batch_size=64, device="cpu", log_model=False, select="acc/val")
    result = run(config)
    accs = [h["acc/val"] for h in result.history]
    expected = max(range(4), key=lambda e: (accs[e], e))
    assert result.fit.selected_epoch == expected and result.metrics["selected_epoch"] == expected + 1  # one-based
    assert result.metrics["selected/acc/val"] == accs[expected]
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == config.lr and all(a > b for a, b in zip(lrs, lrs[1:]))
    if expected != 3:  # the evaluated weights are the selected epoch's, the last ones kept beside them
        assert result.last_state is not None
        assert all(torch.equal(v, result.fit.selected_state[k]) for k, v in result.model.state_dict().items())
    flat = run(RunConfig(epochs=2, batch_size=64, device="cpu", log_model=False, lr_schedule="constant",
                         select="last"))
    assert [h["lr"] for h in flat.history] == [3e-3, 3e-3] and flat.last_state is None


def test_grid_margin_reaches_as_far_as_the_receptive_field_capped_by_the_grid():
    small = build_model("small", 1, 10, 28)
    assert receptive_field(small.features) == (18, 4)
    assert grid_margin(small, 7) == 2  # (18 − 4) / (2·4) → 2 cells
    assert grid_margin(small, 3) == 1  # never more than a third of the grid
    vgg = build_model("vgg11", 1, 10, 28)
    assert grid_margin(vgg, 7) == 2  # a deep stack's theoretical field is capped
    assert receptive_field(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


def test_all_evidence_penalty_sees_evidence_against_other_classes():
    feats = torch.zeros(1, 1, 2, 2, requires_grad=True)
    with torch.no_grad():
        feats[0, 0, 0, 0] = 4.0  # fires only in the masked cell
    weight = torch.tensor([[0.0], [-1.0], [0.0]])  # …where it speaks against class 1 only
    m = torch.zeros(1, 4, 4)
    m[0, :2, :2] = 1
    y = torch.tensor([0])
    assert pas_term(feats, weight, y, m).item() == 0.0  # the positive true-class CAM shows nothing
    pen = all_evidence_term(region_evidence(feats, weight, m)[0])
    assert pen.item() > 0
    pen.backward()
    assert feats.grad[0, 0, 0, 0] != 0 and feats.grad[0, 0, 1, 1] == 0  # only the masked cell is pushed
    assert all_evidence_term(region_evidence(feats, weight, torch.zeros_like(m))[0]).item() == 0.0


def test_pas_works_out_an_auto_margin_on_the_first_batch():
    method = get("pas")({})
    assert method.options["grid_dilate"] == "auto" and method.options["evidence"] == "all"
    model = build_model("small", 1, 10, 28)
    x = torch.rand(2, 1, 28, 28)
    feats, logits = model.forward_features(x)
    method.penalty(model, Batch(x, torch.zeros(2, 28, 28), torch.tensor([0, 1]), torch.arange(2)), feats, logits)
    assert method.margin == 2
    assert get("pas")({"grid_dilate": "1"}).options["grid_dilate"] == 1
    with pytest.raises(FocusmlError, match="grid-dilate"):
        get("pas")({"grid_dilate": "wide"})
