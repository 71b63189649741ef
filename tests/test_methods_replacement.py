"""Replacement methods change only what METHODS.md says: masked pixels (random_crop, generative)
or masked activations of the chosen layers during training (selective_dropout)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from focusml import FocusmlError
from focusml.core.methods.generative import inpainter
from focusml.core.methods import Batch, PrepareContext, get
from focusml.core.models import small_cnn
from focusml.core.run import run as run_untracked
from focusml.core.train import layer_hooks


@pytest.fixture
def ctx_for(tiny_config):
    """`ctx_for(data, tmp_path, model=None, logged=None, progress=None)`: a PrepareContext for a method's `prepare`."""
    def make(data, tmp_path, model=None, logged=None, progress=None):
        return PrepareContext(data=data, config=tiny_config(), model=model or small_cnn(1, 10), cache_dir=tmp_path,
                              device=torch.device("cpu"),
                              log_artifact=(lambda p, a: logged.append((Path(p), a))) if logged is not None
                              else (lambda p, a: None),
                              progress=progress or (lambda d, i, n: None))
    return make


def train_batch(data, n=24, start=0):
    idx = torch.arange(start, start + n)
    x, m, y = data.split("train").batch(idx)
    return Batch(x, m, y, idx)


def test_random_crop_replaces_masked_pixels_with_another_training_images_pixels(digits, tmp_path, ctx_for):
    method = get("random_crop")({"p": 1.0})
    method.prepare(ctx_for(digits, tmp_path))
    batch = train_batch(digits)
    out = method.transform_batch(batch, torch.Generator().manual_seed(0))
    keep = (batch.m == 0)[:, None].expand_as(batch.x)
    assert torch.equal(out.x[keep], batch.x[keep])  # nothing outside the mask moves
    train = digits.split("train").images.float() / 255
    changed = 0
    for i in range(len(batch.y)):
        sel = batch.m[i] > 0
        got = out.x[i, 0][sel]
        matches = [j for j in range(len(train)) if torch.equal(train[j, 0][sel], got)]
        assert matches and any(j != int(batch.index[i]) for j in matches)  # pixels of some other image
        changed += int(not torch.equal(got, batch.x[i, 0][sel]))
    assert changed >= len(batch.y) // 2  # the decoy is gone from most images


def test_random_crop_probability_and_soft_masks(digits, tmp_path, ctx_for):
    batch = train_batch(digits, n=200)
    none = get("random_crop")({"p": 0.0})
    none.prepare(ctx_for(digits, tmp_path))
    assert torch.equal(none.transform_batch(batch, torch.Generator()).x, batch.x)
    half = get("random_crop")({"p": 0.5})
    half.prepare(ctx_for(digits, tmp_path))
    out = half.transform_batch(batch, torch.Generator().manual_seed(1))
    touched = (out.x != batch.x).flatten(1).any(1).float().mean()
    assert 0.3 < touched < 0.6  # about half (a few donors have the same pixels there)
    soft = batch.replace(m=batch.m * 0.25)
    full = get("random_crop")({"p": 1.0})
    full.prepare(ctx_for(digits, tmp_path))
    blended = full.transform_batch(soft, torch.Generator().manual_seed(2))
    swapped = full.transform_batch(batch, torch.Generator().manual_seed(2))
    m = batch.m[:, None]
    assert torch.allclose(blended.x, batch.x * (1 - 0.25 * m) + swapped.x * 0.25 * m, atol=1e-6)


def test_holes_for_the_inpainter_never_overlap_a_mask(digits):
    split = digits.split("train")
    own = split.masks[:300]
    holes = inpainter.random_holes(own, split.masks, torch.Generator().manual_seed(0))
    assert ((holes > 0) & (own > 0)).sum() == 0
    assert (holes.flatten(1).sum(1) > 0).float().mean() > 0.9


