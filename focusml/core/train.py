"""The one training loop, method-agnostic: augment masks → transform_batch → forward (with the
method's layer hooks) → CE + λ·penalty → step; validation metrics after every epoch.

The loop never prints; callers watch progress through `Callbacks`. After every epoch it hands
`Callbacks.on_checkpoint` the whole training state (`training_state`: weights, optimiser,
schedule, the selector's best epoch, the batch-order generator, torch's RNG, the history), and
`fit(..., resume=state)` continues from the epoch after it, reaching the same weights and
metrics as a run that was never stopped. A non-finite or exploding loss stops the loop with
`Diverged`, naming the learning rate (and λ) as the likely cause.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from focusml import RunFailed
from focusml.core.callbacks import Callbacks
from focusml.core.config import RunConfig
from focusml.core.data import Dataset
from focusml.core.data.base import as_float
from focusml.core.data.masks import augment
from focusml.core.data.stream import batches
from focusml.core.evaluate import SELECTABLE, Evaluator, select_metric
from focusml.core.methods import Batch, Method
from focusml.core.precision import Precision

__all__ = ["Callbacks", "Diverged", "FitResult", "RESUME_FORMAT", "fit", "layer_hooks", "refit", "resolve_device",
           "train_step", "training_state"]

RESUME_FORMAT = "focusml-resume-1"  # the `format` of a training state; bump when its layout changes
EXPLODE = 1e4  # a batch loss above EXPLODE × max(first batch's loss, 1) has exploded


class Diverged(RunFailed):
    """The loss became non-finite or exploded: the run ends FAILED with this message."""


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    select: str = "last"  # the metric that chose the checkpoint (resolved from `--select`)
    selected_epoch: int = -1  # the epoch whose weights are evaluated
    selected_state: dict | None = None  # its state dict, when it is not the last epoch's

    @property
    def selected_metrics(self) -> dict[str, float]:
        return self.history[self.selected_epoch] if self.history else {}


class Selector:
    """Keeps the state of the epoch with the best value of a validation metric (ties: the later epoch)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.sign = 1.0 if SELECTABLE.get(metric, "max") == "max" else -1.0
        self.best, self.epoch, self.state = -math.inf, -1, None

    def update(self, epoch: int, metrics: dict[str, float], model) -> None:
        if self.metric == "last":
            self.epoch = epoch
            return
        value = metrics.get(self.metric, math.nan)
        if math.isfinite(value) and self.sign * value >= self.best:
            self.best, self.epoch = self.sign * value, epoch
            self.state = copy.deepcopy(model.state_dict())

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        if saved["metric"] != self.metric:
            raise ValueError(f"the checkpoint selects on {saved['metric']}, this run on {self.metric}")
        self.best, self.epoch, self.state = saved["best"], saved["epoch"], saved["state"]

    def finish(self, result: FitResult, last_epoch: int) -> FitResult:
        """Record the choice; no finite value at all (e.g. NaN metrics) falls back to the last epoch."""
        result.select = self.metric
        if self.epoch < 0 or self.epoch == last_epoch:
            result.selected_epoch, result.selected_state = last_epoch, None
        else:
            result.selected_epoch, result.selected_state = self.epoch, self.state
        return result


@contextmanager
def layer_hooks(model: torch.nn.Module, hooks: dict):
    """Apply {module name: fn(output) -> output} to forward outputs while the block runs."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, fn in hooks.items():
            if name == "input":
                continue
            if name not in modules:
                raise KeyError(f"model has no layer '{name}' (layers: {', '.join(n for n in modules if n)})")
            handles.append(modules[name].register_forward_hook(lambda mod, inp, out, fn=fn: fn(out)))
        yield
    finally:
        for h in handles:
            h.remove()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_step(model, method: Method, batch: Batch, optimizer,
               precision: Precision | None = None) -> tuple[float, float, float]:
    """One optimisation step; returns (loss, ce, λ·penalty) as floats.

    `precision` (`--amp`, `--channels-last`): the forward pass and the loss run under its autocast;
    its gradient scaler (float16) scales the backward pass and skips a step whose gradients overflowed.
    """
    precision = precision or Precision()
    x = precision.input(batch.x)
    x = x.requires_grad_(True) if method.needs_input_grad else x
    hooks = method.layer_hooks(batch)
    if "input" in hooks:
        x = hooks["input"](x)
    with precision.autocast():
        with layer_hooks(model, hooks):
            features, logits = model.forward_features(x)
        ce = F.cross_entropy(logits, batch.y)
        pen = method.penalty(model, batch.replace(x=x), features, logits)
        weighted = method.lam * pen if pen is not None else torch.zeros((), device=ce.device)
        loss = ce.float() + weighted.float()
    optimizer.zero_grad(set_to_none=True)
    precision.step(loss, optimizer)
    return float(loss.detach()), float(ce.detach()), float(weighted.detach())


class Guard:
    """Stops a diverging run: a non-finite batch loss, or one above EXPLODE × the first batch's."""

    def __init__(self, config: RunConfig, method: Method, initial: float | None = None):
        self.config, self.method, self.initial = config, method, initial

    def check(self, loss: float, epoch: int, step: int) -> None:
        if self.initial is None and math.isfinite(loss):
            self.initial = loss
        if not math.isfinite(loss):
            what = f"the loss became {loss}"
        elif loss > EXPLODE * max(self.initial, 1.0):
            what = f"the loss exploded to {loss:.3g} (first batch: {self.initial:.3g})"
        else:
            return
        lam = self.method.lam
        cause = "the learning rate or λ is" if lam else "the learning rate is"
        fix = f"try --lr {self.config.lr / 10:g}" + (f" or --lam {lam / 10:g}" if lam else "")
        given = f"--lr {self.config.lr:g}" + (f", --lam {lam:g}" if lam else "")
        if getattr(self.config, "amp", "off") != "off":  # float16's range ends at 65504: a possible cause too
            fix += f" (or --amp off: --amp {self.config.amp} computes the loss in reduced precision)"
        raise Diverged(f"training diverged: {what} at epoch {epoch + 1}, batch {step + 1} ({given}); "
                       f"{cause} likely too large: {fix}.")


