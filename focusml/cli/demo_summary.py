"""The end of `make demo`: the latest baseline, upper-bound and PAS runs of an experiment as a table
with the share of the baseline→upper-bound gap each closes, and how to open the MLflow UI. Run as `python -m focusml.cli.demo_summary --experiment demo`.

Not a `focusml` command (it is not in `COMMANDS`): `focusml compare` is the general table.
"""

from __future__ import annotations

import click

from focusml import tracking
from focusml.analysis.summary import gap_closed
from focusml.cli._common import echo_table

COLUMNS = ["acc/test", "acc/test_cf", "flip/test", "evidence_in_mask/test", "wr/test", "acc/test_confounded",
           "time/epoch_s_mean"]
METHODS = ("baseline", "upper_bound", "pas")


@click.command()
@click.option("--experiment", default="demo")
def main(experiment: str) -> None:
    tracking.setup()
    runs = tracking.search_runs(experiment, order_by=["attributes.start_time DESC"])
    rows = []
    for method in METHODS:
        sel = runs[runs.get("tags.focusml.method") == method] if len(runs) else runs
        if len(sel):
            r = sel.iloc[0]
            rows.append({"method": method, **{c: r.get(f"metrics.{c}") for c in COLUMNS}, "run_id": r["run_id"][:8]})
    acc = {row["method"]: row["acc/test"] for row in rows}
    if "baseline" in acc and "upper_bound" in acc:
        for row in rows:
            row["gap closed"] = f"{float(gap_closed(row['acc/test'], acc['baseline'], acc['upper_bound'])):.0%}"
    click.echo("\nResults on decoy-digits (test = shortcut broken; acc/test_cf: validation-free counterfactual accuracy):")
    echo_table(rows, ["method", "acc/test", "gap closed", *COLUMNS[1:], "run_id"])
    eid = runs["experiment_id"].iloc[0] if len(runs) else None
    link = tracking.ui_link(server=".venv/bin/focusml server", experiment_id=eid)
    click.echo(f"\nOpen the MLflow UI: {link} (experiment '{experiment}': a run's CAM grids under Artifacts → "
               "figures, its per-epoch grid `cam_grid_val` on the Model metrics tab, step slider below it).")


if __name__ == "__main__":
    main()