def test_builtin_inpainter_is_cached_by_fingerprint_and_logged(digits, tmp_path, monkeypatch, ctx_for):
    small = inpainter.InpainterSettings(steps=3, batch_size=8, width=8)
    monkeypatch.setattr("focusml.core.methods.generative.Generative.settings", small)
    logged, steps = [], []
    method = get("generative")({"p": 1.0})
    method.prepare(ctx_for(digits, tmp_path, logged=logged, progress=lambda d, i, n: steps.append((i, n))))
    assert steps == [(0, 3), (1, 3), (2, 3)]
    path, artifact = logged[0]
    assert artifact == "inpainter" and path.is_file() and digits.fingerprint in path.name
    batch = train_batch(digits)
    out = method.transform_batch(batch, torch.Generator().manual_seed(0))
    keep = (batch.m == 0)[:, None].expand_as(batch.x)
    assert torch.equal(out.x[keep], batch.x[keep])
    assert not torch.equal(out.x, batch.x)
    again, steps2 = get("generative")({"p": 1.0}), []
    again.prepare(ctx_for(digits, tmp_path, logged=[], progress=lambda d, i, n: steps2.append(i)))
    assert steps2 == []  # reused, not retrained
    assert torch.equal(again.transform_batch(batch, torch.Generator().manual_seed(0)).x, out.x)


