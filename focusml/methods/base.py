"""The one seam between the training loop and a method: a tiny base class of optional hooks.

A method is a `Method` subclass in its own module under `focusml/methods/`; the registry finds
it by its `name`, so the loop, the CLI, the MLproject and the tuner pick it up without edits.

Hooks (all optional, called by `focusml.train.fit`):
- `prepare(ctx)`: once before training (e.g. train an inpainter);
- `transform_batch(batch, gen)`: replace pixels / add examples before the forward pass;
- `layer_hooks(batch)`: {module name: fn(output) -> output} applied in the training forward only;
- `penalty(model, batch, features, logits)`: the unweighted extra loss; the loop adds λ·penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from focusml import FocusmlError


@dataclass(frozen=True)
class Param:
    """A method option: CLI flag `--name`, MLproject parameter `name`, Optuna-searchable."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None  # inclusive bounds, checked by `validate`
    high: float | None = None
    choices: tuple | None = None

    def validate(self, value: Any, method: str) -> Any:
        if self.type is float:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise FocusmlError(f"--{self.name.replace('_', '-')} for method '{method}' must be a number, got {value!r}.")
            if math.isnan(value) or math.isinf(value):
                raise FocusmlError(f"--{self.name.replace('_', '-')} for method '{method}' is {value}; give a finite number.")
        elif self.type is int:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise FocusmlError(f"--{self.name.replace('_', '-')} for method '{method}' must be an integer, got {value!r}.")
        else:
            value = None if value is None else str(value)
        flag = f"--{self.name.replace('_', '-')}"
        if self.low is not None and value < self.low:
            raise FocusmlError(f"{flag} for method '{method}' is {value}; it must be ≥ {self.low}. {self.help}")
        if self.high is not None and value > self.high:
            raise FocusmlError(f"{flag} for method '{method}' is {value}; it must be ≤ {self.high}. {self.help}")
        if self.choices is not None and value not in self.choices:
            raise FocusmlError(f"{flag} for method '{method}' is {value!r}; choose one of {', '.join(map(str, self.choices))}.")
        return value


def lam_param(default: float, scale_note: str) -> Param:
    """The λ of a penalty method; the note says how λ=1 was made comparable to CE."""
    return Param("lam", float, default, f"penalty weight λ ≥ 0 ({scale_note})", low=0.0)


def grid_dilate_param(default: int = 1) -> Param:
    """Grow m↓ by N feature-grid cells (0 = the exact m↓ of docs/methods.md exactly).

    A cell next to the mask sees the masked pixels through its receptive field, so a shortcut
    silenced in its own cell moves to the neighbours; one cell closes that door.
    """
    return Param("grid_dilate", int, default,
                 "grow the mask on the feature grid by N cells (0 = exact m↓); neighbours of the mask see it "
                 "through their receptive field", low=0, high=8)


def p_param(default: float = 0.5) -> Param:
    return Param("p", float, default, "probability per image of applying the replacement, in [0, 1]", low=0.0, high=1.0)


@dataclass
class Batch:
    x: torch.Tensor  # N×C×H×W float in [0,1]
    m: torch.Tensor  # N×H×W float in [0,1] after mask augmentation
    y: torch.Tensor  # N int64
    index: torch.Tensor  # N row indices into the training split (-1 for added examples)

    def replace(self, **kw) -> "Batch":
        return replace(self, **kw)


@dataclass
class PrepareContext:
    """What `prepare` may use: the data, the run's config, a cache folder and the run logger."""

    data: Any  # focusml.data.Dataset
    config: Any  # focusml.config.RunConfig
    model: torch.nn.Module
    cache_dir: Path
    device: torch.device
    log_artifact: Callable[[Path, str], None] = lambda path, artifact_path: None
    progress: Callable[[str, int, int], None] = lambda desc, i, n: None
    extra: dict = field(default_factory=dict)


class Method:
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # reference | replacement | loss | peer
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    uses_masks: ClassVar[bool] = True
    train_split: ClassVar[str] = "train"
    needs_input_grad: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = self.resolve_options(options or {})

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, values validated; unknown options refused with the known ones."""
        known = {p.name: p for p in cls.params}
        unknown = [k for k, v in given.items() if k not in known and v is not None]
        if unknown:
            allowed = ", ".join(f"--{k.replace('_', '-')}" for k in known) or "none"
            raise FocusmlError(
                f"--{unknown[0].replace('_', '-')} does not apply to method '{cls.name}' (its options: {allowed})."
            )
        return {n: p.validate(given[n] if given.get(n) is not None else p.default, cls.name) for n, p in known.items()}

    @property
    def lam(self) -> float:
        return float(self.options.get("lam", 0.0))

    def prepare(self, ctx: PrepareContext) -> None:
        return None

    def transform_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        return batch

    def layer_hooks(self, batch: Batch) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {}

    def penalty(self, model, batch: Batch, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        return None
