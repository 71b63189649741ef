"""Will a run fit in memory? Estimated before anything large is allocated, so that a size that cannot
fit is refused with one line (exit 2) instead of growing until the kernel's OOM killer ends the
process, and perhaps another one beside it (issue 26).

`needed` is a lower bound of what a training run holds at once: the decoded dataset when it is
held in memory (uint8 images and masks), one training batch as float32, the network's activations
for that batch (every layer's output, kept for the backward pass: measured by a forward pass on
PyTorch's meta device, which allocates nothing) and its weights, gradients and Adam's two moments.
Left out (workspace, evaluation buffers, the interpreter): a run this refuses could never have run.

The memory available is `FOCUSML_MEMORY_AVAILABLE` when set (bytes, or a number with K, M, G or T:
to cap a run on a shared machine, and to test the refusal), else the kernel's MemAvailable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from focusml import FocusmlError

ENV = "FOCUSML_MEMORY_AVAILABLE"
#: `--data-loading auto` streams a folder dataset whose decoded tensors exceed this share of the available
#: memory: the rest is for the model, evaluation buffers (counterfactual splits are built in float) and others
MEMORY_SHARE = 0.25
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def available() -> int:
    """Bytes available to new allocations now: `FOCUSML_MEMORY_AVAILABLE`, else MemAvailable (psutil, or
    /proc/meminfo where psutil is missing)."""
    given = os.environ.get(ENV)
    if given:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", given, re.IGNORECASE)
        if not match:
            raise FocusmlError(f"{ENV} is {given!r}; give bytes, or a number with K, M, G or T (e.g. 8G).")
        return int(float(match.group(1)) * UNITS[match.group(2).upper()])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise FocusmlError(f"cannot tell the memory available here; set {ENV} (e.g. 8G).")


def size(nbytes: float) -> str:
    """Bytes for people: 1.5 GiB, 320 MiB, 7.3 TiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


@dataclass
class Need:
    """The parts of `needed`, in bytes."""

    data: int  # the decoded dataset held in memory (0 when streamed)
    batch: int  # one training batch as float32
    activations: int  # the network's layer outputs for that batch
    weights: int  # parameters, gradients and Adam's two moments

    @property
    def total(self) -> int:
        return self.data + self.batch + self.activations + self.weights


#: A CNN's activations for a batch measured 35–40× the batch's own bytes (small, resnet18); a run whose data
#: and 1000× its batch fit is far from the limit, and its network is not measured (the first forward pass on
#: the meta device costs seconds: PyTorch loads its meta kernels then)
FAR = 1000


def activations(model: str, channels: int, num_classes: int, height: int, width: int, batch: int) -> tuple[int, int]:
    """(activation bytes, parameter bytes) of network `model` for a float32 batch of `batch` images, from a
    forward pass on the meta device: shapes only, nothing allocated, whatever the image size. The network
    is built at its real size on the CPU (its weights are small beside what is measured), then moved."""
    from focusml.core.models import build_model

    net = build_model(model, channels, num_classes, max(height, width)).to("meta")
    total = 0

    def count(module, inputs, output):
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        for out in outs:
            if isinstance(out, torch.Tensor) and not any(out is i for i in inputs):  # in-place: no new tensor
                total += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(torch.empty(batch, channels, height, width, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total, sum(p.numel() * p.element_size() for p in net.parameters())


def needed(model: str, channels: int, num_classes: int, height: int, width: int, batch: int,
           data_bytes: int) -> Need:
    """What a run needs at least (see the module docstring); `data_bytes`: the dataset held in memory."""
    acts, params = activations(model, channels, num_classes, height, width, batch)
    return Need(data=data_bytes, batch=batch * channels * height * width * 4, activations=acts, weights=4 * params)


def largest_size(fits, start: int) -> int | None:
    """The largest square image size in 8 … `start` for which `fits(size)` holds, by bisection (memory grows
    with the pixels; a handful of meta forward passes); None if not even 8 fits."""
    for low in (8, 16, 32, 64):  # the smallest size the network takes (resnet: 16, as its stem divides by 4)
        try:
            small = fits(low)
        except FocusmlError:
            continue
        break
    else:
        return None
    high = start
    if high < low or not small:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def streams(loading: str, nbytes: int, have: int) -> bool:
    """Whether `--data-loading loading` streams a dataset of `nbytes` decoded bytes when `have` bytes are available."""
    return loading == "stream" or (loading == "auto" and nbytes > MEMORY_SHARE * have)


def check(model: str, channels: int, num_classes: int, height: int, width: int, batch: int, decoded: int,
          streamed: bool, image_size: int | None, loading: str = "auto") -> None:
    """Refuse (FocusmlError, one line naming the numbers and the fix) a run whose `needed` exceeds `available()`.

    `decoded`: the dataset's bytes when held in memory (held unless `streamed`). The fix: `--data-loading
    stream` when the dataset held in memory is what does not fit, else the largest `--image-size` that fits
    with `loading` as given (auto streams at the smaller size only if its rule says so), else a smaller batch."""
    have = available()
    held = 0 if streamed else decoded
    if held + FAR * batch * channels * height * width * 4 <= have:
        return
    need = needed(model, channels, num_classes, height, width, batch, held)
    if need.total <= have:
        return
    what = f"--image-size {image_size}" if image_size else f"images of {width}×{height}"
    parts = (f"a batch of {batch} images {width}×{height}×{channels} as float32: {size(need.batch)}; "
             f"the network's activations for it: {size(need.activations)}; the decoded dataset: "
             f"{'streamed' if streamed else size(need.data)}")
    if not streamed and need.total - need.data <= have:
        fix = "--data-loading stream (images read from disk per batch)"
    else:
        def fits(s: int) -> bool:
            at = decoded * s * s // (height * width)
            kept = 0 if streams(loading, at, have) else at
            return needed(model, channels, num_classes, s, s, batch, kept).total <= have

        best = largest_size(fits, max(height, width) - 1)
        fix = f"--image-size {best} or less" if best else f"a smaller --batch-size than {batch}"
    raise FocusmlError(f"{what} needs at least {size(need.total)} of memory ({parts}), but {size(have)} is "
                       f"available here: use {fix}.")
