"""The background shortcut (a mask covering most of the image): the dataset, its decorrelated clean
twin, the counterfactual that keeps the object, and the grid mask that leaves the object's cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focusml.core import counterfactual
from focusml.core.cam import guarded, mask_to_grid, object_cells
from focusml.core.data import CLEAN_SPLITS, SPLITS, DataOptions, Split, load
from focusml.core.data.symbols import COLOURS

_cache: dict = {}


def dataset(name: str = "backgrounds"):
    if name not in _cache:
        _cache[name] = load(name, DataOptions(seed=0))
    return _cache[name]


def background_class(split) -> torch.Tensor:
    """The class whose hue the masked pixels show (the direction of their mean colour)."""
    m = split.masks.bool()[:, None]
    mean = (split.images.float() * m).sum((2, 3)) / m.sum((2, 3))
    hues = torch.nn.functional.normalize(torch.tensor(COLOURS, dtype=torch.float), dim=1)
    return (torch.nn.functional.normalize(mean, dim=1) @ hues.T).argmax(1)


def test_every_split_is_there_deterministic_and_the_mask_covers_most_of_the_image():
    data = dataset()
    assert set(data.splits) == set(SPLITS) | set(CLEAN_SPLITS)
    assert data.image_shape == (3, 28, 28)
    assert data.fingerprint == "61abe7911a30a055", "same seed, same bytes on every machine"
    for name, split in data.splits.items():
        covered = split.masks.float().mean((1, 2))
        assert 0.7 < float(covered.min()) and float(covered.max()) < 0.97, name


def test_the_background_follows_the_label_in_train_and_val_but_not_in_test_nor_the_clean_twin():
    data = dataset()
    k = data.num_classes
    for name in ("train", "val", "test_confounded"):
        assert torch.equal(background_class(data.split(name)), data.split(name).labels), name
    for name in ("test", "train_clean", "val_clean", "test_clean"):
        agree = float((background_class(data.split(name)) == data.split(name).labels).float().mean())
        assert abs(agree - 1 / k) < 0.08, name  # decorrelated, not removed
    # the clean twin holds the same objects: every unmasked pixel is the same
    for name in ("train", "val", "test"):
        split, clean = data.split(name), data.split(f"{name}_clean")
        assert torch.equal(split.masks, clean.masks) and torch.equal(split.labels, clean.labels)
        keep = ~split.masks.bool()[:, None].expand_as(split.images)
        assert torch.equal(split.images[keep], clean.images[keep])


def test_counterfactuals_keep_the_object_and_show_only_the_donors_background():
    split = dataset().split("val")
    cf = counterfactual.build(split)
    keep = ~split.masks.bool()[:, None].expand_as(split.images)
    assert torch.equal(cf.split.images[keep], split.images[keep])
    shown = background_class(Split(cf.split.images, split.masks, split.labels))
    assert torch.equal(shown, split.labels[cf.donors]), "the background is the donor's"
    # The union construction pastes the donor's object over the background: the image's own object
    # loses pixels to the donor's background.
    union = counterfactual.build(split, construction="union").split.images
    assert not torch.equal(union[keep], split.images[keep])


@pytest.mark.slow  # generates four datasets
@pytest.mark.parametrize("name", ["decoy-digits", "symbols", "xray-tokens", "sketches"])
def test_small_masks_keep_their_grown_grid_mask(name):
    m = dataset(name).split("train").masks.float()
    for cells in (0, 1, 2):  # the auto margin on the 7×7 grid is at most 2
        assert torch.equal(mask_to_grid(m, (7, 7), cells), mask_to_grid(m, (7, 7), cells, keep_object=False))


def test_a_background_mask_leaves_the_objects_cells():
    m = dataset().split("train").masks.float()
    free = object_cells(m, (7, 7))
    assert float(guarded(mask_to_grid(m, (7, 7), 2, keep_object=False)[:, None], free).float().mean()) > 0.95
    grid = mask_to_grid(m, (7, 7), 2)[:, None]
    assert not guarded(grid, free).any()
    assert ((grid * free).flatten(1).sum(1) <= 0.5 * free.flatten(1).sum(1)).all()
    assert (free.flatten(1).sum(1) > 0).all(), "every object keeps cells of its own"


def test_the_margin_shrinks_until_it_fits():
    m = torch.zeros(1, 28, 28)
    m[0, :, :12] = 1  # a band over the left three columns of cells: 28 of 49 cells stay free
    grown = mask_to_grid(m, (7, 7), 3)
    # Of the 4 free columns of cells, a margin of 3 would take 3 (more than half); 2 takes half: it fits.
    assert torch.equal(grown, mask_to_grid(m, (7, 7), 2, keep_object=False))
    assert not np.array_equal(grown.numpy(), mask_to_grid(m, (7, 7), 3, keep_object=False).numpy())


def _batch(name: str, n: int = 16):
    from focusml.core.methods import Batch

    x, m, y = dataset(name).split("train").batch(torch.arange(n))
    return Batch(x, m, y, torch.arange(n))


def _model(channels: int):
    from focusml.core.config import RunConfig
    from focusml.core.models import build_model

    torch.manual_seed(0)
    return build_model(RunConfig().model, channels, 5, 28)


def test_on_a_background_the_evidence_is_measured_by_swapping_it_and_splits_the_logits_exactly():
    from focusml.core.methods import METHODS
    from focusml.core.methods.base import swapped_evidence

    batch, model = _batch("backgrounds"), _model(3)
    features, logits = model.forward_features(batch.x)
    inside, outside = swapped_evidence(model, batch.x, batch.m, logits)
    z = logits - model.classifier.bias
    assert torch.allclose(inside + outside, z - z.mean(1, keepdim=True), atol=1e-5)
    pas = METHODS["pas"]()
    got, _ = pas.evidence(model, batch, features, logits)
    assert torch.allclose(got, inside, atol=1e-6), "every mask here is large: all swapped"
    pen = pas.penalty(model, batch, features, logits)
    pen.backward()
    assert pen.item() > 0 and model.features[0].weight.grad.abs().sum() > 0
    cells, _ = METHODS["pas"]({"object_guard": "off"}).evidence(model, batch, features, logits)
    assert not torch.allclose(cells, inside), "off: the cells' split, as before"


@pytest.mark.slow  # generates symbols
def test_on_small_masks_the_evidence_is_the_cells_as_before():
    from focusml.core.cam import region_evidence
    from focusml.core.methods import METHODS

    batch, model = _batch("symbols"), _model(3)
    features, logits = model.forward_features(batch.x)
    pas = METHODS["pas"]()
    got, _ = pas.evidence(model, batch, features, logits)
    want, _ = region_evidence(features, model.classifier.weight, batch.m, pas.cells(model, features), keep_object=False)
    assert torch.equal(got, want)
