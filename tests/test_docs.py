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


def test_the_readme_quotes_no_test_counts_that_would_go_stale():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"\b\d+ (tests|passed)\b|\btests? \(\d+\)", readme), "the README names a test count"
