"""`selective_dropout`: with probability `p` per image, the activations of the chosen layers are
set to zero at the positions of the mask taken to that layer's grid (docs/methods.md).

The mask goes to each layer's h×w grid by adaptive max pooling (a cell is dropped when any pixel
of its footprint is irrelevant) and the activations are multiplied by `1 − m↓`, so a binary
mask zeroes exactly those cells in every channel and a soft mask scales them down. The hooks act
in the training forward pass only (the loop applies `layer_hooks` there and nowhere else), so
evaluation, CAMs and the logged model are untouched.

`--layers` is a comma-separated list of layer names: `input` (the image itself), `last` (the
output of the last convolutional block, i.e. the final ReLU of `model.features`), or any module
name of the model (`focusml.core.models`, e.g. `features.4` for the second conv block's ReLU of the
small CNN, `features.layer3` for a ResNet's third stage, `features.denseblock2` for a DenseNet).
Default: `input,last`. A named module must give a 4-D activation map and run once per forward
pass: a ResNet block's `relu` module runs twice (after bn1 and after the addition), so it is
refused in favour of the block itself (`features.layer3.1`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from focusml import FocusmlError
from focusml.core.methods.base import Batch, Method, Param, PrepareContext, p_param
from focusml.core.methods.random_crop import choose


def zero_masked(out: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Multiply N×K×h×w activations by 1 − (masks N×H×W max-pooled to h×w)."""
    md = F.adaptive_max_pool2d(m[:, None].to(out.dtype), out.shape[-2:])
    return out * (1 - md)


def last_block(model: torch.nn.Module) -> str:
    """Module name of the last layer of `model.features` (its output is the feature map A)."""
    if hasattr(model, "last_layer"):  # your own network (`models.Adapted`): the layer it names
        return model.last_layer
    names = [n for n, _ in model.features.named_children()]
    return f"features.{names[-1]}" if names else "features"


def layer_names(model: torch.nn.Module, limit: int = 40) -> str:
    """The model's module names for a message: all of them for a small net, the first two levels under
    `features` for a deep one (a ResNet has hundreds)."""
    names = [n for n, _ in model.named_modules() if n]
    if len(names) <= limit:
        return ", ".join(sorted(names))
    short = [n for n in names if n.count(".") <= 2 and n.startswith("features.")]
    return ", ".join(short[:limit]) + f", ... ({len(names)} in all: see model.named_modules())"


def check_layers(model: torch.nn.Module, names: list[str], split, device) -> None:
    """Refuse a layer whose output is not an N×K×h×w map, or that runs more than once per forward pass
    (its zeroing would be applied twice: a ResNet block's shared `relu`). One forward pass of one image."""
    if not names:
        return
    modules = dict(model.named_modules())
    seen: dict[str, list] = {n: [] for n in names}
    handles = [modules[n].register_forward_hook(lambda mod, inp, out, n=n: seen[n].append(getattr(out, "ndim", None)))
               for n in names]
    x, _, _ = split.batch(torch.arange(1))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.forward_features(x.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, calls in seen.items():
        if len(calls) > 1:
            raise FocusmlError(f"--layers for method 'selective_dropout' names '{name}', which runs {len(calls)} times "
                               "per forward pass (a module shared inside a block, like a ResNet block's relu); name "
                               f"the block instead, e.g. '{name.rsplit('.', 1)[0]}'.")
        if calls and calls[0] != 4:
            raise FocusmlError(f"--layers for method 'selective_dropout' names '{name}', whose output is not an "
                               "activation map (N×K×h×w); name a convolutional layer or block.")


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
        """Every name in `--layers` must be input, last or a module of the model whose output is an
        activation map, run once per forward pass (refused before the run)."""
        check_layers(model, [n for n in self.resolve(model) if n != "input"], data.split("train"), device)

    def prepare(self, ctx: PrepareContext) -> None:
        self.layers = self.resolve(ctx.model)

    def resolve(self, model: torch.nn.Module) -> list[str]:
        """`--layers` as module names of `model` (`input` kept as is), duplicates dropped."""
        modules = {n for n, _ in model.named_modules() if n}
        resolved = []
        for name in self.layers:
            name = last_block(model) if name == "last" else name
            if name != "input" and (not name or name not in modules):
                raise FocusmlError(
                    f"--layers for method 'selective_dropout' names '{name}', which the model does not have. "
                    f"Use input, last or a module name: {layer_names(model)}."
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
