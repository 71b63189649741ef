"""The annotations a run trains with: `--mask-budget` (a fixed, seeded set of annotated images) and
`--mask-corruption` (partial, shifted, dilated), applied once to the training split."""

from __future__ import annotations

import pytest
import torch

from focusml import FocusmlError
from focusml.core.callbacks import Callbacks
from focusml.core.config import RunConfig
from focusml.core.data.masks import annotate, budget_rows, corrupt, parse_budget
from focusml.core.run import run, training_data


def annotated(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).amax(1) > 0


@pytest.mark.parametrize("value, want", [(None, None), ("all", None), ("", None), ("10", 10), (30, 30), ("0.25", 0.25),
                                         (0.5, 0.5), ("1", 1), (3.0, 3)])
def test_budget_values(value, want):
    assert parse_budget(value) == want


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many", 1.5, 0.0])
def test_bad_budget_is_refused(value):
    with pytest.raises(FocusmlError, match="--mask-budget"):
        parse_budget(value)


def test_budget_is_a_fixed_seeded_choice_and_grows_by_supersets(digits):
    masks = digits.split("train").masks
    ten = budget_rows(masks, 10, seed=0)
    assert len(ten) == 10 and torch.equal(ten, budget_rows(masks, 10, seed=0))
    assert not torch.equal(ten, budget_rows(masks, 10, seed=1))
    hundred = budget_rows(masks, 100, seed=0)
    assert set(ten.tolist()) <= set(hundred.tolist())
    assert len(budget_rows(masks, 0.25, seed=0)) == round(0.25 * len(masks))
    assert len(budget_rows(masks, 10**6, seed=0)) == int(annotated(masks).sum())  # more than there are: all


def test_budget_keeps_n_masks_on_the_training_split_only(digits):
    data, n = annotate(digits, "train", 30, seed=2)
    train = data.split("train")
    assert n == 30 and int(annotated(train.masks).sum()) == 30
    kept = annotated(train.masks)
    assert torch.equal(train.masks[kept], digits.split("train").masks[kept])  # the kept masks are unchanged
    assert torch.equal(train.images, digits.split("train").images)
    for split in ("val", "test"):
        assert data.split(split) is digits.split(split)
    assert annotate(digits, "train")[0] is digits  # nothing asked: the same dataset


def test_corruptions(digits):
    masks = digits.split("train").masks[:50].clone()
    masks[0] = 0  # an unannotated image stays unannotated
    area = masks.flatten(1).sum(1)
    partial = corrupt(masks, "partial", 0.5, seed=0)
    assert torch.all((partial <= masks)) and torch.equal(partial.flatten(1).sum(1), (area + 1) // 2)
    shifted = corrupt(masks, "shifted", 0.25, seed=0)
    assert torch.equal(shifted.flatten(1).sum(1), area)  # the same shape...
    assert int((shifted.bool() & masks.bool()).sum()) == 0  # ...elsewhere (4×4 corner decoys, shifted by 7 pixels)
    dilated = corrupt(masks, "dilated", 0.1, seed=0)
    assert torch.all(dilated >= masks) and torch.all(dilated.flatten(1).sum(1)[1:] > area[1:])
    for c in (partial, shifted, dilated):
        assert int(c[0].sum()) == 0 and c.dtype == masks.dtype
    assert torch.equal(corrupt(masks, "shifted", 0.25, seed=0), shifted)  # fixed by the seed
    assert torch.equal(corrupt(masks, "none", None, seed=0), masks)


@pytest.mark.parametrize("kw, fragment", [
    ({"mask_corruption": "wrong"}, "--mask-corruption is 'wrong'"),
    ({"mask_corruption": "partial", "corruption_strength": 0.0}, "--corruption-strength is 0.0"),
    ({"mask_corruption": "dilated", "corruption_strength": 0.7}, "in (0, 0.5]"),
    ({"corruption_strength": 0.3}, "needs --mask-corruption"),
    ({"method": "baseline", "mask_budget": 10}, "do not apply to method 'baseline'"),
    ({"method": "upper_bound", "mask_corruption": "partial"}, "do not apply to method 'upper_bound'"),
    ({"mask_budget": "lots"}, "--mask-budget"),
])
def test_bad_annotation_options_are_refused(kw, fragment):
    with pytest.raises(FocusmlError) as err:
        RunConfig(**{"method": "pas", **kw}).validate()
    assert fragment in str(err.value)


def test_options_from_flat_keys_and_their_defaults():
    config = RunConfig.from_flat({"method": "pas", "mask_budget": "100", "mask_corruption": "partial",
                                  "corruption_strength": "", "init_from": ""}).validate()  # MLproject's "" = not given
    assert config.mask_budget == 100 and config.corruption_strength == 0.5 and config.init_from is None
    params = config.to_params()
    assert params["mask_budget"] == 100 and params["mask_corruption"] == "partial"


def test_training_sees_the_budget(tiny_config, digits):
    config = tiny_config(method="pas", mask_budget=10, mask_corruption="dilated").validate()
    data, n = training_data(config, digits)
    masks = data.split("train").masks
    assert n == 10 and int(annotated(masks).sum()) == 10
    assert training_data(tiny_config(method="baseline").validate(), digits) == (digits, None)


@pytest.mark.slow
def test_a_run_logs_the_annotated_count(tiny_config):
    class Params(Callbacks):
        logged: dict = {}

        def log_params(self, params):
            self.logged.update(params)

    seen = Params()
    run(tiny_config(method="pas", mask_budget=0.01), seen)
    assert seen.logged["annotated_images"] == 10
