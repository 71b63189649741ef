"""CAM-capable networks: convolutional features → global average pooling → one linear layer.

Every model exposes `features` (ending with a ReLU, so A ≥ 0) and `classifier` (the linear
layer whose weights w_ck turn feature maps into class activation maps). `forward` returns
logits only, which keeps the logged MLflow model a plain image → logits function.
"""

from __future__ import annotations

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


def small_cnn(in_channels: int, num_classes: int, width: int = 32) -> CamNet:
    """Three 3×3 conv blocks (two 2× poolings): 28×28 → 7×7 grid, ~70k parameters, fast on CPU."""
    w = width
    features = nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
    )
    return CamNet(features, 2 * w, num_classes)


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


MODELS = {"small": small_cnn, "vgg11": vgg_cam}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                pretrained: str | None = None) -> CamNet:
    """Build model `name`; optionally load a local state dict (weights_only, shape-matching keys)."""
    if name == "small":
        model = small_cnn(in_channels, num_classes)
    elif name == "vgg11":
        model = vgg_cam(in_channels, num_classes, image_size)
    else:
        raise FocusmlError(f"unknown model '{name}'. Known models: {', '.join(MODELS)}.")
    if pretrained:
        load_pretrained(model, Path(pretrained))
    return model


def load_pretrained(model: nn.Module, path: Path) -> list[str]:
    """Load matching tensors from a local checkpoint (never downloads); return the loaded keys."""
    if not path.is_file():
        raise FocusmlError(f"pretrained weights {path} not found. Pass a local .pt/.pth state dict (nothing is downloaded).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    # torchvision VGG checkpoints name the conv stack `features.N`, as CamNet does.
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise FocusmlError(f"pretrained weights {path}: no tensor matches the model's layers by name and shape.")
    model.load_state_dict(matched, strict=False)
    return sorted(matched)
