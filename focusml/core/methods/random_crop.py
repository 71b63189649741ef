"""`random_crop`: with probability `p` per image, the pixels under the mask are replaced by the
same pixels of another training image drawn at random (docs/methods.md).

`x' = x·(1 − m) + x_donor·m`, so pixels outside the mask never change; a soft (blurred) mask
blends the two images. The donor is drawn uniformly from the whole training split, never the
image itself; its content at those pixels (background, a stroke, or another image's decoy of an
unrelated class) carries no information about the label, which breaks the shortcut.
"""

from __future__ import annotations

import torch

from focusml.core.methods.base import Batch, Method, PrepareContext, p_param


def choose(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Which of `n` images get the replacement: independent Bernoulli(p) draws."""
    return torch.rand(n, generator=gen) < p


def donors(index: torch.Tensor, n_train: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random training row for each image, different from its own row when known."""
    if n_train < 2:
        return torch.zeros(len(index), dtype=torch.long)
    pick = torch.randint(0, n_train - 1, (len(index),), generator=gen)
    return pick + (pick >= index).long() * (index >= 0).long()


class RandomCrop(Method):
    name = "random_crop"
    family = "replacement"
    summary = "with probability p, masked pixels replaced by the same pixels of another training image"
    params = (p_param(),)

    def __init__(self, options=None):
        super().__init__(options)
        self.images = None  # the training images: a tensor, or streamed rows (read here, in the training process)

    def prepare(self, ctx: PrepareContext) -> None:
        self.images = ctx.data.split(self.train_split).images

    def transform_batch(self, batch: Batch, gen: torch.Generator) -> Batch:
        if self.images is None:
            raise RuntimeError("random_crop.transform_batch called before prepare")
        on = choose(len(batch.y), self.options["p"], gen)
        src = donors(batch.index, len(self.images), gen)
        if not on.any():
            return batch
        if isinstance(self.images, torch.Tensor):
            donor = self.images[src].to(batch.x.dtype).div(255.0)
        else:  # streamed: read only the donors that are used (the others are multiplied by 0)
            donor = torch.zeros_like(batch.x)
            donor[on] = self.images[src[on]].to(batch.x.dtype).div(255.0).to(batch.x.device)
        m = (batch.m * on.view(-1, 1, 1).to(batch.m.dtype))[:, None]
        return batch.replace(x=batch.x * (1 - m) + donor * m)
