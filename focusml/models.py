"""CAM-capable networks: convolutional features → global average pooling → one linear layer.

Every model exposes `features` (ending with a ReLU, so A ≥ 0) and `classifier` (the linear
layer whose weights w_ck turn feature maps into class activation maps). `forward` returns
logits only, which keeps the logged MLflow model a plain image → logits function.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from focusml import FocusmlError


class CamNet(nn.Module):
    def __init__(self, features: nn.Sequential, channels: int, num_classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (A, logits): A is K×h×w after the last ReLU, logits = W·GAP(A) + b."""
        a = self.features(x)
        return a, self.classifier(self.pool(a).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def kaiming_init(model: nn.Module) -> nn.Module:
    """He initialisation as torchvision's VGG and ResNet use it (fan-out, zero bias).

    PyTorch's default conv initialisation shrinks the signal layer by layer; a plain conv stack
    then sits at chance for several epochs before it starts to learn, and whether it learns the
    object in the budget depends on the seed. He initialisation keeps the signal's scale.
    """
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    return model


def small_cnn(in_channels: int, num_classes: int, width: int = 32, batch_norm: bool = False) -> CamNet:
    """Three 3×3 conv blocks (two 2× poolings): 28×28 → 7×7 grid, ~70k parameters, fast on CPU.

    `batch_norm=True` puts a BatchNorm after every convolution (`small-bn`): it learns the object
    faster, which also means it ignores the weaker built-in shortcuts (docs/benchmarks.md).
    """
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), *([nn.BatchNorm2d(cout)] if batch_norm else []), nn.ReLU()]

    w = width
    features = nn.Sequential(*block(in_channels, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                             *block(2 * w, 2 * w))
    return kaiming_init(CamNet(features, 2 * w, num_classes))


def vgg_cam(in_channels: int, num_classes: int, image_size: int = 28, arch: str = "vgg11") -> CamNet:
    """torchvision's VGG feature stack (weights=None) with a GAP head.

    Poolings are dropped from the end until the feature grid is at least 4×4 for `image_size`,
    and the trailing pooling is always removed so the features end with a ReLU.
    """
    import torchvision  # only vgg11 needs it, and importing torchvision takes seconds

    vgg = getattr(torchvision.models, arch)(weights=None)
    layers = list(vgg.features)
    if in_channels != 3:
        first = layers[0]
        layers[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
    while isinstance(layers[-1], nn.MaxPool2d):
        layers.pop()
    pools = [i for i, l in enumerate(layers) if isinstance(l, nn.MaxPool2d)]
    while pools and image_size // (2 ** len(pools)) < 4:
        layers.pop(pools.pop())
    channels = [l for l in layers if isinstance(l, nn.Conv2d)][-1].out_channels
    return CamNet(nn.Sequential(*layers), channels, num_classes)


MODELS = {"small": small_cnn, "small-bn": small_cnn, "vgg11": vgg_cam}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                pretrained: str | None = None) -> CamNet:
    """Build model `name`; optionally load a local state dict (weights_only, shape-matching keys)."""
    if name in ("small", "small-bn"):
        model = small_cnn(in_channels, num_classes, batch_norm=name == "small-bn")
    elif name == "vgg11":
        model = vgg_cam(in_channels, num_classes, image_size)
    else:
        raise FocusmlError(f"unknown model '{name}'. Known models: {', '.join(MODELS)}.")
    if pretrained:
        load_pretrained(model, Path(pretrained))
    return model


def receptive_field(features: nn.Module) -> tuple[int, int] | None:
    """(size, stride) in pixels of one cell of a plain conv stack's output grid; None for other nets.

    Walks a `nn.Sequential` of convolutions, poolings and element-wise layers (the standard
    recursion r += (k − 1)·j, j *= s); a network with branches (ResNet, DenseNet) returns None.
    """
    if not isinstance(features, nn.Sequential):
        return None
    size, stride = 1, 1
    for layer in features:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, d = (_pair(getattr(layer, a, 1)) for a in ("kernel_size", "stride", "dilation"))
            size += (d * (k - 1)) * stride
            stride *= s
        elif not isinstance(layer, (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)):
            return None
    return size, stride


def _pair(v) -> int:
    return int(v[0] if isinstance(v, tuple) else v)


def grid_margin(model: CamNet, grid: int, fallback: int = 1) -> int:
    """Feature-grid cells beyond a masked cell that still see its pixels through their receptive field.

    A cell's receptive field reaches (size − stride)/2 pixels past its own footprint, i.e.
    ⌈(size − stride) / (2·stride)⌉ cells. Deep stacks have theoretical fields far wider than the
    part that matters, so the margin is capped at a third of the grid side `grid` (at least 1):
    a masked cell never takes the whole grid with it. Where the field cannot be computed
    (networks with branches), `fallback`.
    """
    rf = receptive_field(model.features)
    if rf is None:
        return fallback
    size, stride = rf
    return min(max(0, -(-(size - stride) // (2 * stride))), max(1, grid // 3))


STATE_DICT_HINT = ("Pass a local .pt/.pth file written by torch.save(model.state_dict(), path); only tensors "
                   "are loaded (weights_only=True), never pickled code, and nothing is downloaded.")


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors of a local checkpoint, loaded with `weights_only=True`; FocusmlError otherwise.

    Accepts a state dict or a dict holding one under "state_dict". Anything else (a text, JSON or
    pickle file, a pickled module or other objects, one tensor, a list) is refused with one line
    naming the file and what a valid file is; nothing in the file is ever executed.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise FocusmlError(f"pretrained weights must be a file path, got {path!r}. {STATE_DICT_HINT}")
    path = Path(path)
    if not path.is_file():
        raise FocusmlError(f"pretrained weights {path} not found. {STATE_DICT_HINT}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a file that is refused anyway
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FocusmlError(f"pretrained weights {path} is not a weights-only PyTorch checkpoint (it pickles Python "
                           f"objects other than tensors, or is another kind of file). {STATE_DICT_HINT}") from None
    except Exception as e:  # torch.load fails on foreign files with anything from KeyError to RuntimeError
        raise FocusmlError(f"pretrained weights {path} is not a readable PyTorch checkpoint (empty, truncated or "
                           f"another format: {type(e).__name__}). {STATE_DICT_HINT}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FocusmlError(f"pretrained weights {path} holds {_describe(state)}, not a state dict (layer names → "
                           f"tensors). {STATE_DICT_HINT}")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise FocusmlError(f"pretrained weights {path} holds a dict without tensors, not a state dict (layer names → "
                           f"tensors). {STATE_DICT_HINT}")
    return tensors


_CHECKED: set[tuple] = set()


def check_state_dict_file(path: str | Path) -> None:
    """`read_state_dict` for validation: a file already found valid (same size and mtime) is not reread."""
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except (OSError, TypeError, ValueError):
        key = None
    if key is not None and key in _CHECKED:
        return
    read_state_dict(path)
    if key is not None:
        _CHECKED.add(key)


def load_pretrained(model: nn.Module, path: Path) -> list[str]:
    """Load matching tensors from a local checkpoint (never downloads); return the loaded keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    # torchvision VGG checkpoints name the conv stack `features.N`, as CamNet does.
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise FocusmlError(f"pretrained weights {path}: no tensor matches the model's layers by name and shape.")
    model.load_state_dict(matched, strict=False)
    return sorted(matched)
