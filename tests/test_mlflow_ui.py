"""The MLflow UI as a user first sees it, in headless Chromium with a fresh profile (no side chosen, no
columns picked, no clicks): the links `focusml train` prints open the run in the classic ML view and the
experiment's runs with the headline metrics as columns; after `focusml compare` the experiment's page
lists the runs best `acc/test` first and its description holds the comparison table."""

from __future__ import annotations

import re
import subprocess
import sys

import mlflow
import pytest
from mlflow.entities import Metric, Param

LOAD = 90_000  # ms: the UI's first load fetches its bundle, then the run


def _open(browser, url: str):
    """A fresh browser profile (nothing remembered of an earlier choice of side) on `url`."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(LOAD)
    page.goto(url)
    return ctx, page


def _metric_columns(page) -> list[str]:
    """The runs table's metric column headers, in order, once the table has them (the saved view applied);
    each must be on screen as the page opens: the element at its centre is the header itself (not the
    assistant panel over it, nor nothing where the table's overflow clips it)."""
    page.locator('[data-testid="sort-header-acc/test"]').first.wait_for()
    names = []
    for header in page.locator('[data-testid^="sort-header-"]').all():
        name = header.inner_text()
        if "/" not in name:
            continue
        box = header.bounding_box()
        hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest('[data-testid^=\"sort-header-\"]')"
                            "?.dataset.testid", [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
        assert hit == f"sort-header-{name}", (name, box, hit)
        names.append(name)
    return names


def _ml_side(page) -> bool:
    """Whether the sidebar is the ML one ("Model registry") rather than the GenAI one ("Observability", "Sessions")."""
    ml, genai = page.get_by_text("Model registry", exact=True), page.get_by_text("Observability", exact=True)
    ml.or_(genai).first.wait_for()
    return ml.count() > 0 and genai.count() == 0


@pytest.mark.browser
def test_the_link_focusml_train_prints_opens_the_run_in_the_ml_view(tracking_env, cli_env, tmp_path, make_folder,
                                                                   browser):
    root = make_folder(tmp_path / "data", {"train": 6, "val": 3, "test": 3}, {"train": 1, "val": 1, "test": 1})
    res = subprocess.run([sys.executable, "-m", "focusml", "train", "--dataset", "folder", "--data-root", str(root),
                          "--epochs", "1", "--batch-size", "16", "--no-log-model", "--experiment", "ui-link"],
                         env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    link = re.search(r"See it in the UI: open (\S+)", res.stderr).group(1)
    runs_link = re.search(r"Its experiment's runs, headline metrics first: open (\S+)", res.stderr).group(1)
    run_id = res.stdout.split("run_id: ")[1].split()[0]
    assert link.startswith(tracking_env) and run_id in link and "workflowType=machine_learning" in link
    ctx, page = _open(browser, link)
    try:
        page.get_by_text("baseline-folder-s0", exact=True).first.wait_for()  # the run's page, named
        assert _ml_side(page), page.inner_text("body")[:500]
    finally:
        ctx.close()
    # the experiment's runs: the table has the headline metrics as columns, the run's values in them
    assert runs_link.endswith("/runs?workflowType=machine_learning&viewStateShareKey=focusml"), runs_link
    ctx, page = _open(browser, runs_link)
    try:
        assert _metric_columns(page) == ["acc/test", "acc/val_cf", "flip/test"]
        assert _ml_side(page) and page.get_by_text("baseline-folder-s0", exact=True).count()
    finally:
        ctx.close()
    # without the saved view a fresh browser shows no metric column: what the view is for
    ctx, page = _open(browser, runs_link.split("&viewStateShareKey")[0])
    try:
        page.get_by_text("baseline-folder-s0", exact=True).first.wait_for()
        assert not page.locator('[data-testid="sort-header-acc/test"]').count()
    finally:
        ctx.close()
    # what the link avoids: the run's short route opens a fresh browser on the GenAI side
    ctx, page = _open(browser, f"{tracking_env}/#/runs/{run_id}")
    try:
        assert not _ml_side(page)
    finally:
        ctx.close()


@pytest.mark.browser
def test_after_focusml_compare_the_experiment_page_shows_the_comparison(tracking_env, tmp_path, capsys, browser):
    from focusml.cli import main

    client = mlflow.MlflowClient()
    eid = client.create_experiment("ui-compare")
    client.set_experiment_tag(eid, "mlflow.note.content", "Notes by hand.")
    runs = {}
    for method, acc in (("pas", 0.95), ("baseline", 0.3), ("upper_bound", 0.9)):  # newest first would be wrong
        run = client.create_run(eid, tags={"focusml.method": method, "focusml.dataset": "decoy-digits"},
                                run_name=f"{method}-decoy-digits-s0")
        params = {"method": method, "dataset": "decoy-digits", "seed": 0, "data_seed": 0, "model": "small"}
        client.log_batch(run.info.run_id, metrics=[Metric("acc/test", acc, 0, 0), Metric("acc/test_cf", acc, 0, 0),
                                                           Metric("acc/val_cf", acc, 0, 0), Metric("flip/test", 1 - acc, 0, 0)],
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(run.info.run_id)
        runs[method] = run.info.run_id
    main(["compare", "--experiment", "ui-compare", "--out", str(tmp_path / "rep")])
    link = re.search(r"in the experiment's description: open (\S+)", capsys.readouterr().err).group(1)
    assert link == f"{tracking_env}/#/experiments/{eid}/runs?workflowType=machine_learning&viewStateShareKey=focusml"
    ctx, page = _open(browser, link)
    try:
        assert _metric_columns(page) == ["acc/test", "acc/val_cf", "flip/test"]
        names = re.findall(r"(\w+)-decoy-digits-s0", " ".join(page.locator('[role="row"]').all_inner_texts()))
        assert names == ["pas", "upper_bound", "baseline"], names  # best acc/test first, before any click
        page.get_by_text("Notes by hand.").first.wait_for()  # the user's text first, as written
        page.locator('[data-component-id="mlflow.experiment.metadata_editor.expand_button"]').click()
        page.get_by_text("gap closed (paired)").first.wait_for()  # the table, once the description is expanded
        body = page.inner_text("body")
        assert re.search(r"pas\s+0\.950\s+108%", body), body[:2000]
        assert "best where the shortcut is broken: on decoy-digits pas" in body
        href = page.get_by_role("link", name="s0").nth(2).get_attribute("href")  # the pas row's run
        assert href == f"#/experiments/{eid}/runs/{runs['pas']}?workflowType=machine_learning"
        chart = page.locator("img[src*='get-artifact?path=comparison%2Fcomparison.png']")  # the alt is sanitised away
        chart.wait_for()
        assert page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
        assert _ml_side(page)
    finally:
        ctx.close()
