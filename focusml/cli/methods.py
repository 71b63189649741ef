"""`focusml methods`: every registered training method with its family and options."""

from __future__ import annotations

import click

from focusml import methods as registry
from focusml.cli._common import echo_table


@click.command("methods")
def methods():
    """List every training method with its family and options."""
    rows = []
    for name, cls in registry.METHODS.items():
        params = ", ".join(f"{p.name}={p.default}" for p in cls.params) or "—"
        rows.append({"method": name, "family": cls.family, "options (default)": params, "what changes": cls.summary})
    echo_table(rows)
