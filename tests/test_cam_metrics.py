"""CAM equals the manual sum Σ_k w_ck A_k; WR and CAM-in-mask against hand-computed values."""

import math

import torch

from focusml.core.cam import cam_from_features, cam_in_mask, class_cam, mask_to_grid, minmax, upsample, wrong_reason
from focusml.core.models import small_cnn


def test_cam_equals_manual_weighted_sum():
    torch.manual_seed(0)
    model = small_cnn(1, 10).eval()
    x = torch.rand(3, 1, 28, 28)
    a, logits = model.forward_features(x)
    w = model.classifier.weight
    manual = torch.zeros(3, 10, *a.shape[-2:])
    for n in range(3):
        for c in range(10):
            for k in range(a.shape[1]):
                manual[n, c] += w[c, k] * a[n, k]
    assert torch.allclose(cam_from_features(a, w), manual, atol=1e-5)
    # GAP of the CAM plus the bias gives back the logits.
    assert torch.allclose(manual.mean((2, 3)) + model.classifier.bias, logits, atol=1e-5)
    cams, _ = class_cam(model, x, torch.tensor([1, 2, 3]))
    assert torch.allclose(cams, manual[torch.arange(3), torch.tensor([1, 2, 3])], atol=1e-5)


def test_features_end_after_relu():
    a, _ = small_cnn(1, 10).forward_features(torch.randn(2, 1, 28, 28))
    assert (a >= 0).all()


def test_mask_to_grid_marks_any_touched_cell():
    m = torch.zeros(1, 28, 28)
    m[0, 0:4, 0:4] = 1  # exactly the top-left 4×4 footprint
    m[0, 27, 27] = 1  # one pixel in the last cell
    g = mask_to_grid(m, (7, 7))
    assert g[0, 0, 0] == 1 and g[0, 6, 6] == 1 and g.sum() == 2


def test_wrong_reason_by_hand():
    # Two 2×2 images. Image 0: CAM peaks inside the mask; image 1: outside.
    cams = torch.tensor([[[4.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    # min-max: image 0 → [1,0,0,0], image 1 → [0,0,0,1]; mean over the set = 0.25;
    # binarised: image 0 top-left only, image 1 bottom-right only.
    # |bin ∩ m| / |m|: image 0 → 1/2, image 1 → 0/1.  WR = 100 · mean(0.5, 0) = 25.
    assert math.isclose(wrong_reason(cams, masks), 25.0)


def test_wrong_reason_ignores_unannotated_images():
    cams = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert math.isclose(wrong_reason(cams, masks), 100.0)
    assert math.isnan(wrong_reason(cams, torch.zeros_like(masks)))


def test_cam_in_mask_by_hand():
    cams = torch.tensor([[[3.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    # image 0: 3/4, image 1: 2/4 → mean 0.625
    assert math.isclose(cam_in_mask(cams, masks), 0.625)


def test_minmax_and_upsample_shapes():
    maps = torch.tensor([[[2.0, 4.0], [6.0, 10.0]]])
    n = minmax(maps)
    assert n.min() == 0 and n.max() == 1 and math.isclose(float(n[0, 0, 1]), 0.25)
    assert upsample(maps, (8, 8)).shape == (1, 8, 8)


def test_test_metrics_match_scikit_learn():
    """bacc/test, f1/test and the confusion matrix are computed without scikit-learn, to the same values."""
    import warnings

    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix as sk_confusion, f1_score

    from focusml.core.evaluate import balanced_accuracy, confusion_matrix, macro_f1

    rng = np.random.default_rng(0)
    for trial in range(200):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        if trial % 3 == 0:  # mostly right, some classes never predicted or never present
            p = np.where(rng.random(n) < 0.7, y, p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns about classes that are only predicted
            assert math.isclose(balanced_accuracy(y, p), balanced_accuracy_score(y, p))
            assert math.isclose(macro_f1(y, p), f1_score(y, p, average="macro"))
        assert (confusion_matrix(y, p, k) == sk_confusion(y, p, labels=list(range(k)))).all()
