"""`focusml datasets list|export`."""

from __future__ import annotations

from pathlib import Path

import click

from focusml.cli import cli
from focusml.cli._common import echo_table
from focusml.data import DATASETS, DataOptions, load
from focusml.data.folder import export as export_folder


@cli.group()
def datasets():
    """Built-in and on-disk datasets."""


@datasets.command("list")
def list_datasets():
    """List datasets with their shortcut."""
    rows = [{"dataset": d.name, "kind": "built-in" if d.builtin else "needs --data-root",
             "shortcut": d.shortcut, "what": d.description} for d in DATASETS.values()]
    echo_table(rows)


@datasets.command("export")
@click.argument("name")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--data-seed", type=int, default=0, show_default=True)
@click.option("--data-root", default=None, help="for datasets read from disk")
def export(name, out_dir, data_seed, data_root):
    """Write dataset NAME in the folder layout under OUT_DIR (images/, masks/, clean/)."""
    data = load(name, DataOptions(seed=data_seed, root=Path(data_root) if data_root else None))
    out = export_folder(data, Path(out_dir))
    counts = {k: len(v) for k, v in data.splits.items()}
    click.echo(f"wrote {name} to {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    click.echo(f"train on it with: focusml train --dataset folder --data-root {out}")
