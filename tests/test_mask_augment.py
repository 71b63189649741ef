"""Each mask augmentation of METHODS.md does what it says on a hand-made mask."""

from __future__ import annotations

import torch

from focusml.core.config import MaskAugment
from focusml.core.data import masks as aug


def square(h=12, w=12, top=4, left=4, size=3, n=1):
    m = torch.zeros(n, h, w)
    m[:, top : top + size, left : left + size] = 1
    return m


def test_dilate_grows_by_exactly_the_given_pixels():
    m = square()
    out = aug.dilate(m, 1)
    assert torch.equal(out, square(top=3, left=3, size=5))
    assert torch.equal(aug.dilate(m, 0), m)


def test_jitter_shifts_within_range_and_keeps_shape():
    m = square(n=200)
    out = aug.jitter(m, 2, torch.Generator().manual_seed(0))
    offsets = set()
    for i in range(len(out)):
        ys, xs = torch.nonzero(out[i], as_tuple=True)
        assert out[i].sum() == 9  # a 3×3 square shifted inside the frame stays whole
        assert ys.max() - ys.min() == 2 and xs.max() - xs.min() == 2
        dy, dx = int(ys.min()) - 4, int(xs.min()) - 4
        assert abs(dy) <= 2 and abs(dx) <= 2
        offsets.add((dy, dx))
    assert len(offsets) == 25  # every shift in [−2, 2]² occurs
    # a mask at the border is cut, not wrapped around
    corner = square(top=0, left=0, size=2, n=50)
    moved = aug.jitter(corner, 3, torch.Generator().manual_seed(1))
    assert moved[:, -3:, :].sum() == 0 and moved[:, :, -3:].sum() == 0


def test_scale_changes_size_around_the_mask_centre():
    m = square(h=32, w=32, top=12, left=12, size=8, n=64)
    out = aug.scale(m, 0.5, torch.Generator().manual_seed(0))
    areas = out.flatten(1).sum(1)
    assert areas.min() < 64 * 0.7 and areas.max() > 64 * 1.4  # factors in [0.5, 1.5]: both shrink and growth
    assert areas.min() >= 64 * 0.25 * 0.6 and areas.max() <= 64 * 2.25 * 1.4
    ys = torch.arange(32.0)
    for i in range(len(out)):
        cy = (out[i].sum(1) * ys).sum() / out[i].sum()
        cx = (out[i].sum(0) * ys).sum() / out[i].sum()
        assert abs(cy - 15.5) <= 1.0 and abs(cx - 15.5) <= 1.0  # centre of mass stays put
    empty = torch.zeros(2, 8, 8)
    assert aug.scale(empty, 0.5, torch.Generator().manual_seed(0)).sum() == 0


def test_blur_gives_a_soft_mask_in_unit_range():
    m = square(h=20, w=20, top=6, left=6, size=8)
    out = aug.blur(m, 1.5)
    assert 0 <= out.min() and out.max() <= 1 and torch.isclose(out.max(), torch.tensor(1.0))
    assert out[0, 10, 10] > 0.9  # inside stays (nearly) fully irrelevant
    assert 0.05 < out[0, 5, 10] < 0.95  # edges become soft
    assert out[0, 19, 19] < 0.05 and out[0, 0, 0] < 0.05  # far away stays relevant
    sym = out[0]
    assert torch.allclose(sym, sym.T, atol=1e-6) and torch.allclose(sym, sym.flip(0).flip(1), atol=1e-6)


def test_blur_keeps_a_border_mask_fully_irrelevant_at_the_border():
    # a decoy in the image corner: the image edge must not dim the mask (no zero padding beyond it)
    m = square(h=28, w=28, top=0, left=0, size=4)
    out = aug.blur(m, 1.0)
    assert out[0, 0, 0] > 0.95 and out[0, 1, 1] > 0.95


def test_keep_fraction_zeroes_masks_of_a_fixed_share_of_images():
    index = torch.arange(4000)
    kept = aug.kept(index, 0.3, seed=0)
    assert abs(float(kept.float().mean()) - 0.3) < 0.03
    assert torch.equal(kept, aug.kept(index, 0.3, seed=0))  # fixed per image, not per batch
    assert not torch.equal(kept, aug.kept(index, 0.3, seed=1))
    assert aug.kept(index, 1.0, 0).all() and not aug.kept(index, 0.0, 0).any()
    m = square(n=len(index))
    out = aug.augment(m, index, MaskAugment(keep_fraction=0.3), torch.Generator(), seed=0)
    assert torch.equal(out.flatten(1).sum(1) > 0, kept)
    assert torch.equal(out[kept], m[kept])


def test_augment_is_identity_by_default_and_reproducible():
    m = square(n=8)
    idx = torch.arange(8)
    assert aug.augment(m, idx, MaskAugment(), torch.Generator()) is m
    cfg = MaskAugment(dilate=1, jitter=2, scale=0.3, blur=1.0, keep_fraction=0.5)
    a = aug.augment(m, idx, cfg, torch.Generator().manual_seed(3), seed=0)
    b = aug.augment(m, idx, cfg, torch.Generator().manual_seed(3), seed=0)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
