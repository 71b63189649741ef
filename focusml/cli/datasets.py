"""`focusml datasets list|export|show`."""

from __future__ import annotations

from pathlib import Path

import click

from focusml.generate.catalog import listing
from focusml.cli._common import echo_table


@click.group()
def datasets():
    """Built-in and on-disk datasets."""


@datasets.command("list")
def list_datasets():
    """List datasets with their shortcut."""
    echo_table(listing("datasets"))


@datasets.command("export")
@click.argument("name")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--data-seed", type=int, default=0, show_default=True)
@click.option("--data-root", default=None, help="for datasets read from disk")
@click.option("--force", is_flag=True, help="replace OUT_DIR even if it holds something other than this export")
def export(name, out_dir, data_seed, data_root, force):
    """Write dataset NAME in the folder layout under OUT_DIR (images/, masks/, clean/).

    Atomic: the files appear in OUT_DIR all at once (an interrupted export leaves nothing). A non-empty
    OUT_DIR is refused unless it is the same export (same dataset, data seed and data) or --force is given.
    """
    from focusml.core.data import DataOptions, load  # torch: only when a dataset is read
    from focusml.core.data.exporting import export_dataset

    data = load(name, DataOptions(seed=data_seed, root=Path(data_root) if data_root else None))
    out = export_dataset(data, Path(out_dir), name, data_seed, force)
    counts = {k: len(v) for k, v in data.splits.items()}
    click.echo(f"wrote {name} to {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    click.echo(f"train on it with: focusml train --dataset folder --data-root {out}")


@datasets.command("show")
@click.argument("name")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write (default NAME-SPLIT.png in the current folder)")
@click.option("--split", "split_name", default="train", show_default=True,
              help="train, val, test, test_confounded or a *_clean split")
@click.option("--per-class", type=click.IntRange(1, 20), default=4, show_default=True)
@click.option("--data-seed", type=int, default=0, show_default=True)
@click.option("--data-root", default=None, help="for datasets read from disk")
@click.option("--download/--no-download", default=False, help="allow downloading torchvision datasets")
@click.option("--image-size", type=int, default=None, help="resize folder images (and masks) to N×N")
def show(name, out_file, split_name, per_class, data_seed, data_root, download, image_size):
    """Write a sample grid of dataset NAME: a row per class, masks outlined in cyan."""
    from focusml.core.data import DataOptions, load
    from focusml.core.figures import close, sample_grid

    data = load(name, DataOptions(seed=data_seed, root=Path(data_root) if data_root else None,
                                  download=download, image_size=image_size))
    split = data.split(split_name)
    fig = sample_grid(data, split_name, per_class)
    out = Path(out_file or f"{name}-{split_name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    close(fig)
    c, h, w = data.image_shape
    masked = int(split.annotated.sum())
    click.echo(f"wrote {out}: {name} {split_name}, {len(split)} images of {c}×{h}×{w}, "
               f"{data.num_classes} classes, {masked} with a mask")
