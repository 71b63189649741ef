"""Output helpers shared by the CLI commands: progress bars and metric tables."""

from __future__ import annotations

import math

import click
import pandas as pd
from tqdm.auto import tqdm

from focusml.callbacks import Callbacks


class ProgressBars(Callbacks):
    """One tqdm bar per epoch (over batches), closed with the epoch's validation metrics."""

    def __init__(self, epochs: int, label: str = ""):
        self.epochs, self.label, self.bar, self.prep = epochs, label, None, None

    def on_prepare(self, desc, step, steps):
        if self.prep is None:
            self.prep = tqdm(total=steps, desc=desc, leave=True, dynamic_ncols=True)
        self.prep.update(1)
        if step + 1 >= steps:
            self.prep.close()
            self.prep = None

    def on_batch_end(self, epoch, step, steps, loss):
        if self.bar is None:
            self.bar = tqdm(total=steps, desc=f"{self.label}epoch {epoch + 1}/{self.epochs}", leave=True,
                            dynamic_ncols=True)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}")

    def on_epoch_end(self, epoch, metrics, model):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss/train']:.3f}", acc_val=f"{metrics['acc/val']:.3f}",
                                 wr_val=f"{metrics['wr/val']:.1f}")
            self.bar.close()
            self.bar = None


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain aligned text table of dict rows (tabulate's "simple" format via pandas), cells as `fmt` writes them."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    frame = pd.DataFrame([[fmt(r.get(c)) for c in columns] for r in rows], columns=columns)
    return frame.to_markdown(index=False, tablefmt="simple", disable_numparse=True, stralign="left")


def echo_table(rows: list[dict], columns: list[str] | None = None) -> None:
    click.echo(table(rows, columns))
