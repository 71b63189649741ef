"""The counterfactual construction and the evidence decomposition, on hand-made tensors."""

import math

import torch

from focusml.core import counterfactual
from focusml.core.cam import evidence_in_mask, evidence_share, region_evidence
from focusml.core.data import Split


def _split(masks, labels, values):
    images = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return Split(images, torch.tensor(masks, dtype=torch.uint8), torch.tensor(labels))


def test_donors_come_from_another_class_and_prefer_annotated_images():
    labels = torch.tensor([0, 0, 1, 1, 2])
    masks = torch.zeros(5, 2, 2, dtype=torch.uint8)
    masks[[0, 2, 3], 0, 0] = 1  # row 4 (class 2) and row 1 are not annotated
    d = counterfactual.donors(labels, masks)
    assert all(labels[d[i]] != labels[i] for i in range(5))
    assert d[0] in (2, 3) and d[1] in (2, 3) and d[4] in (0, 2, 3)  # annotated donors only
    assert torch.equal(d, counterfactual.donors(labels, masks))  # fixed seed


def test_single_class_has_no_donor():
    d = counterfactual.donors(torch.tensor([1, 1]), torch.ones(2, 2, 2, dtype=torch.uint8))
    assert d.tolist() == [-1, -1]


def test_counterfactual_pastes_the_union_of_both_masks_from_the_donor():
    m = torch.zeros(2, 2, 2, dtype=torch.uint8)
    m[0, 0, 0] = 1  # image 0: its shortcut at (0,0)
    m[1, 1, 1] = 1  # image 1: its shortcut at (1,1)
    split = Split(torch.tensor([[[[10, 11], [12, 13]]], [[[200, 201], [202, 203]]]], dtype=torch.uint8), m,
                  torch.tensor([0, 1]))
    cf = counterfactual.build(split)
    assert cf.donors.tolist() == [1, 0]
    # u = max(m, m_d) = both corners: both come from the donor, the rest is untouched.
    assert cf.split.images[0, 0].tolist() == [[200, 11], [12, 203]]
    assert cf.split.images[1, 0].tolist() == [[10, 201], [202, 13]]
    assert cf.valid.tolist() == [True, True]
    assert torch.equal(cf.split.labels, split.labels) and torch.equal(cf.split.masks, split.masks)


def test_a_background_mask_keeps_the_object_and_takes_only_the_donors_background():
    # 6×6 images: the object (value 250 / 240) is a 2×2 block, the mask (8/9 of the image) everything else.
    images = torch.zeros(2, 1, 6, 6, dtype=torch.uint8)
    masks = torch.ones(2, 6, 6, dtype=torch.uint8)
    images[0, 0], images[1, 0] = 10, 100  # backgrounds: class 0 dark, class 1 bright
    images[0, 0, 1:3, 1:3], masks[0, 1:3, 1:3] = 250, 0  # image 0's object top left
    images[1, 0, 3:5, 3:5], masks[1, 3:5, 3:5] = 240, 0  # image 1's object bottom right
    split = Split(images, masks, torch.tensor([0, 1]))
    x0 = counterfactual.build(split).split.images[0, 0]
    assert (x0[1:3, 1:3] == 250).all()  # its own object, untouched
    assert (x0[masks[0].bool()] == 100).all()  # the donor's background everywhere else, never its object (240)
    union = counterfactual.build(split, construction="union").split.images[0, 0]
    assert (union[1:3, 1:3] == 100).all() and (union[3:5, 3:5] == 240).all()  # what the union does


def test_the_fill_is_smooth_and_keeps_known_pixels():
    img = torch.zeros(1, 1, 8, 8)
    img[..., :4] = 200.0  # left half bright, right half dark
    known = torch.ones(1, 1, 8, 8)
    known[..., 2:6, 2:6] = 0  # a hole across the edge
    out = counterfactual.fill(img, known)
    assert torch.equal(out[known.bool()], img[known.bool()])
    hole = out[0, 0, 2:6, 2:6]
    assert (hole[:, 0] > hole[:, -1]).all() and float(hole.min()) >= 0 and float(hole.max()) <= 200


