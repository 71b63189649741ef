"""`focusml datasets list|export|show`."""

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


def sample_grid(data, split_name: str = "train", per_class: int = 4, title: str | None = None):
    """A matplotlib figure: `per_class` images of each class from a split, one row per class
    (named on the left), each image with its mask outlined in cyan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from focusml.figures import sample_indices

    split = data.split(split_name)
    index = sample_indices(split.labels, data.num_classes, per_class)
    rows, cols = data.num_classes, per_class
    fig, axes = plt.subplots(rows, cols, figsize=(1.15 * cols + 0.9, 1.15 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(index.tolist()):
        y = int(split.labels[i])
        col = (split.labels[index[:k]] == y).sum().item()
        ax = axes[y, col]
        img = split.images[i].numpy()
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        mask = split.masks[i].numpy()
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
        if col == 0:
            ax.text(-0.08, 0.5, data.classes[y], transform=ax.transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title or f"{data.name}: {split_name}", fontsize=9)
    fig.tight_layout()
    return fig


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
    from focusml.figures import close

    data = load(name, DataOptions(seed=data_seed, root=Path(data_root) if data_root else None,
                                  download=download, image_size=image_size))
    split = data.split(split_name)
    fig = sample_grid(data, split_name, per_class)
    out = Path(out_file or f"{name}-{split_name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    close(fig)
    c, h, w = data.image_shape
    masked = int((split.masks.flatten(1).sum(1) > 0).sum())
    click.echo(f"wrote {out}: {name} {split_name}, {len(split)} images of {c}×{h}×{w}, "
               f"{data.num_classes} classes, {masked} with a mask")
