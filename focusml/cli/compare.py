"""`focusml compare`: every method against the baseline and upper bound, from the runs in MLflow."""

from __future__ import annotations

import click

from focusml.cli._common import echo_table


@click.command()
@click.option("--experiment", default=None,
              help="MLflow experiment whose runs are compared (default: $MLFLOW_EXPERIMENT_NAME, else focusml)")
@click.option("--dataset", default="", help="compare one dataset only (default: every dataset, one table each)")
@click.option("--out", "out_dir", default="comparison", show_default=True, type=click.Path(file_okay=False),
              help="folder for comparison.md, comparison.csv and comparison.png")
@click.option("--log/--no-log", default=True, show_default=True,
              help="log the three files as artifacts of a comparison run in the same experiment, and write the "
                   "table into the experiment's description")
@click.option("--children/--no-children", default=False, show_default=True,
              help="also compare nested runs (e.g. Optuna trials, one row per λ tried)")
def compare(experiment, dataset, out_dir, log, children):
    """Compare every method with the baseline and upper bound of the same dataset and seed.

    \b
    gap closed = (acc − acc_baseline) / (acc_upper − acc_baseline), averaged over the runs
    that have both references (their count in brackets); empty where a run has none.
    Warns when the baseline → upper bound gap is under 10 points or when the compared runs
    differ in epochs, lr, model or other settings.
    \b
    Examples:
      focusml compare --experiment focusml
      focusml compare --experiment focusml --dataset decoy-digits --out reports/digits
      mlflow run . -e compare -P experiment=focusml --env-manager local
    """
    from focusml import tracking  # MLflow and torch: imported when the command runs, not for --help
    from focusml.analysis.compare import display_rows, report

    click.echo(f"Comparing the runs of experiment '{experiment or tracking.resolve_experiment()}' in "
               f"{tracking.redact(tracking.tracking_uri())}", err=True)
    table, paths, run_id = report(experiment, dataset or None, out_dir, log=log, include_children=children)
    for name, group in table.groupby("dataset", sort=False):
        click.echo(f"\n{name}")
        echo_table(display_rows(group))
    click.echo("")
    for warning in table.attrs.get("warnings", []):
        click.secho(f"Warning: {warning}", fg="yellow", err=True)
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
    if run_id:
        click.echo(f"comparison run_id: {run_id}")
        click.echo(f"The table is in the experiment's description: "
                   f"{tracking.ui_link(experiment_id=table.attrs['experiment_id'])}", err=True)
