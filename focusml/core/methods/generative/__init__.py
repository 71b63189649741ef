"""`generative`: with probability `p` per image, the pixels under the mask are replaced by an
inpainting model's output `G(x⊙(1−m), m)` (docs/methods.md).

`x' = x·(1 − m) + G(x⊙(1−m), m)·m`: pixels outside the mask never change. `prepare` loads the
built-in inpainter from the cache (keyed by the dataset fingerprint) or trains it on the
training images with holes that avoid the irrelevance masks (`inpainter.py` beside this module), and logs the
weights as the run artifact `inpainter/`. `--inpainter module:callable` uses the user's own
instead (contract in its docstring).
"""

from __future__ import annotations

import torch

from focusml.core.methods.generative import inpainter
from focusml.core.methods.base import Batch, Method, Param, PrepareContext, p_param
from focusml.core.methods.random_crop import choose


class Generative(Method):
    name = "generative"
    family = "replacement"
    summary = "with probability p, masked pixels replaced by an inpainter's output G(x⊙(1−m), m)"
    params = (
        p_param(),
        Param("inpainter", str, "",
              "your own inpainter as module:callable, fn(x_masked, m) -> image or a class built with no "
              "arguments; empty = the built-in one, trained once per dataset and cached"),
    )

    settings = inpainter.InpainterSettings()  # the built-in inpainter's training recipe

    def __init__(self, options=None):
        super().__init__(options)
        self.inpaint = None
        self.device = torch.device("cpu")
        self.spec = (self.options["inpainter"] or "").strip()
        if self.spec:
            inpainter.check_spec(self.spec)  # the form only: nothing is imported yet

    def check(self, model, data, device) -> None:
        """A user's inpainter is loaded and called once on two training images before the run starts."""
        if self.spec:
            self.inpaint = inpainter.load_user(self.spec, device)
            split = data.split(self.train_split)
            x, m, _ = split.batch(torch.arange(min(2, len(split))))
            inpainter.check_user(self.inpaint, self.spec, x.to(device), m.to(device))

    def prepare(self, ctx: PrepareContext) -> None:
        self.device = ctx.device
        if self.spec:
            if self.inpaint is None:
                self.inpaint = inpainter.load_user(self.spec, ctx.device)
            return
        model, path, _ = inpainter.load_or_train(ctx.data, self.train_split, ctx.cache_dir, ctx.device,
                                                 self.settings, ctx.progress)
        self.inpaint = model
        ctx.log_artifact(path, "inpainter")

    def transform_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        if self.inpaint is None:
            raise RuntimeError("generative.transform_batch called before prepare")
        on = choose(len(batch.y), self.options["p"], gen)
        m = batch.m * on.view(-1, 1, 1).to(batch.m.dtype)
        if not bool((m > 0).any()):
            return batch
        x = inpainter.fill(self.inpaint, batch.x.to(self.device), m.to(self.device)).to(batch.x.device)
        return batch.replace(x=x)
