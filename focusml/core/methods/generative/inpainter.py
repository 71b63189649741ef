"""The inpainting model of the `generative` method: G(x⊙(1−m), m) → a plausible image.

Built in: a small fully convolutional network (dilated 3×3 convolutions, ~30k parameters) that
sees the holed image and the hole and predicts every pixel. It is trained on the dataset's own
training images with random holes that never overlap an irrelevance mask: each hole is either a
random rectangle or the mask of another training image, minus the image's own mask, and the loss
(L1) is taken over the hole pixels only. So the inpainter learns what the relevant content of the
data looks like and never learns to draw the shortcut. Trained weights are cached under
`<cache_dir>/inpainters/<dataset fingerprint>-<settings hash>.pt`, so a second run on the same
data reuses them.

A user's own inpainter: `--inpainter module:callable`. The named object is used as
`fn(x_masked, m) -> x_filled`, with `x_masked` N×C×H×W floats in [0, 1] (masked pixels set to 0),
`m` N×1×H×W floats in [0, 1] (1 = fill here) and the result N×C×H×W in [0, 1]; only its values
under the mask are used. If the named object is a class, it is instantiated once with no
arguments and the instance is used (an `nn.Module` is moved to the run's device and put in
eval mode). Randomness and training are the user's business; focusml never trains it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from focusml import FocusmlError

VERSION = 1  # bump when the architecture or training recipe changes (invalidates the cache)


class ConvInpainter(nn.Module):
    """(image with holes, hole mask) → image; dilations 1,2,4,8,1 give a ~35-pixel receptive field."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        dil = (1, 2, 4, 8, 1)
        layers: list[nn.Module] = []
        c_in = channels + 1
        for d in dil:
            layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d), nn.ReLU()]
            c_in = width
        layers.append(nn.Conv2d(width, channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x_masked: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([x_masked, m], dim=1)))


