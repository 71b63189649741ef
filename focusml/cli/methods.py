"""`focusml methods`: every registered training method with its family and options."""

from __future__ import annotations

import click

from focusml.generate.catalog import listing
from focusml.cli._common import echo_table


@click.command("methods")
def methods():
    """List every training method with its family and options."""
    echo_table(listing("methods"))