def test_soft_masks_blend_and_unannotated_pairs_are_left_out():
    split = _split(masks=[[[0, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], labels=[0, 1, 1], values=[0, 100, 100])
    assert counterfactual.build(split).valid.tolist() == [False, False, False]
    soft = Split(split.images[:2], torch.tensor([[[0, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.uint8), split.labels[:2])
    soft.masks = torch.tensor([[[0.5, 0], [0, 0]], [[0, 0], [0, 0]]])  # a soft mask of 0.5 at (0,0)
    cf = counterfactual.build(soft)
    assert cf.split.images[0, 0, 0, 0] == 50 and cf.split.images[0, 0, 1, 1] == 0
    assert cf.split.images[1, 0, 0, 0] == 50  # x·0.5 + x_d·0.5 = 100·0.5 + 0·0.5


def test_metrics_count_valid_rows_only():
    out = counterfactual.metrics(labels=[0, 1, 2, 3], preds=[0, 1, 2, 0], preds_cf=[0, 2, 2, 1],
                                 valid=[True, True, False, True])
    assert out == {"acc_cf": 1 / 3, "flip": 2 / 3}
    none = counterfactual.metrics([0], [0], [0], [False])
    assert math.isnan(none["acc_cf"]) and math.isnan(none["flip"])


def test_region_evidence_decomposes_logits_exactly():
    torch.manual_seed(0)
    a = torch.rand(3, 4, 2, 2)
    w = torch.randn(5, 4)
    masks = torch.zeros(3, 4, 4)
    masks[:, :2, :2] = 1  # the top-left cell of the 2×2 grid
    inside, outside = region_evidence(a, w, masks)
    z = a.mean((2, 3)) @ w.T
    assert torch.allclose(inside + outside, z - z.mean(1, keepdim=True), atol=1e-6)
    cam_cell = torch.einsum("ck,nk->nc", w, a[:, :, 0, 0]) / 4
    assert torch.allclose(inside, cam_cell - cam_cell.mean(1, keepdim=True), atol=1e-6)


def test_evidence_share_sees_negative_evidence_and_ignores_a_common_shift():
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 0, 0] = 4.0  # one feature fires only in the masked cell
    m = torch.zeros(1, 4, 4)
    m[0, :2, :2] = 1
    # The masked cell speaks *against* class 1 only: the positive CAM of class 0 sees nothing there.
    inside, outside = region_evidence(a, torch.tensor([[0.0], [-1.0]]), m)
    assert torch.allclose(inside, torch.tensor([[0.5, -0.5]]))
    assert evidence_share(inside, outside).item() == 1.0
    # The same feature adding equally to every logit changes no prediction: no evidence.
    inside, outside = region_evidence(a, torch.tensor([[1.0], [1.0]]), m)
    assert evidence_share(inside, outside).item() == 0.0
    # Half inside, half outside.
    a[0, 0, 1, 1] = 4.0
    inside, outside = region_evidence(a, torch.tensor([[1.0], [-1.0]]), m)
    assert evidence_share(inside, outside).item() == 0.5
    assert evidence_in_mask(evidence_share(inside, outside), m) == 0.5
    assert math.isnan(evidence_in_mask(torch.tensor([0.3]), torch.zeros(1, 4, 4)))


def test_only_annotated_images_count_even_when_their_donor_has_a_mask():
    # 1 of 4 images annotated (a folder dataset with few masks): the other three get the annotated donor's
    # region pasted, but they keep their own unmarked shortcut, so they are left out of the metrics.
    masks = torch.zeros(4, 2, 2, dtype=torch.uint8)
    masks[2, 0, 0] = 1
    split = _split(masks=masks.tolist(), labels=[0, 0, 1, 1], values=[0, 10, 100, 110])
    cf = counterfactual.build(split)
    assert cf.donors[0] == 2 and cf.split.images[0, 0, 0, 0] == 100  # pasted all the same
    assert cf.valid.tolist() == [False, False, True, False]


def test_background_source_takes_the_donors_texture_never_its_object_nor_its_rim():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 28, 28) * 100  # a textured background, values below 100
    masks = torch.ones(1, 28, 28)
    images[..., 10:18, 10:18] = 250.0  # the object
    masks[:, 10:18, 10:18] = 0
    images[..., 9, 9:19] = 175.0  # its blurred rim: marked as background, but half object
    out = counterfactual.background_source(images, masks)
    assert float(out.max()) < 100, "neither the object nor its rim is taken as background"
    keep = (masks > 0)[:, None].expand_as(images).clone()
    keep[..., 8:20, 8:20] = False  # away from the object, the background is its own
    assert torch.equal(out[keep], images[keep])
    assert float(out[..., 10:18, 10:18].std()) > 10, "the hole gets texture, not a flat colour"


def test_the_objects_rim_is_unmixed_onto_the_donors_background():
    # A 1-px rim that is half object (200) and half the image's own red background; the donor's is blue.
    x = torch.zeros(1, 3, 28, 28)
    x[:, 0] = 100.0  # red background
    x[..., 10:18, 10:18] = 200.0  # the grey object
    x[..., 9, 10:18] = torch.tensor([150.0, 100.0, 100.0]).view(3, 1)  # rim: ½ grey, ½ red
    m = torch.ones(1, 28, 28)
    m[:, 10:18, 10:18] = 0
    donor = torch.zeros(1, 3, 28, 28)
    donor[:, 2] = 100.0  # blue background, no object
    out = counterfactual.swap_background(x, m, counterfactual.background_source(donor, torch.ones(1, 28, 28)))
    assert torch.equal(out[..., 10:18, 10:18], x[..., 10:18, 10:18])  # the object untouched
    assert torch.allclose(out[0, :, 9, 12], torch.tensor([100.0, 100.0, 150.0]), atol=2)  # ½ grey, ½ blue
    assert torch.allclose(out[0, :, 2, 2], torch.tensor([0.0, 0.0, 100.0]))  # background: the donor's
