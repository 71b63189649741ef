"""The one seam between the training loop and a method: a tiny base class of optional hooks.

A method is a `Method` subclass in its own module under `focusml/core/methods/`; the registry finds
it by its `name`, so the loop, the CLI, the MLproject and the tuner pick it up without edits.

Hooks (all optional, called by `focusml.core.run.run` and `focusml.core.train.fit`):
- `check(model, data, device)`: before the run starts, refuse options that do not fit the model
  or data (`FocusmlError`), so a bad option never leaves a FAILED run behind;
- `prepare(ctx)`: once before training (e.g. train an inpainter);
- `transform_batch(batch, gen)`: replace pixels / add examples before the forward pass;
- `layer_hooks(batch)`: {module name: fn(output) -> output} applied in the training forward only;
- `penalty(model, batch, features, logits)`: the unweighted extra loss; the loop adds λ·penalty.

A refinement method that replaces the training loop (`replaces_training`, e.g. `head_refit`)
implements `fit(model, data, config, device, callbacks, evaluator, select)` instead, returning
the validation metrics of the model it leaves; `needs_init` makes `--init-from` required.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from focusml import FocusmlError
from focusml.core import counterfactual
from focusml.core.cam import guarded, mask_to_grid, object_cells, region_evidence
from focusml.core.models import grid_margin
from focusml.core.values import coerce


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
    auto: bool = False  # also accepts "auto": the method works the value out from the model and data

    def validate(self, value: Any, method: str) -> Any:
        if self.auto and str(value) == "auto":
            return "auto"
        if self.type in (float, int):  # a bool is no number, an int is whole (focusml.core.values)
            value = coerce(f"--{self.name.replace('_', '-')} for method '{method}'", value, self.type.__name__)
            if math.isnan(value) or math.isinf(value):
                raise FocusmlError(f"--{self.name.replace('_', '-')} for method '{method}' is {value}; give a finite number.")
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


def grid_dilate_param(default: int | str = "auto") -> Param:
    """Grow m↓ by N feature-grid cells (0 = the exact m↓ of docs/methods.md; auto = the receptive field's reach).

    A cell next to the mask sees the masked pixels through its receptive field, so a shortcut
    silenced in its own cell moves to the neighbours. `auto` grows m↓ as far as a cell's
    receptive field reaches (`models.grid_margin`); the best margin still depends on the data,
    which is why the studies search it.
    """
    return Param("grid_dilate", int, default,
                 "grow the mask on the feature grid by N cells (0 = exact m↓; auto = as far as a cell's receptive "
                 "field reaches); neighbours of the mask see it through their receptive field", low=0, high=8,
                 auto=True)


def evidence_param(default: str = "all") -> Param:
    """Which evidence inside the mask a loss method penalises."""
    return Param("evidence", str, default,
                 "positive = the thesis's definition (positive CAM only); all = every class's evidence, both signs, "
                 "so a shortcut cannot survive as evidence against the other classes", choices=("positive", "all"))


def object_guard_param() -> Param:
    """Keep the object's cells out of m↓ when the mask covers most of the image (`cam.mask_to_grid`)."""
    return Param("object_guard", str, "on",
                 "on = m↓ never takes more than half of an image's mostly unmasked cells: the margin shrinks, and a "
                 "mask covering most of the image (a background) keeps to its mostly masked cells, leaving the "
                 "object's; off = the max-pooled, grown mask everywhere", choices=("on", "off"))


def grid_dilate_cells(value, model, grid: tuple[int, int]) -> int:
    """An int `grid_dilate`: "auto" worked out from the model's receptive field on a feature grid of size `grid`."""
    return grid_margin(model, min(grid)) if value == "auto" else int(value)


class GridMaskMethod:
    """Mixin for loss methods that take the mask to the feature grid, grown by `grid_dilate` cells.

    `prepare` works out an `auto` margin once (one forward pass) and logs it as `grid_dilate_cells`,
    with `object_guard_share`: the share of (up to 1,000) training images whose grid mask the
    object guard cuts back (0 on small masks); without `prepare` (e.g. a penalty called directly)
    the margin is worked out on the first batch.
    """

    margin: int | None = None

    def prepare(self, ctx: "PrepareContext") -> None:
        x, _, _ = ctx.data.split("train").batch(torch.arange(1))
        was_training = ctx.model.training
        ctx.model.eval()
        with torch.no_grad():
            a, _ = ctx.model.forward_features(x.to(ctx.device))
        ctx.model.train(was_training)
        self.margin = grid_dilate_cells(self.options["grid_dilate"], ctx.model, a.shape[-2:])
        masks = ctx.data.split("train").masks[torch.arange(min(1000, len(ctx.data.split("train"))))].float()
        grid = mask_to_grid(masks, a.shape[-2:], self.margin, keep_object=False)[:, None]
        share = float(guarded(grid, object_cells(masks, a.shape[-2:])).float().mean()) if self.keep_object else 0.0
        ctx.log_params({"grid_dilate_cells": self.margin, "object_guard_share": round(share, 3)})

    @property
    def keep_object(self) -> bool:
        return self.options.get("object_guard", "on") == "on"

    def swapped(self, batch: "Batch") -> torch.Tensor:
        """Bool per image: is its masked content's evidence measured by swapping it (`evidence`)?"""
        if not self.keep_object:
            return torch.zeros(len(batch.m), dtype=torch.bool, device=batch.m.device)
        return counterfactual.is_large(batch.m)

    def evidence(self, model, batch: "Batch", features: torch.Tensor, logits: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inside, outside), N×C: the masked content's and the rest's class-centred share of the logits.

        From the cells (`cam.region_evidence`), except, with the object guard on, for images whose mask
        covers most of the image: every cell of the object then also sees the background through its
        receptive field, so no split of the cells separates the two. There the masked content's share is
        measured by swapping it (`swapped_evidence`)."""
        inside, outside = region_evidence(features, model.classifier.weight, batch.m, self.cells(model, features),
                                          self.keep_object)
        large = self.swapped(batch)
        if large.any():
            sw_in, sw_out = swapped_evidence(model, batch.x[large], batch.m[large], logits[large])
            inside, outside = inside.clone(), outside.clone()
            inside[large], outside[large] = sw_in, sw_out
        return inside, outside


    def cells(self, model, features: torch.Tensor) -> int:
        if self.margin is None:
            self.margin = grid_dilate_cells(self.options["grid_dilate"], model, features.shape[-2:])
        return self.margin


def swapped_evidence(model, x: torch.Tensor, m: torch.Tensor, logits: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside, outside), N×C: z(x) − z(x̃) and z(x̃) − b, class-centred, with x̃ = x on the next image's background.

    z(x) − b splits exactly into the two: what the masked content adds, measured by replacing it,
    and what the logits are without it."""
    donor = torch.roll(torch.arange(len(x), device=x.device), 1)
    donor_bg = counterfactual.background_source(x[donor], m[donor])
    _, swapped = model.forward_features(counterfactual.swap_background(x, m, donor_bg))
    bias = model.classifier.bias if model.classifier.bias is not None else torch.zeros_like(logits[0])
    inside, outside = logits - swapped, swapped - bias
    return inside - inside.mean(1, keepdim=True), outside - outside.mean(1, keepdim=True)


def p_param(default: float = 1.0) -> Param:
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

    data: Any  # focusml.core.data.Dataset
    config: Any  # focusml.core.config.RunConfig
    model: torch.nn.Module
    cache_dir: Path
    device: torch.device
    log_artifact: Callable[[Path, str], None] = lambda path, artifact_path: None
    log_params: Callable[[dict], None] = lambda params: None  # values `prepare` worked out (e.g. an "auto")
    progress: Callable[[str, int, int], None] = lambda desc, i, n: None
    extra: dict = field(default_factory=dict)


class Method:
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # reference | replacement | loss | peer | refinement
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    uses_masks: ClassVar[bool] = True
    train_split: ClassVar[str] = "train"
    needs_input_grad: ClassVar[bool] = False
    needs_init: ClassVar[bool] = False  # works on a trained model only: --init-from is required
    replaces_training: ClassVar[bool] = False  # `fit` replaces the training loop (no epochs)
    exact_cam: ClassVar[bool] = False  # needs logits = classifier(GAP(A)): refused on a model whose CAM is approximate

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

    def check(self, model: torch.nn.Module, data: Any, device: torch.device) -> None:
        """Refuse options that do not fit this model or data (FocusmlError), before the run starts."""
        return None

    def prepare(self, ctx: PrepareContext) -> None:
        return None

    def transform_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        return batch

    def layer_hooks(self, batch: Batch) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {}

    def penalty(self, model, batch: Batch, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def fit(self, model, data: Any, config: Any, device: torch.device, callbacks: Any, evaluator: Any,
            select: str) -> dict[str, float]:
        """A `replaces_training` method's whole fit: change `model` in place; return its validation metrics."""
        raise NotImplementedError(f"method '{self.name}' trains with the training loop")