@dataclass(frozen=True)
class InpainterSettings:
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def random_holes(own: torch.Tensor, pool: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Training holes (N×H×W in {0,1}) that never overlap the images' own masks `own`.

    Each is an axis-aligned rectangle with sides in [H/8, H/2] or, for about half of them, the
    mask of a random image from `pool` when that does not touch the own mask (so holes also look
    like the annotated regions); finally minus `own`.
    """
    n, h, w = own.shape
    holes = torch.zeros(n, h, w)
    lo_h, lo_w = max(1, h // 8), max(1, w // 8)
    hs = torch.randint(lo_h, max(lo_h + 1, h // 2 + 1), (n,), generator=gen)
    ws = torch.randint(lo_w, max(lo_w + 1, w // 2 + 1), (n,), generator=gen)
    ys = (torch.rand(n, generator=gen) * (h - hs + 1).float()).long()
    xs = (torch.rand(n, generator=gen) * (w - ws + 1).float()).long()
    for i in range(n):
        holes[i, ys[i] : ys[i] + hs[i], xs[i] : xs[i] + ws[i]] = 1
    borrow = torch.rand(n, generator=gen) < 0.5
    if len(pool) and borrow.any():
        picks = torch.randint(0, len(pool), (n,), generator=gen)
        borrowed = (pool[picks].float() > 0).float()
        has = borrowed.flatten(1).sum(1) > 0
        clash = (borrowed * (own > 0).float()).flatten(1).sum(1) > 0  # keep the rectangle instead
        use = borrow & has & ~clash
        holes[use] = borrowed[use]
    return holes * (own <= 0).float()


def train_inpainter(images: torch.Tensor, masks: torch.Tensor, settings: InpainterSettings,
                    device: torch.device, progress: Callable[[str, int, int], None] = lambda d, i, n: None
                    ) -> ConvInpainter:
    """Train on uint8 images N×C×H×W with their uint8 masks N×H×W (which holes avoid)."""
    gen = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = ConvInpainter(images.shape[1], settings.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.train()
    n = len(images)
    for step in range(settings.steps):
        idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
        x = images[idx].float().div(255.0)
        holes = random_holes(masks[idx], masks, gen)[:, None]
        x, holes = x.to(device), holes.to(device)
        out = model(x * (1 - holes), holes)
        loss = (F.l1_loss(out, x, reduction="none") * holes).sum() / (holes.sum() * x.shape[1]).clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress("training inpainter", step, settings.steps)
    return model.eval()


def cache_path(cache_dir: Path, fingerprint: str, settings: InpainterSettings) -> Path:
    return Path(cache_dir) / "inpainters" / f"{fingerprint}-{settings.key()}.pt"


def load_or_train(data, split_name: str, cache_dir: Path, device: torch.device,
                  settings: InpainterSettings = InpainterSettings(),
                  progress: Callable[[str, int, int], None] = lambda d, i, n: None) -> tuple[ConvInpainter, Path, bool]:
    """The built-in inpainter for `data`: from the cache when present, else trained and cached.

    Returns (model in eval mode, cache file, whether it was trained now).
    """
    path = cache_path(cache_dir, data.fingerprint, settings)
    split = data.split(split_name)
    model = ConvInpainter(split.images.shape[1], settings.width)
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.to(device).eval(), path, False
        except (RuntimeError, OSError, EOFError):
            pass  # a broken or foreign file: train afresh and overwrite it
    model = train_inpainter(split.images, split.masks, settings, device, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never share a temp file
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return model, path, True


SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
EXPECTED = ("give module:callable naming a Python function fn(x_masked, m) -> image, or a class built with no "
            "arguments whose instances are called so (e.g. mypkg.inpaint:Model)")


def check_spec(spec: str) -> None:
    """Refuse a malformed `--inpainter`, or one in Python's standard library, without importing anything."""
    if not SPEC.fullmatch(spec):
        raise FocusmlError(f"--inpainter is {spec!r}; {EXPECTED}.")
    top = spec.split(":")[0].split(".")[0]
    if top in sys.stdlib_module_names:
        raise FocusmlError(f"--inpainter {spec} names Python's standard library (module '{top}'), which holds no "
                           f"inpainter; {EXPECTED}.")


def _python_callable(obj) -> Callable | None:
    """The Python function that calling `obj` runs (a function, a method, an instance's `__call__`), else None."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj
    call = getattr(type(obj), "__call__", None)
    if not isinstance(obj, type) and inspect.isfunction(call):
        return getattr(obj, "forward", None) if isinstance(obj, nn.Module) else obj.__call__
    return None


def load_user(spec: str, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Resolve `module:callable` to an inpainting function (see the module docstring).

    Refused with FocusmlError: a malformed spec, the standard library, a module that does not
    import, a missing attribute, and anything that is not a Python function or class taking
    (x_masked, m): a built-in such as `os:system` is never called.
    """
    spec = spec.strip()
    check_spec(spec)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raised while importing
        raise FocusmlError(f"--inpainter {spec}: cannot import module '{module_name}' ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}). Is it installed or on PYTHONPATH?") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FocusmlError(f"--inpainter {spec}: module '{module_name}' has no attribute '{attr}'.")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise FocusmlError(f"--inpainter {spec}: a class must be constructible with no arguments "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    fn = _python_callable(obj)
    if fn is None:
        kind = ("is a built-in function" if inspect.isbuiltin(obj) else
                f"is callable but not Python code (type {type(obj).__name__})" if callable(obj) else
                f"names a value of type {type(obj).__name__}, not a callable")
        raise FocusmlError(f"--inpainter {spec} {kind}, not an inpainter; {EXPECTED}.")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise FocusmlError(f"--inpainter {spec} takes {inspect.signature(fn)}, but an inpainter is called as "
                           f"fn(x_masked, m); {EXPECTED}.") from None
    except ValueError:
        pass  # no signature to read: the trial call (`check_user`) decides
    if isinstance(obj, nn.Module):
        obj = obj.to(device).eval()
    return obj


def check_user(inpaint: Callable, spec: str, x: torch.Tensor, m: torch.Tensor) -> None:
    """Call the user's inpainter once on a few training images; refuse it (FocusmlError) if that fails."""
    try:
        fill(inpaint, x, m)
    except FocusmlError as e:
        raise FocusmlError(f"--inpainter {spec}: {e}") from None
    except Exception as e:
        raise FocusmlError(f"--inpainter {spec} failed on {len(x)} training images: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}.") from None


def fill(inpaint: Callable, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x with the pixels under m (N×H×W, soft allowed) replaced by inpaint(x⊙(1−m), m)."""
    m4 = m[:, None].to(x.dtype)
    with torch.no_grad():
        out = inpaint(x * (1 - m4), m4)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FocusmlError(f"the inpainter returned {got}; it must return a tensor shaped like its input {tuple(x.shape)}.")
    return x * (1 - m4) + out.to(x.dtype).clamp(0, 1) * m4
