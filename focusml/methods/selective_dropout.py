"""`selective_dropout`: with probability `p` per image, the activations of the chosen layers are
set to zero at the positions of the mask taken to that layer's grid (docs/methods.md).

The mask goes to each layer's h×w grid by adaptive max pooling (a cell is dropped when any pixel
of its footprint is irrelevant) and the activations are multiplied by `1 − m↓`, so a binary
mask zeroes exactly those cells in every channel and a soft mask scales them down. The hooks act
in the training forward pass only (the loop applies `layer_hooks` there and nowhere else), so
evaluation, CAMs and the logged model are untouched.

`--layers` is a comma-separated list of layer names: `input` (the image itself), `last` (the
output of the last convolutional block, i.e. the final ReLU of `model.features`), or any module
name of the model (`focusml.models`, e.g. `features.4` for the second conv block's ReLU of the
small CNN). Default: `input,last`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from focusml import FocusmlError
from focusml.methods.base import Batch, Method, Param, PrepareContext, p_param
from focusml.methods.random_crop import choose


def zero_masked(out: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Multiply N×K×h×w activations by 1 − (masks N×H×W max-pooled to h×w)."""
    md = F.adaptive_max_pool2d(m[:, None].to(out.dtype), out.shape[-2:])
    return out * (1 - md)


def last_block(model: torch.nn.Module) -> str:
    """Module name of the last layer of `model.features` (its output is the feature map A)."""
    names = [n for n, _ in model.features.named_children()]
    return f"features.{names[-1]}" if names else "features"


class SelectiveDropout(Method):
    name = "selective_dropout"
    family = "replacement"
    summary = "with probability p, activations of chosen layers zeroed at the mask's cells (training only)"
    params = (
        p_param(),
        Param("layers", str, "input,last",
              "comma-separated layers whose activations are zeroed under the mask: input, last (last conv "
              "block) or module names such as features.4"),
    )

    def __init__(self, options=None):
        super().__init__(options)
        self.layers = [s.strip() for s in str(self.options["layers"]).split(",") if s.strip()]
        if not self.layers:
            raise FocusmlError("--layers for method 'selective_dropout' is empty; give e.g. input,last.")

    def check(self, model, data, device) -> None:
        """Every name in `--layers` must be input, last or a module of the model (refused before the run)."""
        self.resolve(model)

    def prepare(self, ctx: PrepareContext) -> None:
        self.layers = self.resolve(ctx.model)

    def resolve(self, model: torch.nn.Module) -> list[str]:
        """`--layers` as module names of `model` (`input` kept as is), duplicates dropped."""
        modules = {n for n, _ in model.named_modules() if n}
        resolved = []
        for name in self.layers:
            name = last_block(model) if name == "last" else name
            if name != "input" and name not in modules:
                raise FocusmlError(
                    f"--layers for method 'selective_dropout' names '{name}', which the model does not have. "
                    f"Use input, last or one of: {', '.join(sorted(modules))}."
                )
            resolved.append(name)
        return list(dict.fromkeys(resolved))

    def transform_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        """Draw which images are dropped this step; the others get an all-zero mask for the hooks."""
        on = choose(len(batch.y), self.options["p"], gen)
        return batch.replace(m=batch.m * on.view(-1, 1, 1).to(batch.m.dtype))

    def layer_hooks(self, batch: Batch):
        m = batch.m
        if not bool((m > 0).any()):
            return {}
        return {name: (lambda out, m=m: zero_masked(out, m)) for name in self.layers}
