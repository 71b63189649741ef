"""The filter explorer: shares in the mask, the planted decoy filter, matching, the report, the CLI."""

from __future__ import annotations

import copy
import json
import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focusml.core.cam import upsample
from focusml.core.data import Split
from focusml.analysis.filters import Report, analyse, match_filters, receptive_field, write_report
from focusml.analysis.filters.report import filter_figure, shares_figure
from focusml.core.models import small_cnn
from focusml.tracking.predict import model_uri
from helpers import run_cli

N, S = 96, 28


def _decoy_split(seed: int = 0) -> Split:
    """Thin random strokes (the class: horizontal vs vertical) and a solid 4×4 decoy in a corner.

    The decoy sits in the corner that follows the class (a shortcut), aligned with the 4×4
    footprint of a feature cell; the mask marks it. Strokes are 1 px wide, so no 3×3 window
    of a stroke is as bright as the decoy's.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(N, 1, S, S, dtype=torch.uint8)
    masks = torch.zeros(N, S, S, dtype=torch.uint8)
    labels = torch.arange(N) % 2
    for i in range(N):
        for _ in range(3):
            a, b, length = (int(v) for v in torch.randint(5, 23, (3,), generator=g))
            if labels[i] == 0:
                images[i, 0, a, b - 4:b - 4 + length // 2 + 4] = 255
            else:
                images[i, 0, a - 4:a - 4 + length // 2 + 4, b] = 255
        corner = [(0, 0), (S - 4, S - 4)][int(labels[i])]
        images[i, 0, corner[0]:corner[0] + 4, corner[1]:corner[1] + 4] = 255
        masks[i, corner[0]:corner[0] + 4, corner[1]:corner[1] + 4] = 1
    return Split(images, masks, labels)


def _trained(split: Split, steps: int = 20):
    torch.manual_seed(0)
    model = small_cnn(1, 2, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % N
        x, _, y = split.batch(idx)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(), loss.backward(), opt.step()
    return model.eval()


@torch.no_grad()
def _plant(model, k: int = 0):
    """Make last-layer filter k a decoy detector: conv1 filter k fires only where a 3×3 window is
    (nearly) all bright, conv2 and conv3 filter k pass channel k on, and nothing else reads it."""
    c1, c2, c3 = (m for m in model.features if isinstance(m, torch.nn.Conv2d))
    c1.weight[k] = 1 / 9
    c1.bias[k] = -0.8
    for conv in (c2, c3):
        conv.weight[:, k] = 0
        conv.weight[k] = 0
        conv.weight[k, k, 1, 1] = 1
        conv.bias[k] = 0
    return model


@pytest.fixture(scope="module")
def planted():
    """The decoy split and a tiny model trained on it whose last-layer filter 5 is a planted decoy detector."""
    split = _decoy_split()
    return split, _plant(_trained(split), k=5)


def test_receptive_field_of_small_cnn():
    # conv3 → 3 px; pool2 → 4 px, jump 2; conv3 → 8 px; pool2 → 10 px, jump 4; conv3 → 18 px.
    # cell 0's centre: 0 → 0.5 after the first pooling → 1.5 after the second.
    assert receptive_field(small_cnn(1, 2).features) == ((18.0, 18.0), (4.0, 4.0), (1.5, 1.5))


def test_share_equals_mass_of_upsampled_activation_in_mask():
    torch.manual_seed(1)
    model = small_cnn(1, 3).eval()
    split = Split((torch.rand(10, 1, S, S) * 255).to(torch.uint8), torch.zeros(10, S, S, dtype=torch.uint8),
                  torch.arange(10) % 3)
    split.masks[:, 3:9, 20:27] = 1
    split.masks[4] = 0  # an unannotated image does not count
    got = {f.filter: f.share_in_mask for f in analyse(model, split, top=2).filters}
    x, m, _ = split.batch(torch.arange(10))
    with torch.no_grad():
        a = model.features(x)
    keep = m.flatten(1).sum(1) > 0
    up = torch.stack([upsample(a[:, k], (S, S)) for k in range(a.shape[1])], 1)[keep]
    want = (up * m[keep, None]).sum((0, 2, 3)) / up.sum((0, 2, 3)).clamp_min(1e-12)
    assert max(abs(got[k] - float(want[k])) for k in range(a.shape[1])) < 1e-5


def test_planted_decoy_filter_ranks_first(planted):
    split, model = planted
    res = analyse(model, split, top=4)
    shares = [f.share_in_mask for f in res.filters]
    assert all(0.0 <= s <= 1.0 for s in shares)
    assert res.filters[0].filter == 5
    assert res.filters[0].share_in_mask > 0.7  # 0.77 for a decoy aligned with one feature cell
    assert res.area_share == pytest.approx(16 / S**2)
    assert res.filters[0].lift > 10
    # its top crops are the decoy corners, and lie inside the image
    for c in res.filters[0].top:
        y0, x0, y1, x1 = c.box
        assert 0 <= y0 <= y1 < S and 0 <= x0 <= x1 < S
        assert split.masks[c.index, y0:y1 + 1, x0:x1 + 1].sum() == 16
    # ranked by share, weak filters last
    strong = [f.share_in_mask for f in res.filters if not f.weak]
    assert strong == sorted(strong, reverse=True)


def test_compare_pairs_filters_by_index_and_by_activation(planted, tmp_path):
    split, before = planted
    # "refinement": the decoy detector is switched off, and the last layer's filters are permuted
    after = copy.deepcopy(before)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c3 = after.features[6]
        c3.weight.copy_(c3.weight[perm]), c3.bias.copy_(c3.bias[perm])
        after.classifier.weight.copy_(after.classifier.weight[:, perm])
    index = torch.arange(N)
    partner, corr = match_filters(before, after, split, index, "activation")
    inv = torch.argsort(perm).numpy()
    live = [f.filter for f in analyse(before, split).filters if f.mean_activation > 0]
    assert (partner[live] == inv[live]).all()
    assert np.allclose(corr[live], 1.0, atol=1e-6)
    with torch.no_grad():
        after.features[0].bias[5] = -100.0  # the planted detector never fires after refinement
    partner_i, _ = match_filters(before, after, split, index, "index")
    assert (partner_i == np.arange(16)).all()

    a, b = analyse(before, split), analyse(after, split)
    partner, corr = match_filters(before, after, split, index, "activation")
    report = Report("r1", "baseline", "train", ["h", "v"], a, compare=b, compare_run_id="r2", compare_title="refined",
                    partner=partner, correlation=corr, match="activation")
    out = write_report(report, split, tmp_path / "rep", figures=3, top=4)
    rows = json.loads((out / "filters.json").read_text())["filters"]
    assert rows[0]["filter"] == 5 and rows[0]["share_in_mask"] > 0.7
    assert rows[0]["compare_share_in_mask"] == 0.0  # the refined model's partner no longer fires in the mask
    assert all(0 <= r[k] <= 1 for r in rows for k in ("share_in_mask", "compare_share_in_mask"))
    html = (out / "index.html").read_text()
    assert "refined" in html and "figures/filter_005.png" in html
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        ["shares.png"] + [f"filter_{r['filter']:03d}.png" for r in rows[:3]])


def test_filters_cli_end_to_end(tracking_env, tmp_path, capsys, monkeypatch, tiny_config):
    from focusml.tracking import load_run_model, run

    monkeypatch.chdir(tmp_path)
    result = run(tiny_config(log_model=True, experiment="filters-test"))
    rid = result.run_id
    out = tmp_path / "report"
    code, stdout, stderr = run_cli(["filters", rid, "--compare", rid, "--out", str(out), "--max-images", "150",
                                 "--figures", "2", "--top", "3"], capsys)
    assert code == 0, stderr
    assert "share_in_mask" in stdout and f"filters/compare_{rid}" in stdout
    data = json.loads((out / "filters.json").read_text())
    assert data["n_images"] == 150 and data["match"] == "activation"
    rows = data["filters"]
    assert len(rows) == 64
    assert all(0 <= r["share_in_mask"] <= 1 for r in rows)
    for r in rows:  # compared with itself: every live filter pairs with itself at the same share
        if not r["weak"]:
            assert r["compare_filter"] == r["filter"] and r["compare_share_in_mask"] == pytest.approx(r["share_in_mask"])
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(rid, f"filters/compare_{rid}")}
    assert f"filters/compare_{rid}/index.html" in logged and f"filters/compare_{rid}/filters.json" in logged

    # the logged MLflow model (a models-from-code pyfunc holding the network) and the checkpoint give
    # the same network (load_run_model reads the checkpoint's weights only)
    a = mlflow.pyfunc.load_model(model_uri(rid)).unwrap_python_model().network.state_dict()
    b = load_run_model(rid).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    code, _, stderr = run_cli(["filters", "0" * 32], capsys)
    assert code == 2 and "not found" in stderr


@pytest.mark.browser
def test_filters_report_fits_1400_px_and_its_charts_have_axis_labels(planted, tmp_path):
    import os
    import shutil

    playwright = pytest.importorskip("playwright.sync_api", reason="browser tests need the `playwright` package")
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if exe is None:
        pytest.skip("browser tests need Debian's `chromium` package (apt-get install chromium)")
    split, model = planted
    a = analyse(model, split)
    partner, corr = match_filters(model, model, split, torch.arange(N), "activation")
    report = Report("r1", "baseline", "train", ["h", "v"], a, compare=a, compare_run_id="r2", compare_title="refined",
                    partner=partner, correlation=corr, match="activation")
    fig = filter_figure([("", a.filters[0])], split, ["h", "v"], top=4)
    assert fig.axes[0].get_ylabel() == "classifier weight" and fig.axes[0].get_xlabel() == "class"
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in shares_figure(report).axes)
    out = write_report(report, split, tmp_path / "rep", figures=3, top=6)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto((out / "index.html").as_uri())
        page.wait_for_load_state("load")
        width = page.evaluate("document.documentElement.scrollWidth")
        browser.close()
    assert width <= 1400, f"the report is {width} px wide"
