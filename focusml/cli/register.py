"""`focusml register`: a run's logged model into the MLflow Model Registry, described, tagged, with an alias."""

from __future__ import annotations

import click

from focusml.cli._common import echo_table


@click.command()
@click.argument("run_id")
@click.option("--name", required=True, help="registered model name")
@click.option("--alias", default="champion", show_default=True, help="alias to point at the new version ('' for none)")
def register(run_id, name, alias):
    """Register a run's logged model in the MLflow Model Registry and set an alias on it.

    The new version gets a description and tags (method, dataset, acc/test, gap closed when the
    experiment has the baseline and upper bound of the same dataset and seed, the source run);
    the metrics are printed, with a warning when the model looks degenerate (chance-level
    acc/test, all-zero CAMs) or the reference gap is too small to mean anything.

    \b
    Example:
      focusml register 3f2a… --name pas-digits --alias champion
    """
    from focusml import tracking  # MLflow: imported when the command runs, not for --help

    tracking.setup()
    reg = tracking.register_version(run_id, name, alias or None)
    rows = [{"metric": k, "value": v} for k, v in reg.metrics.items()]
    if reg.references:
        rows += [{"metric": f"{m} acc/test (same dataset, seed)", "value": v} for m, v in reg.references.items()]
    if reg.gap_closed is not None:
        rows.append({"metric": "gap closed", "value": f"{100 * reg.gap_closed:.0f}%"})
    echo_table(rows)
    for warning in reg.warnings:
        click.secho(f"Warning: {warning}", fg="yellow", err=True)
    click.echo(f"registered {name} version {reg.version}" + (f", alias {alias}" if alias else "")
               + f" (source {reg.source})")
    runs = tracking.ui_link(experiment_id=tracking.run_experiment_id(reg.run_id))
    click.echo(f"Its run among the experiment's runs, headline metrics first: {runs}", err=True)