def training_state(epoch: int, model, optimizer, schedule, selector: Selector, gen: torch.Generator,
                   history: list[dict[str, float]], guard: Guard, device: torch.device,
                   precision: Precision | None = None) -> dict:
    """Everything `fit` needs to continue after `epoch` exactly as if it had never stopped.

    Tensors, numbers, strings and lists only, so `torch.load(weights_only=True)` reads it back.
    The tensors are the live ones: save the state (`torch.save`) before training goes on.
    """
    return {
        "format": RESUME_FORMAT, "epoch": epoch,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "selector": selector.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "history": [dict(h) for h in history], "initial_loss": guard.initial,
        "scaler": precision.state_dict() if precision is not None else None,  # --amp fp16's loss scale
    }


def _restore(state: dict, model, optimizer, schedule, selector: Selector, gen: torch.Generator,
             device: torch.device) -> None:
    if state.get("format") != RESUME_FORMAT:
        raise ValueError(f"not a focusml training state of format {RESUME_FORMAT} (got {state.get('format')!r})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    selector.load_state_dict(state["selector"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def fit(model, data: Dataset, method: Method, config: RunConfig, device: torch.device,
        callbacks: Callbacks | None = None, resume: dict | None = None) -> FitResult:
    """Train `model` for `config.epochs` epochs (from the epoch after `resume["epoch"]` when resuming)."""
    callbacks = callbacks or Callbacks()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    split = data.split(method.train_split)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    precision = Precision.for_run(config.amp, config.channels_last, config.model, device)
    # Cosine annealing per epoch: the last epochs take small steps, so the final weights do not
    # depend on where the last large step happened to land.
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
                if config.lr_schedule == "cosine" else None)
    evaluator = Evaluator(data, device)
    selector = Selector(select_metric(config.select, data))
    result = FitResult()
    guard = Guard(config, method)
    first = 0
    if resume is not None:
        _restore(resume, model, optimizer, schedule, selector, gen, device)
        precision.load_state_dict(resume.get("scaler"))
        result.history = [dict(h) for h in resume["history"]]
        guard.initial = resume.get("initial_loss")
        first = resume["epoch"] + 1
    n = len(split)
    steps = (n + config.batch_size - 1) // config.batch_size
    for epoch in range(first, config.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        totals = torch.zeros(3)
        for step, (idx, rows) in enumerate(batches(split, order, config.batch_size)):  # streamed: read by workers
            x, m, y = as_float(*rows)
            if method.uses_masks:
                m = augment(m, idx, config.augment, gen, config.seed)
            batch = method.transform_batch(Batch(x, m, y, idx), gen)
            batch = Batch(batch.x.to(device), batch.m.to(device), batch.y.to(device), batch.index)
            parts = train_step(model, method, batch, optimizer, precision)
            guard.check(parts[0], epoch, step)
            totals += torch.tensor(parts) * len(idx)
            callbacks.on_batch_end(epoch, step, steps, parts[0])
        seconds = time.perf_counter() - start
        loss, ce, pen = (totals / n).tolist()
        metrics = {"loss/train": loss, "loss/ce": ce, "loss/penalty": pen, "time/epoch_s": seconds}
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics.update(evaluator.validation(model))
        result.history.append(metrics)
        selector.update(epoch, metrics, model)
        if schedule is not None:
            schedule.step()
        # the state first, then the metrics: a run stopped in between resumes after this epoch
        # and its tracker sends this epoch's metrics from the state's history (never twice)
        callbacks.on_checkpoint(epoch, training_state(epoch, model, optimizer, schedule, selector, gen,
                                                      result.history, guard, device, precision))
        callbacks.on_epoch_end(epoch, metrics, model)
    return selector.finish(result, config.epochs - 1)


def refit(model, data: Dataset, method: Method, config: RunConfig, device: torch.device,
          callbacks: Callbacks | None = None) -> FitResult:
    """A `replaces_training` method's fit (`head_refit`) as one 'epoch' of the run's history."""
    callbacks = callbacks or Callbacks()
    torch.manual_seed(config.seed)
    metrics = method.fit(model, data, config, device, callbacks, Evaluator(data, device),
                         select_metric(config.select, data))
    callbacks.on_epoch_end(0, metrics, model)
    return FitResult(history=[metrics], select=select_metric(config.select, data), selected_epoch=0)
