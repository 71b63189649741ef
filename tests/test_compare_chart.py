"""The comparison's chart and description without a server: x labels that never overlap, and the Markdown
section `focusml compare` writes into the experiment's description (kept apart from the user's text)."""

from __future__ import annotations

import pandas as pd

from focusml.core import methods
from focusml.analysis.compare import chart, note_markdown
from focusml.analysis.summary import METRICS, summarise
from focusml.core.figures import close
from focusml.tracking.experiment import NOTE_MARKER, merge_note


def _runs(names: list[str], seeds=(0, 1)) -> pd.DataFrame:
    """Tidy runs (as `summary.tidy_runs` gives them) of each method on decoy-digits, the baseline worst."""
    rows = []
    for i, name in enumerate(names):
        for seed in seeds:
            acc = {"baseline": 0.3, "upper_bound": 0.9}.get(name, 0.5 + 0.03 * i)
            rows.append({"run_id": f"{i:02d}{seed}" + "0" * 29, "dataset": "decoy-digits", "method": name,
                         "settings": "lam=0.1" if name not in ("baseline", "upper_bound") else "",
                         "seed": str(seed), "data_seed": "0", "model": "small",
                         **{k: acc if k in ("acc", "acc_cf") else 0.1 for k in METRICS}})
    return pd.DataFrame(rows)


def _overlaps(labels) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in labels if t.get_text()]
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]


def test_the_charts_x_labels_never_overlap_whatever_the_number_of_methods():
    names = list(methods.METHODS)
    assert len(names) >= 12
    for n in (2, 3, 5, 12):
        runs = _runs(names[:n])
        fig = chart(summarise(runs), runs)
        try:
            fig.canvas.draw()
            drawn = [ax for ax in fig.axes if ax.get_xticklabels() and ax.get_xticklabels()[0].get_text()]
            assert drawn, "no panel has labels"
            for ax in drawn:
                labels = ax.get_xticklabels()
                assert len([t for t in labels if t.get_text()]) == n
                assert not _overlaps(labels), (n, ax.get_title(), _overlaps(labels))
        finally:
            close(fig)


def test_the_description_names_the_best_method_first_and_links_every_run():
    runs = _runs(["baseline", "upper_bound", "pas", "rrr"])
    table = summarise(runs)
    md = note_markdown(table, runs, "7", comparison_run="c" * 32)
    first = md.splitlines()[0]
    assert first.startswith("**focusml compare**") and "**rrr lam=0.1**" in first  # rrr: the higher acc/test here
    assert "| method" in md and "gap closed" in md and "acc/test_cf" in md
    for rid in runs["run_id"]:
        assert f"(#/experiments/7/runs/{rid}?workflowType=machine_learning)" in md
    assert f"run_uuid={'c' * 32})" in md  # the chart, from the comparison run's artifacts
    short = note_markdown(table, runs, "7", links=False)
    assert "#/experiments/7/runs/" not in short and len(short) < len(md)


def test_the_users_text_stays_above_focusmls_section_which_is_replaced():
    assert merge_note(None, "table 1") == f"{NOTE_MARKER}\n\ntable 1\n"
    mine = "My notes.\n\nStill mine."
    once = merge_note(mine, "table 1")
    assert once.startswith(mine) and once.endswith("table 1\n")
    twice = merge_note(once, "table 2")
    assert twice == f"{mine}\n\n{NOTE_MARKER}\n\ntable 2\n" and "table 1" not in twice
