"""The docs hold together: every relative link in the README and docs/ resolves, the README stays short."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    body = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", body, flags=re.M)}


def _links(page: Path) -> list[str]:
    body = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not a link
    return [t for t in LINK.findall(body) if not re.match(r"[a-z]+:", t)]  # http:, mailto: ... are not checked


def test_there_are_docs():
    assert len(PAGES) >= 9 and all(p.is_file() for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_short_front_door():
    size = len((REPO / "README.md").read_bytes())
    assert size <= 16 * 1024, f"README.md is {size} bytes; move detail into docs/ (limit 16 KB)"
    assert "METHODS.md" not in (REPO / "README.md").read_text(encoding="utf-8")  # the contract is docs/methods.md


# -- facts the docs quote from files, checked against the files ------------------------------------------


def _space(name: str, space) -> str:
    """A study file's search space as docs/tuning.md writes it: `λ ∈ [0.001, 10] (log)`, `dilate ∈ {0, 1, 2}`."""
    shown = "λ" if name == "lam" else name
    if isinstance(space, list):
        space = {"type": "categorical", "choices": space}
    if space["type"] == "categorical":
        return f"{shown} ∈ {{{', '.join(str(c) for c in space['choices'])}}}"
    if space["type"] == "int" and not space.get("log"):
        return f"{shown} ∈ {{{', '.join(str(v) for v in range(space['low'], space['high'] + 1, space.get('step', 1)))}}}"
    return f"{shown} ∈ [{space['low']:g}, {space['high']:g}]" + (" (log)" if space.get("log") else "")


def _studies() -> dict[str, dict]:
    import yaml

    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "studies").glob("*.yaml"))}


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_tuning_md_quotes_every_shipped_studys_search_space_and_settings_as_the_files_have_them():
    page = (REPO / "docs" / "tuning.md").read_text(encoding="utf-8")
    studies = _studies()
    assert studies, "no studies/*.yaml"
    for name, study in studies.items():
        searches = ", ".join(_space(k, v) for k, v in study["search"].items())
        objective = ", ".join(f"{o['direction']} `{o['metric']}`" for o in study["objectives"])
        row = f"| `studies/{name}` | `{study['method']}` on `{study['dataset']}` | {searches} | {objective} |"
        assert row in page, f"docs/tuning.md should have the row\n{row}"
    (epochs,) = {s["fixed"]["epochs"] for s in studies.values()}
    (trials,) = {s["n_trials"] for s in studies.values()}
    (startup,) = {s["sampler"]["n_startup_trials"] for s in studies.values()}
    (warmup,) = {s["pruner"]["n_warmup_steps"] for s in studies.values()}
    common = (f"All use {epochs} epochs, {trials} trials, TPE ({startup} random start-up trials), a median pruner "
              f"that judges a trial only after {warmup} of its {epochs} epochs")
    assert common in _flat(page)
    assert f"focusml tune studies/pas.yaml                                   # {trials} trials, optuna.db here" in page


def test_the_readme_quotes_no_test_counts_that_would_go_stale():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"\b\d+ (tests|passed)\b|\btests? \(\d+\)", readme), "the README names a test count"


