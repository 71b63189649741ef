"""`focusml predict`: a logged model's predictions on image files, one row per file."""

from __future__ import annotations

import click

from focusml.cli._common import echo_table


@click.command()
@click.argument("model")
@click.argument("files", nargs=-1, required=True)
def predict(model, files):
    """Predict the class of image files with a logged model: one row per file.

    MODEL is a run id, runs:/RUN_ID/model, models:/NAME@ALIAS, models:/m-MODEL_ID or a model folder;
    FILES are PNG/JPEG/... images of any size: each is converted like the training images (channels,
    size, 0–1 scale) by the model itself.

    \b
    Examples:
      focusml predict 3f2a9c0d… scans/*.png
      focusml predict models:/digits@champion one.jpg two.png
    """
    from focusml import tracking  # MLflow and torch: imported when the command runs, not for --help

    echo_table(tracking.predict_files(model, list(files)), ["file", "class", "probability"])
