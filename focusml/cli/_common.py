"""Output helpers shared by the CLI commands: progress bars and metric tables."""

from __future__ import annotations

import math
import sys

import click
from tabulate import tabulate
from tqdm.auto import tqdm

from focusml.core.callbacks import Callbacks


def interactive(stream=None) -> bool:
    """Whether progress goes to a terminal (stderr by default): bars there, plain lines elsewhere."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def epoch_line(label: str, epoch: int, epochs: int, metrics: dict) -> str:
    """`epoch 3/20 loss 0.412 acc/val 0.871 acc/val_cf 0.654 wr/val 12.3 (4.1 s)`: one line per epoch."""
    parts = [f"{label}epoch {epoch + 1}/{epochs}"]
    for key, digits in (("loss/train", 3), ("acc/val", 3), ("acc/val_cf", 3), ("flip/val", 3), ("wr/val", 1)):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            parts.append(f"{key} {value:.{digits}f}")
    if "time/epoch_s" in metrics:
        parts.append(f"({metrics['time/epoch_s']:.1f} s)")
    return " ".join(parts)


class ProgressBars(Callbacks):
    """On a terminal: one tqdm bar per epoch (over batches), closed with the epoch's validation
    metrics. Elsewhere (CI, `nohup`, a log file): one plain line per epoch, no partial lines."""

    def __init__(self, epochs: int, label: str = "", bars: bool | None = None):
        self.epochs, self.label, self.bar, self.prep = epochs, label, None, None
        self.bars = interactive() if bars is None else bars

    def on_prepare(self, desc, step, steps):
        if not self.bars:
            if step + 1 >= steps or step == 0:
                click.echo(f"{desc}: {step + 1}/{steps}", err=True)
            return
        if self.prep is None:
            self.prep = tqdm(total=steps, desc=desc, leave=True, dynamic_ncols=True)
        self.prep.update(1)
        if step + 1 >= steps:
            self.prep.close()
            self.prep = None

    def on_batch_end(self, epoch, step, steps, loss):
        if not self.bars:
            return
        if self.bar is None:
            self.bar = tqdm(total=steps, desc=f"{self.label}epoch {epoch + 1}/{self.epochs}", leave=True,
                            dynamic_ncols=True)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}")

    def on_epoch_end(self, epoch, metrics, model):
        if not self.bars:
            click.echo(epoch_line(self.label, epoch, self.epochs, metrics), err=True)
            return
        if self.bar is not None:
            shown = {"loss": f"{metrics['loss/train']:.3f}", "acc_val": f"{metrics['acc/val']:.3f}"}
            if math.isfinite(metrics.get("acc/val_cf", math.nan)):
                shown["acc_val_cf"] = f"{metrics['acc/val_cf']:.3f}"
            if math.isfinite(metrics.get("wr/val", math.nan)):
                shown["wr_val"] = f"{metrics['wr/val']:.1f}"
            self.bar.set_postfix(**shown)
            self.bar.close()
            self.bar = None


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain aligned text table of dict rows (tabulate's "simple" format), cells as `fmt` writes them."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    return tabulate([[fmt(r.get(c)) for c in columns] for r in rows], headers=columns, tablefmt="simple",
                    disable_numparse=True, stralign="left")


def echo_table(rows: list[dict], columns: list[str] | None = None) -> None:
    click.echo(table(rows, columns))


def echo_ui_links(run_id: str) -> None:
    """On stderr: the run's page in the MLflow UI, then its experiment's runs in focusml's saved view
    (headline metrics as columns, best acc/test first), where the run compares with the others."""
    from focusml import tracking

    experiment_id = tracking.run_experiment_id(run_id)
    click.echo(f"See it in the UI: {tracking.ui_link(run_id, experiment_id=experiment_id)}", err=True)
    if experiment_id:
        click.echo(f"Its experiment's runs, headline metrics first: {tracking.ui_link(experiment_id=experiment_id)}",
                   err=True)