def _section(page: str, heading: str) -> str:
    """The text under `heading` (a Markdown heading line) up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = page.index(heading + "\n")
    nxt = re.search(rf"^#{{1,{len(level)}}} ", page[start + len(heading):], flags=re.M)
    return page[start:start + len(heading) + nxt.start()] if nxt else page[start:]


def test_tuning_md_shows_studies_pas_yaml_as_the_file_is():
    import yaml

    page = (REPO / "docs" / "tuning.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(# studies/pas\.yaml, annotated.*?)```", page, flags=re.S)
    assert yaml.safe_load(block) == yaml.safe_load((REPO / "studies" / "pas.yaml").read_text())


def test_tuning_md_quotes_the_objectives_defaults_and_errors_as_the_code_has_them(monkeypatch):
    import copy

    import yaml

    from focusml import FocusmlError
    from focusml.cli.tune import tune
    from focusml.tune.recovery import MAX_RETRY
    from focusml.tune.spec import OBJECTIVES
    from focusml.tune.storage import heartbeat
    from focusml.tune.study_file import parse_spec

    page = _flat((REPO / "docs" / "tuning.md").read_text(encoding="utf-8"))
    allowed = ", ".join(f"`{metric}` ({direction})" for metric, direction in OBJECTIVES.items())
    assert f"| `objectives[].metric` | validation metrics only: {allowed} |" in page
    monkeypatch.delenv("FOCUSML_TUNE_HEARTBEAT_S", raising=False)
    interval, grace = heartbeat()
    assert grace == 3 * interval and f"(default {interval}; grace period three times that)" in page
    assert f"at most {MAX_RETRY} times" in page
    workers = next(p for p in tune.params if p.name == "workers")
    assert f"| `--workers K` | K worker processes on this machine, sharing the storage (default {workers.default}) |" in page
    # the three refusals the page shows, as `focusml tune bad.yaml` words them
    pas = yaml.safe_load((REPO / "studies" / "pas.yaml").read_text())
    bad = [copy.deepcopy(pas) for _ in range(3)]
    bad[0]["objectives"] = [{"metric": "acc/test", "direction": "maximize"}]
    bad[1].update(method="baseline", search={"lam": {"type": "float", "low": 0.01, "high": 10, "log": True}})
    del bad[1]["enqueue"]
    bad[2]["objectives"] = [{"metric": "acc/val_cf", "direction": "maximize"}, {"metric": "flip/val", "direction": "minimize"}]
    for data in bad:
        with pytest.raises(FocusmlError) as refused:
            parse_spec(data, source="bad.yaml")
        assert f"Error: {refused.value}" in page


def test_the_readme_quotes_durations_only_as_docs_benchmarks_md_measured_them():
    readme = _flat((REPO / "README.md").read_text(encoding="utf-8"))
    bench = _flat((REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8"))
    quoted = re.findall(r"(?:about )?\d+(?:\.\d+)? ?(?:min \d+ s|minutes|min|seconds|s|hours|h)\b", readme)
    assert quoted, "the README quotes no duration at all: this test has nothing left to check"
    assert [q for q in quoted if q not in bench] == [], "README durations not measured in docs/benchmarks.md"
    assert not re.search(r"a few minutes|under a minute", readme), "a duration no benchmark backs"


def test_the_readmes_results_table_is_the_benchmarks_matrix_rounded():
    """README's "Does it work?" cells: benchmarks.md's acc/test mean to 2 decimals and its gap closed, per method
    and dataset; a method the page never ran on a dataset is "—" in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    bench = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    tables = {name: _section(bench, f"#### {name}")
              for name in ("decoy-digits", "sketches", "symbols", "xray-tokens", "backgrounds")}
    tables["decoy-fashion"] = _section(bench, "## Real images: decoy-fashion")
    measured = {}
    for dataset, text in tables.items():
        # rows at the defaults only: an empty settings column (decoy-fashion's table has none)
        for row in re.findall(r"^\| (\w+) +\|(?: +\|)? \d+ +\| ([\d.]+)[^|]*\| (-?\d+%)", text, flags=re.M):
            measured[dataset, row[0]] = (float(row[1]), row[2].replace("-0%", "0%"))
    (table,) = [b for b in _section(readme, "## Does it work?").split("\n\n") if b.startswith("| method |")]
    lines = table.splitlines()
    datasets = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    checked = 0
    for line in lines[2:]:
        method, *cells = [c.strip().strip("*`") for c in line.strip("|").split("|")]
        for dataset, cell in zip(datasets, cells):
            if cell == "—":
                assert (dataset, method) not in measured, f"{method} on {dataset} was measured"
                continue
            acc, gap = measured[dataset, method]
            shown = re.fullmatch(r"(\d\.\d\d)(?: \((-?\d+%)\))?", cell.replace("−", "-"))  # − as typeset
            # the table's mean has 3 decimals, the README 2 of the unrounded mean: 0.905 may be 0.90 or 0.91
            assert shown and abs(float(shown[1]) - acc) <= 0.0055, (method, dataset, cell, acc)
            assert shown[2] == (None if method in ("baseline", "upper_bound") else gap), (method, dataset, cell, gap)
            checked += 1
    assert checked >= 40