def test_user_inpainter_module_callable(digits, tmp_path, monkeypatch, ctx_for):
    (tmp_path / "my_inpaint.py").write_text(textwrap.dedent("""
        import torch
        seen = []
        def grey(x_masked, m):
            seen.append((x_masked.clone(), m.clone()))
            return torch.full_like(x_masked, 0.5)
        class Const(torch.nn.Module):
            def forward(self, x_masked, m):
                return torch.full_like(x_masked, 0.25)
        def wrong_shape(x_masked, m):
            return x_masked[:, :, :2]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    batch = train_batch(digits)
    method = get("generative")({"p": 1.0, "inpainter": "my_inpaint:grey"})
    logged = []
    method.prepare(ctx_for(digits, tmp_path, logged=logged))
    assert logged == []  # nothing trained, nothing to log
    out = method.transform_batch(batch, torch.Generator())
    sel = (batch.m > 0)[:, None].expand_as(batch.x)
    assert torch.all(out.x[sel] == 0.5) and torch.equal(out.x[~sel], batch.x[~sel])
    x_masked, m = sys.modules["my_inpaint"].seen[-1]
    assert m.shape == (len(batch.y), 1, 28, 28) and torch.all(x_masked[m > 0] == 0)
    cls = get("generative")({"inpainter": "my_inpaint:Const", "p": 1.0})
    cls.prepare(ctx_for(digits, tmp_path))
    assert torch.all(cls.transform_batch(batch, torch.Generator()).x[sel] == 0.25)
    bad = get("generative")({"inpainter": "my_inpaint:wrong_shape", "p": 1.0})
    bad.prepare(ctx_for(digits, tmp_path))
    with pytest.raises(FocusmlError, match="shaped like"):
        bad.transform_batch(batch, torch.Generator())
    for spec in ("my_inpaint", "no_such_module_xyz:f", "my_inpaint:missing"):
        with pytest.raises(FocusmlError, match="--inpainter"):
            get("generative")({"inpainter": spec}).prepare(ctx_for(digits, tmp_path))


def _capture(model, name, store):
    module = dict(model.named_modules())[name]
    return module.register_forward_hook(lambda mod, inp, out: store.append(out.detach().clone()))


def test_selective_dropout_zeroes_exactly_the_masked_cells_of_the_chosen_layer(digits, tmp_path, ctx_for):
    torch.manual_seed(0)
    model = small_cnn(1, 10)
    batch = train_batch(digits, n=8)
    method = get("selective_dropout")({"p": 1.0, "layers": "features.1"})
    method.prepare(ctx_for(digits, tmp_path, model=model))
    b = method.transform_batch(batch, torch.Generator())
    plain, hooked = [], []
    h = _capture(model, "features.1", plain)
    model(b.x)
    h.remove()
    with layer_hooks(model, method.layer_hooks(b)):
        h = _capture(model, "features.1", hooked)
        model(b.x)
        h.remove()
    masked = (b.m > 0)[:, None].expand_as(plain[0])  # features.1 is at full resolution
    assert torch.all(hooked[0][masked] == 0) and plain[0][masked].abs().sum() > 0
    assert torch.equal(hooked[0][~masked], plain[0][~masked])
    assert not model._forward_hooks and not dict(model.named_modules())["features.1"]._forward_hooks


def test_selective_dropout_default_layers_input_and_last_block_training_only(digits, tmp_path, ctx_for):
    from focusml.core.evaluate import predict
    from focusml.core.data import Split

    torch.manual_seed(0)
    model = small_cnn(1, 10)
    method = get("selective_dropout")({"p": 1.0})
    method.prepare(ctx_for(digits, tmp_path, model=model))
    assert method.layers == ["input", "features.7"]
    batch = train_batch(digits, n=8)
    b = method.transform_batch(batch, torch.Generator())
    hooks = method.layer_hooks(b)
    x_in = hooks["input"](b.x)
    sel = (b.m > 0)[:, None]
    assert torch.all(x_in[sel] == 0) and torch.equal(x_in[~sel], b.x[~sel])
    with layer_hooks(model, hooks):
        a, _ = model.forward_features(x_in)
    cells = torch.nn.functional.adaptive_max_pool2d(b.m[:, None], a.shape[-2:]) > 0  # N×1×7×7
    assert torch.all(a * cells == 0)
    a_plain, _ = model.forward_features(x_in)  # same input, no hooks: only the masked cells differ
    assert torch.equal(a[~cells.expand_as(a)], a_plain[~cells.expand_as(a)])
    # evaluation: the model is untouched, CAMs inside the mask are live
    sub = Split(digits.split("train").images[:8], digits.split("train").masks[:8], digits.split("train").labels[:8])
    p = predict(model, sub, torch.device("cpu"))
    a_eval, _ = model.forward_features(batch.x)
    assert (a_eval * cells).abs().sum() > 0 and p.pos_cams.shape == (8, 28, 28)


def test_selective_dropout_probability_and_bad_layers(digits, tmp_path, ctx_for):
    batch = train_batch(digits, n=400)
    method = get("selective_dropout")({"p": 0.5})
    out = method.transform_batch(batch, torch.Generator().manual_seed(0))
    share = (out.m.flatten(1).sum(1) > 0).float().mean()
    assert 0.4 < share < 0.6
    assert method.layer_hooks(batch.replace(m=torch.zeros_like(batch.m))) == {}
    with pytest.raises(FocusmlError, match="does not have"):
        get("selective_dropout")({"layers": "input,conv9"}).prepare(ctx_for(digits, tmp_path))
    with pytest.raises(FocusmlError, match="empty"):
        get("selective_dropout")({"layers": " , "})


@pytest.fixture(scope="module")
def baseline_state(tiny_config):
    return run_untracked(tiny_config(method="baseline")).model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("name,opts", [("random_crop", {}), ("generative", {}), ("selective_dropout", {})])
def test_replacement_training_changes_the_model(name, opts, baseline_state, monkeypatch, tiny_config):
    """One short run per method: the model moves away from the baseline trained with the same seed."""
    monkeypatch.setattr("focusml.core.methods.generative.Generative.settings",
                        inpainter.InpainterSettings(steps=20, batch_size=16, width=8))
    result = run_untracked(tiny_config(method=name, method_params=opts))
    diff = max(float((result.model.state_dict()[k] - v).abs().max()) for k, v in baseline_state.items())
    assert diff > 1e-3
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())


def test_tracked_generative_run_logs_the_inpainter_and_the_mask_grid(tracking_env, monkeypatch, tiny_config):
    import mlflow

    from focusml.core.config import MaskAugment
    from focusml.tracking import run

    monkeypatch.setattr("focusml.core.methods.generative.Generative.settings",
                        inpainter.InpainterSettings(steps=5, batch_size=8, width=8))
    result = run(tiny_config(method="generative", experiment="test-generative", augment=MaskAugment(dilate=1, blur=1.0)))
    client = mlflow.MlflowClient()
    inp = [a.path for a in client.list_artifacts(result.run_id, "inpainter")]
    figs = [a.path for a in client.list_artifacts(result.run_id, "figures")]
    assert len(inp) == 1 and inp[0].endswith(".pt")
    assert "figures/mask_augmentation.png" in figs
    params = client.get_run(result.run_id).data.params
    assert params["p"] == "1.0" and params["dilate"] == "1"
