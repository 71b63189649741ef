"""`focusml refine SOURCE`: the model you have, refined from its masks (head refit, then full refinement)."""

from __future__ import annotations

import click

from focusml.cli._common import echo_table, echo_ui_links
from focusml.cli.train import Announced

ROWS = ("acc/val", "acc/val_cf", "flip/val")


@click.command()
@click.argument("source")
@click.option("--stages", type=click.Choice(["auto", "head", "full"]), default="auto", show_default=True,
              help="head: refit the linear head only (seconds); full: then fine-tune the whole network and keep "
                   "that; auto: both, keeping the full stage only when validation (acc/val_cf) says it is better")
@click.option("--method", default="random_crop", show_default=True,
              help="the full stage's mask-based training method (random_crop, pas, rrr, ...)")
@click.option("--epochs", type=int, default=None, help="full stage: epochs (default 5)")
@click.option("--lr", type=float, default=None, help="full stage: Adam learning rate (default 3e-4)")
@click.option("--dataset", default=None, help="dataset (default: the source run's)")
@click.option("--data-root", default=None, help="folder dataset root (default: the source run's)")
@click.option("--model", default=None, help="architecture (default: the source run's)")
@click.option("--seed", type=int, default=None, help="seed (default: the source run's)")
@click.option("--experiment", default=None, help="MLflow experiment (default: the source run's)")
@click.option("--mask-budget", default=None, help="keep masks on N training images (or a share in (0, 1))")
@click.option("--l2", default=None, help="head refit: L2 strength, or auto (chosen on acc/val_cf; default)")
@click.option("--copies", default=None, help="head refit: swapped copies per annotated image, or auto (default)")
@click.option("--device", default=None, help="auto, cpu or cuda[:N] (default auto)")
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="any other run option, e.g. --set lam=0.1 for --method pas, --set select=acc/val_cf")
def refine(source, stages, method, extra, **options):
    """Refine a trained model from its masks: head refit, then full refinement if validation says so.

    SOURCE is a run id, runs:/RUN_ID, models:/NAME@ALIAS, models:/NAME/VERSION or a local state-dict
    file. Each stage is a tracked run (lineage SOURCE → head → full); the table compares the source
    model with each stage on validation data, and the kept run is printed for `focusml register`.

    \b
    Examples:
      focusml refine 3f2a9c0d…                         # the baseline run, refined on its own dataset
      focusml refine models:/digits@baseline --stages head
      focusml refine RUN_ID --method pas --set lam=0.1 --epochs 10
    """
    from focusml import FocusmlError, tracking  # MLflow and torch: imported when the command runs

    values = {k: v for k, v in options.items() if v not in (None, "")}  # the MLproject passes "" for "not given"
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FocusmlError(f"--set {item!r}: write KEY=VALUE, e.g. --set lam=0.1.")
        values[key.replace("-", "_")] = value
    where = tracking.redact(tracking.tracking_uri())

    def bars(stage, config):
        what = "head refit" if stage == "head" else f"full refinement: {config.method}, {config.epochs} epochs"
        return Announced(config.epochs, f"Refining {source}, {what}, on {config.dataset} → {where}")

    done = tracking.refine(source, values, stages=stages, method=method, callbacks=bars)
    head = done.stages["head"]
    rows = [{"model": "source", **{k: head.history[0].get(f"source_{k}") for k in ROWS}, "seconds": None}]
    for name, result in done.stages.items():
        chosen = result.history[int(result.metrics["selected_epoch"]) - 1]
        seconds = sum(h["time/epoch_s"] for h in result.history)
        rows.append({"model": name + (" (kept)" if name == done.chosen else ""), **{k: chosen.get(k) for k in ROWS},
                     "seconds": round(seconds, 1)})
    echo_table(rows)
    for name, result in done.stages.items():
        for warning in result.warnings:
            click.secho(f"Warning ({name}): {warning}", fg="yellow", err=True)
    click.echo(f"run_id: {done.result.run_id}")
    click.echo(f"Register it: focusml register {done.result.run_id} --name NAME --alias champion", err=True)
    echo_ui_links(done.result.run_id)
