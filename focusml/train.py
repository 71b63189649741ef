"""The one training loop, method-agnostic: augment masks → transform_batch → forward (with the
method's layer hooks) → CE + λ·penalty → step; validation metrics after every epoch.

The loop never prints; callers watch progress through `Callbacks`.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from focusml.callbacks import Callbacks
from focusml.config import RunConfig
from focusml.data import Dataset
from focusml.data.masks import augment
from focusml.evaluate import validation_metrics
from focusml.methods import Batch, Method

__all__ = ["Callbacks", "FitResult", "fit", "layer_hooks", "resolve_device", "train_step"]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict | None = None  # state dict of the epoch with the best acc/val
    best_epoch: int = -1


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


def train_step(model, method: Method, batch: Batch, optimizer) -> tuple[float, float, float]:
    """One optimisation step; returns (loss, ce, λ·penalty) as floats."""
    x = batch.x.requires_grad_(True) if method.needs_input_grad else batch.x
    hooks = method.layer_hooks(batch)
    if "input" in hooks:
        x = hooks["input"](x)
    with layer_hooks(model, hooks):
        features, logits = model.forward_features(x)
    ce = F.cross_entropy(logits, batch.y)
    pen = method.penalty(model, batch.replace(x=x), features, logits)
    weighted = method.lam * pen if pen is not None else torch.zeros((), device=ce.device)
    loss = ce + weighted
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(ce.detach()), float(weighted.detach())


def fit(model, data: Dataset, method: Method, config: RunConfig, device: torch.device,
        callbacks: Callbacks | None = None) -> FitResult:
    callbacks = callbacks or Callbacks()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    split = data.split(method.train_split)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    result = FitResult()
    best_acc = -1.0
    n = len(split)
    steps = (n + config.batch_size - 1) // config.batch_size
    for epoch in range(config.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        totals = torch.zeros(3)
        for step in range(steps):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, m, y = split.batch(idx)
            if method.uses_masks:
                m = augment(m, idx, config.augment, gen, config.seed)
            batch = method.transform_batch(Batch(x, m, y, idx), gen)
            batch = Batch(batch.x.to(device), batch.m.to(device), batch.y.to(device), batch.index)
            parts = train_step(model, method, batch, optimizer)
            totals += torch.tensor(parts) * len(idx)
            callbacks.on_batch_end(epoch, step, steps, parts[0])
        seconds = time.perf_counter() - start
        loss, ce, pen = (totals / n).tolist()
        metrics = {"loss/train": loss, "loss/ce": ce, "loss/penalty": pen, "time/epoch_s": seconds}
        metrics.update(validation_metrics(model, data, device))
        result.history.append(metrics)
        if metrics["acc/val"] > best_acc:
            best_acc = metrics["acc/val"]
            result.best_state = copy.deepcopy(model.state_dict())
            result.best_epoch = epoch
        callbacks.on_epoch_end(epoch, metrics, model)
    return result
