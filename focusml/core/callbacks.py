"""How a run reports while it works: one class of optional hooks, called by `run.run` and `train.fit`,
and the two things they are handed (`RunContext`, `RunResult`).

The core never prints and never tracks; whoever calls it watches through these hooks. The CLI's
progress bars, MLflow logging (`focusml.tracking.RunLogger`) and Optuna's pruning
(`focusml.tune.TrialCallbacks`) are all `Callbacks`, each on its own; several are one `CallbackList`,
the only place that hands a hook on, so every hook reaches every callback. A hook may raise to stop the
run (e.g. `optuna.TrialPruned` from `on_epoch_end`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: those modules import this one
    import numpy as np
    import torch

    from focusml.core.config import RunConfig
    from focusml.core.data import Dataset
    from focusml.core.evaluate import Predictions
    from focusml.core.methods import Method
    from focusml.core.train import FitResult


@dataclass
class RunContext:
    """What a run works on once its inputs are accepted (what `Callbacks.run_scope` receives)."""

    config: RunConfig
    data: Dataset
    model: torch.nn.Module
    method: Method
    device: torch.device


@dataclass
class RunResult:
    """What a run gives back (and `Callbacks.on_run_end` receives, a tracker filling in `run_id`, `model_uri`)."""

    metrics: dict[str, float]  # test metrics, `time/epoch_s_mean`, `selected_epoch`, `selected/...`
    run_id: str | None = None  # set by a tracker (`focusml.tracking.RunLogger`)
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics
    model: torch.nn.Module | None = None  # the evaluated model: the checkpoint `--select` chose
    fit: FitResult | None = None  # the loop's outcome: history, the selected epoch and its state
    last_state: dict | None = None  # the last epoch's weights, when they are not the evaluated ones
    confusion: np.ndarray | None = None  # confusion matrix on `test`
    warnings: list[str] = field(default_factory=list)  # what makes the result suspect (`run.health_warnings`)
    predictions: Predictions | None = None  # per-image test predictions of the evaluated model
    model_uri: str | None = None  # the logged model (`models:/m-ID`), set by a tracker that logged one


class Callbacks:
    """Override what you need; every hook does nothing by default."""

    def run_scope(self, ctx: RunContext) -> AbstractContextManager:
        """A context that wraps the run once data and model are ready: prepare, fit, test, `on_run_end`.

        A tracker opens its run here, so an input refused earlier leaves nothing behind, and the
        run can end FAILED when the block raises.
        """
        return nullcontext()

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        """A file a method's `prepare` wants kept with the run (e.g. the inpainter's weights)."""

    def log_params(self, params: dict) -> None:
        """Values a method's `prepare` worked out (e.g. what an `auto` option became), kept with the run."""

    def on_prepare(self, desc: str, step: int, steps: int) -> None:
        """Progress of a method's `prepare` (e.g. inpainter training)."""

    def on_batch_end(self, epoch: int, step: int, steps: int, loss: float) -> None: ...

    def on_checkpoint(self, epoch: int, state: dict) -> None:
        """After each epoch, before `on_epoch_end`: the whole training state (`train.training_state`).

        Save it (`torch.save`) to let `run(config, resume=state)` continue after `epoch`; its
        tensors are live, so save before returning.
        """

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model) -> None: ...

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        """After the test metrics, inside `run_scope`."""


class CallbackList(Callbacks):
    """Several callbacks as one: every hook reaches each of them, in the order given (their `run_scope`s
    nest, the first outermost). What `focusml.fit(callbacks=[...])` and `run(config, [...])` make of a list."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    @contextmanager
    def run_scope(self, ctx):
        with ExitStack() as stack:
            for cb in self.callbacks:
                stack.enter_context(cb.run_scope(ctx))
            yield

    def log_artifact(self, path, artifact_path):
        for cb in self.callbacks:
            cb.log_artifact(path, artifact_path)

    def log_params(self, params):
        for cb in self.callbacks:
            cb.log_params(params)

    def on_prepare(self, desc, step, steps):
        for cb in self.callbacks:
            cb.on_prepare(desc, step, steps)

    def on_batch_end(self, epoch, step, steps, loss):
        for cb in self.callbacks:
            cb.on_batch_end(epoch, step, steps, loss)

    def on_checkpoint(self, epoch, state):
        for cb in self.callbacks:
            cb.on_checkpoint(epoch, state)

    def on_epoch_end(self, epoch, metrics, model):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, metrics, model)

    def on_run_end(self, ctx, result):
        for cb in self.callbacks:
            cb.on_run_end(ctx, result)


def listed(given: Any) -> list[Callbacks]:
    """None, one `Callbacks` or a list of them, as a list."""
    if given is None:
        return []
    return [given] if isinstance(given, Callbacks) else list(given)


def as_callbacks(given: Any) -> Callbacks:
    """None, one `Callbacks` or a list of them, as one `Callbacks`."""
    return given if isinstance(given, Callbacks) else CallbackList(listed(given))