def test_benchmarks_md_counts_agree_with_the_pytest_lines_it_quotes():
    """`(N tests …) … \\`F failed, P passed …\\``: N is what pytest reported, not a number typed beside it."""
    bench = _flat(_section((REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8"),
                           "## The demo and the test suite"))
    pairs = re.findall(r"\((\d+) tests\b.*?`((?:\d+ \w+, )*\d+ passed in [^`]*)`", bench)
    assert len(pairs) >= 2, "no test count beside a pytest line"
    for count, line in pairs:
        assert int(count) == sum(int(n) for n in re.findall(r"(\d+) (?:failed|passed|skipped|errors?)\b", line)), line


def test_the_readmes_demo_output_is_what_the_demo_prints(tracking_env):
    """README's `make demo` block as `focusml.cli.demo_summary` (the demo's last step) prints it: the heading
    line, the table's first columns, and the last line, whose link opens the runs in the ML view and in
    focusml's saved view (README shows the local store's form: `focusml server`, experiment 1)."""
    import mlflow
    from click.testing import CliRunner
    from mlflow.entities import Metric

    from focusml.cli.demo_summary import COLUMNS, main

    client = mlflow.MlflowClient()
    eid = client.create_experiment("docs-demo")
    for method, acc in (("baseline", 0.3), ("upper_bound", 0.9), ("pas", 0.96)):
        run = client.create_run(eid, tags={"focusml.method": method}, run_name=f"{method}-decoy-digits-s0")
        client.log_batch(run.info.run_id, metrics=[Metric(k, acc, 0, 0) for k in COLUMNS])
        client.set_terminated(run.info.run_id)
    res = CliRunner().invoke(main, ["--experiment", "docs-demo"])
    assert res.exit_code == 0, res.output
    printed = [line for line in res.output.splitlines() if line.strip()]

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"and ends with:\n\n```\n(.*?)```", readme, flags=re.S)
    shown = [line for line in block.splitlines() if line.strip()]
    assert shown[0] == printed[0]  # "Results on decoy-digits (...):"
    columns = re.split(r"\s{2,}", shown[1].strip())
    assert columns[-1] == "..." and columns[:-1] == re.split(r"\s{2,}", printed[1].strip())[:len(columns) - 1]
    assert [line.split()[0] for line in shown[3:-1]] == [line.split()[0] for line in printed[3:-1]]  # the methods
    local = re.fullmatch(r"Open the MLflow UI: `\.venv/bin/focusml server`, then open http://127\.0\.0\.1:5000/(\S+) "
                         r"\(experiment 'demo': \.\.\.\)", shown[-1])
    served = re.fullmatch(rf"Open the MLflow UI: open {re.escape(tracking_env)}/(\S+) \(experiment 'docs-demo': .+",
                          printed[-1])
    assert local and served, (shown[-1], printed[-1])
    assert local[1] == served[1].replace(f"/experiments/{eid}/", "/experiments/1/")
    assert local[1] == "#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=focusml"


def test_the_docs_quote_the_torch_pins_make_and_the_mlproject_install():
    makefile = (REPO / "Makefile").read_text()
    torch, vision = re.search(r"pip install -q torch==(\S+) torchvision==(\S+)", makefile).groups()
    env = (REPO / "python_env.yaml").read_text()
    assert f"torch=={torch}" in env and f"torchvision=={vision}" in env
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"torch {torch}, torchvision {vision}" in readme and readme.count(f"torch=={torch} torchvision=={vision}") == 2
    quoted = set(re.findall(r"torch(?:==| )(\d+\.\d+\.\d+)", readme + (REPO / "docs" / "operations.md").read_text()))
    assert quoted == {torch}, quoted
