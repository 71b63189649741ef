"""`counterexamples`: counterexample augmentation of CAIPI (Teso & Kersting, AIES 2019,
"Explanatory interactive machine learning").

Each training image with a non-empty mask gets `copies` extra copies in its batch whose masked
pixels are replaced by uniform random noise in [0, 1] (every channel drawn independently), with
the label kept: the model sees that the label does not depend on what lies under the mask. A
soft mask (mask augmentation `blur`) blends, `x' = (1 − m)·x + m·noise`. Added rows carry the
same mask and index −1. Noise comes from the loop's generator, so runs are reproducible.

No λ: the strength is the number of copies (batches grow by the masked share × copies). The
default is the contract's one copy: more copies cost more per epoch without a clear gain
(docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from focusml.core.methods.base import Batch, Method, Param


def counterexample_batch(batch: Batch, gen: torch.Generator, copies: int = 1) -> Batch:
    """The batch followed by `copies` noise-filled copies of each image with a non-empty mask."""
    masked = batch.m.flatten(1).amax(1) > 0
    if copies <= 0 or not masked.any():
        return batch
    x, m, y = batch.x[masked], batch.m[masked], batch.y[masked]
    x, m, y = x.repeat(copies, 1, 1, 1), m.repeat(copies, 1, 1), y.repeat(copies)
    noise = torch.rand(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    w = m[:, None].to(x.dtype)
    fakes = (1 - w) * x + w * noise
    index = torch.full((len(y),), -1, dtype=batch.index.dtype, device=batch.index.device)
    return batch.replace(
        x=torch.cat([batch.x, fakes]), m=torch.cat([batch.m, m]),
        y=torch.cat([batch.y, y]), index=torch.cat([batch.index, index]),
    )


class Counterexamples(Method):
    name = "counterexamples"
    family = "peer"
    summary = "CE (Teso & Kersting 2019): add copies of masked images with noise under the mask, label kept"
    params = (Param("copies", int, 2, "noise-filled copies added per masked training image (1–16)", low=1, high=16),)

    def transform_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        return counterexample_batch(batch, gen, self.options["copies"])
