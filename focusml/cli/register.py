"""`focusml register`: a run's logged model into the MLflow Model Registry, with an alias."""

from __future__ import annotations

import click

from focusml import tracking


@click.command()
@click.argument("run_id")
@click.option("--name", required=True, help="registered model name")
@click.option("--alias", default="champion", show_default=True, help="alias to point at the new version ('' for none)")
def register(run_id, name, alias):
    """Register a run's logged model in the MLflow Model Registry and set an alias on it.

    \b
    Example:
      focusml register 3f2a… --name pas-digits --alias champion
    """
    tracking.setup()
    version = tracking.register(run_id, name, alias or None)
    click.echo(f"registered {name} version {version}" + (f", alias {alias}" if alias else ""))
