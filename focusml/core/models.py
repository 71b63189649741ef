"""CAM-capable networks: convolutional features → global average pooling → one linear layer.

Every model exposes `features` (ending with a ReLU, so A ≥ 0) and `classifier` (the linear
layer whose weights w_ck turn feature maps into class activation maps). `forward` returns
logits only, which keeps the logged MLflow model a plain image → logits function.

Models: `small`, `small-bn` (plain conv stacks), and torchvision's `vgg11`, `resnet18`,
`resnet50` and `densenet121` (`weights=None`) with a GAP + linear head, so CAM is exact for
every one of them. ImageNet weights only ever come from a local file (`--pretrained PATH`, or
`--pretrained imagenet` when torchvision's cache under `TORCH_HOME` already holds the file):
nothing is downloaded. `--init-from` loads a whole trained focusml model (`load_init_state`):
every tensor must fit, or the run is refused naming both architectures.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
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


#: the smallest input side the torchvision backbones accept: their stem (a stride-2 conv and a
#: stride-2 pooling) alone takes 16 pixels to a 4×4 grid.
MIN_BACKBONE_SIZE = 16
MIN_GRID = 4


def _halve(n: int) -> int:
    """Output side of the stride-2 layers of ResNet/DenseNet stems and stages: ⌈n/2⌉."""
    return (n + 1) // 2


def _grid(n: int, halvings: int) -> int:
    for _ in range(halvings):
        n = _halve(n)
    return n


def _first_conv(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`old` with `in_channels` input channels (He-initialised, like the rest of torchvision's nets)."""
    conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    return kaiming_init(conv)


def _check_size(arch: str, image_size: int) -> None:
    if image_size < MIN_BACKBONE_SIZE:
        raise FocusmlError(f"model '{arch}' needs images of at least {MIN_BACKBONE_SIZE}×{MIN_BACKBONE_SIZE} (its stem "
                           f"alone divides the side by 4); these are {image_size}×{image_size}. Use --model small, "
                           "or --image-size N for a folder dataset.")


def resnet_cam(in_channels: int, num_classes: int, image_size: int = 224, arch: str = "resnet18") -> CamNet:
    """torchvision's ResNet (weights=None) with a GAP + linear head: `features` = stem + layer1..layer4.

    The parameter names are torchvision's under `features.` (`features.layer4.1.conv2.weight`), so an
    ImageNet checkpoint maps by a prefix. For small inputs the stride of the last stages is set to 1
    (layer4 first, then layer3, layer2) until the feature grid is at least 4×4: 64×64 → 4×4, 28×28 → 4×4,
    224×224 → 7×7 (the standard net). Strides carry no parameters, so the weights still fit.
    """
    import torchvision  # only the torchvision backbones need it, and importing it takes seconds

    _check_size(arch, image_size)
    net = getattr(torchvision.models, arch)(weights=None)
    if in_channels != 3:
        net.conv1 = _first_conv(net.conv1, in_channels)
    strided = [net.layer2, net.layer3, net.layer4]
    stem = _halve(_halve(image_size))
    while strided and _grid(stem, len(strided)) < MIN_GRID:
        block = strided.pop()[0]
        conv = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
        conv.stride = (1, 1)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
    features = nn.Sequential(OrderedDict(
        (name, getattr(net, name)) for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))
    return CamNet(features, net.fc.in_features, num_classes)


def densenet_cam(in_channels: int, num_classes: int, image_size: int = 224, arch: str = "densenet121") -> CamNet:
    """torchvision's DenseNet (weights=None) with its GAP + linear head; `features` ends with a ReLU (`relu5`).

    Parameter names are torchvision's (`features.denseblock4.denselayer16.conv2.weight`,
    `classifier.weight`). For small inputs the transitions' 2× average poolings are replaced by
    identities from the end until the feature grid is at least 4×4.
    """
    import torchvision  # see resnet_cam

    _check_size(arch, image_size)
    net = getattr(torchvision.models, arch)(weights=None)
    features = net.features
    if in_channels != 3:
        features.conv0 = _first_conv(features.conv0, in_channels)
    transitions = [m for name, m in features.named_children() if name.startswith("transition")]
    grid = _halve(_halve(image_size)) // (2 ** len(transitions))
    while grid < MIN_GRID and transitions:
        transitions.pop().pool = nn.Identity()
        grid = _halve(_halve(image_size)) // (2 ** len(transitions))
    features.add_module("relu5", nn.ReLU())  # torchvision applies it functionally before pooling
    return CamNet(features, net.classifier.in_features, num_classes)


MODELS = {"small": small_cnn, "small-bn": small_cnn, "vgg11": vgg_cam, "resnet18": resnet_cam,
          "resnet50": resnet_cam, "densenet121": densenet_cam}
#: torchvision's ImageNet weights enum per backbone: the file name `--pretrained imagenet` looks for
IMAGENET_WEIGHTS = {"vgg11": "VGG11_Weights", "resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights",
                    "densenet121": "DenseNet121_Weights"}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                pretrained: str | None = None) -> CamNet:
    """Build model `name`; optionally load local weights (weights_only, shape-matching keys).

    `pretrained` is a file path, or `imagenet` for torchvision's cached ImageNet file (never downloaded).
    """
    if name in ("small", "small-bn"):
        model = small_cnn(in_channels, num_classes, batch_norm=name == "small-bn")
    elif name == "vgg11":
        model = vgg_cam(in_channels, num_classes, image_size)
    elif name.startswith("resnet"):
        model = resnet_cam(in_channels, num_classes, image_size, name)
    elif name.startswith("densenet"):
        model = densenet_cam(in_channels, num_classes, image_size, name)
    else:
        raise FocusmlError(f"unknown model '{name}'. Known models: {', '.join(MODELS)}.")
    if pretrained:
        path = imagenet_file(name) if pretrained == "imagenet" else Path(pretrained)
        load_pretrained(model, path, name)
    return model


def imagenet_file(name: str) -> Path:
    """torchvision's cached ImageNet checkpoint of backbone `name`; FocusmlError (how to fetch it) if absent.

    The file is where torchvision itself keeps it: `$TORCH_HOME/hub/checkpoints/<file>` (TORCH_HOME
    defaults to ~/.cache/torch). focusml never downloads it.
    """
    if name not in IMAGENET_WEIGHTS:
        raise FocusmlError(f"--pretrained imagenet: model '{name}' has no ImageNet weights; those exist for "
                           f"{', '.join(IMAGENET_WEIGHTS)}. Pass a local state dict (--pretrained PATH) instead.")
    import torch.hub
    import torchvision

    weights = getattr(torchvision.models, IMAGENET_WEIGHTS[name]).IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FocusmlError(
            f"--pretrained imagenet: {path} is not there, and focusml never downloads. On a machine with internet "
            f"access fetch it once with `python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"` "
            f"(it lands in $TORCH_HOME/hub/checkpoints/{filename}; or download {weights.url}), copy it to {path} "
            f"(or set TORCH_HOME), or pass the file itself: --pretrained /path/to/{filename}.")
    return path


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


_DENSE_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision-format checkpoint under focusml's names: ResNet's `conv1.weight` → `features.conv1.weight`
    (its `fc` head is dropped: focusml's head is `classifier`), DenseNet's old `norm.1` → `norm1` (as
    torchvision's own loader renames them). focusml checkpoints pass unchanged."""
    if "conv1.weight" in state and "features.conv1.weight" not in state:  # a torchvision ResNet
        state = {f"features.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    out = {}
    for k, v in state.items():
        match = _DENSE_OLD_KEY.match(k)
        out[match.group(1) + match.group(2) if match else k] = v
    return out


def load_pretrained(model: nn.Module, path: Path, name: str | None = None) -> list[str]:
    """Load matching tensors from a local checkpoint (never downloads); return the loaded keys.

    Torchvision-format files (ImageNet weights) are renamed to focusml's layers first; a 3-channel first
    convolution loads into a 1-channel model as the sum of its RGB kernels (a grey image x gives the
    response the RGB net gives to (x, x, x)). Tensors that fit no layer by name and shape (e.g. the
    ImageNet classifier) are left out.
    """
    state = torchvision_keys(read_state_dict(path))
    own = model.state_dict()
    matched = {}
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            matched[k] = v
        elif v.ndim == 4 and v.shape[1] == 3 and own[k].shape == (v.shape[0], 1, *v.shape[2:]):
            matched[k] = v.sum(1, keepdim=True)
    if not matched:
        raise FocusmlError(f"pretrained weights {path}: no tensor matches the layers of model "
                           f"'{name or type(model).__name__}' by name and shape.")
    model.load_state_dict(matched, strict=False)
    return sorted(matched)


# -- --init-from: a whole trained model ------------------------------------------------------------

RUN_ID = re.compile(r"[0-9a-f]{6,32}")  # a run id, or a unique prefix of it (resolved by the tracker)


def source_kind(source: str) -> str:
    """What an `--init-from` SOURCE names: "file" (an existing local file), "run" (a run id), "runs"
    (`runs:/ID[/PATH]`), "models" (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-ID`);
    FocusmlError otherwise. Only a file can be read without a tracking store."""
    text = str(source)
    if text.startswith("runs:/"):
        return "runs"
    if text.startswith("models:/"):
        return "models"
    if Path(text).is_file():
        return "file"
    if RUN_ID.fullmatch(text):
        return "run"
    raise FocusmlError(
        f"--init-from {text!r}: no such file, and not a run id (32 hex digits, or its first 6 or more), runs:/RUN_ID, models:/NAME@ALIAS or "
        "models:/NAME/VERSION. `focusml train` prints the run id; `focusml register` makes a registered model.")


@dataclass
class InitWeights:
    """A whole model's weights to start from (`--init-from`), already read weights-only."""

    state: dict[str, torch.Tensor]
    source: str  # what the user named (a path, a run id, a URI), for messages
    model: str | None = None  # the architecture the source was trained as (its run's `model` param), if known


def read_init_file(path: str) -> InitWeights:
    return InitWeights(read_state_dict(path), str(path))


def input_channels(state: dict[str, torch.Tensor]) -> int:
    """Input channels of a focusml checkpoint: those of its first convolution (KeyError if it has none)."""
    first = next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)
    if first is None:
        raise KeyError("no convolution weight")
    return int(first.shape[1])


def _shape_of(state: dict) -> str:
    first = next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)
    head = state.get("classifier.weight")
    parts = []
    if first is not None:
        parts.append(f"{first.shape[1]} input channel{'s' if first.shape[1] != 1 else ''}")
    if head is not None:
        parts.append(f"{head.shape[0]} classes")
    return ", ".join(parts)


def guess_architecture(state: dict[str, torch.Tensor], image_size: int = 224) -> str | None:
    """The focusml model name whose layers `state` fits exactly (names and shapes), or None."""
    first = next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)
    head = state.get("classifier.weight")
    if first is None or head is None:
        return None
    stems = {"resnet": "features.conv1.weight", "densenet": "features.conv0.weight"}  # others: features.0.weight
    family = next((f for f, key in stems.items() if key in state), None)
    for name in MODELS:
        if name.startswith(tuple(stems)) != (family is not None) or (family and not name.startswith(family)):
            continue  # only build the candidates of the same family (building resnet50 or densenet121 takes seconds)
        for size in dict.fromkeys((image_size, 224, 28) if name == "vgg11" else (max(image_size, MIN_BACKBONE_SIZE),)):
            try:
                own = build_model(name, first.shape[1], head.shape[0], size).state_dict()
            except FocusmlError:
                continue
            if own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own):
                return name
    return None


def load_init_state(model: nn.Module, init: InitWeights, name: str, image_size: int) -> None:
    """Load every tensor of `init` into `model` (built as model `name`); FocusmlError naming both
    architectures when they differ (a missing, extra or differently shaped tensor)."""
    own = model.state_dict()
    state = init.state
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or extra or shaped):
        model.load_state_dict(state)
        return
    source_arch = init.model or guess_architecture(state, image_size)
    theirs = f"model '{source_arch}'" if source_arch else "an architecture focusml does not know"
    detail = []
    if shaped:
        k = shaped[0]
        detail.append(f"{len(shaped)} tensor(s) of another shape, e.g. {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    if missing:
        detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        detail.append(f"{len(extra)} extra, e.g. {extra[0]}")
    hint = f" Pass --model {source_arch}, or start" if source_arch and source_arch != name else " Start"
    raise FocusmlError(
        f"--init-from {init.source}: the weights are {theirs} ({_shape_of(state)}), but this run builds model "
        f"'{name}' ({_shape_of(own)}): {'; '.join(detail)}.{hint} from a source trained as model '{name}' with "
        f"{_shape_of(own)}, or use --pretrained PATH to load only the tensors that fit.")


# -- your own network: the CamNet contract over any module ------------------------------------------

#: poolings and reshapes whose output is not a feature map, even when it is 4-D (a 1×1 pooled map)
_NOT_A_MAP = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Dropout2d)


class Adapted(nn.Module):
    """A user's network under CamNet's contract: `forward_features(x) -> (A, logits)`, `features`, `classifier`.

    `network` is the user's module, untouched (its tensors are this module's `network.*`, so the state dict
    maps one to one). `feature_layer` names the module of `network` whose output is A (None: the timm
    protocol, A = `network.forward_features(x)`, head `network.get_classifier()`); `head` names the final
    `nn.Linear`. `relu`: A is ReLU(output), as DenseNet applies it functionally before pooling. `exact`:
    logits = head(GAP(A)) was checked, so CAM is exact and every method applies.
    """

    def __init__(self, network: nn.Module, feature_layer: str | None, head: str | None, relu: bool = False,
                 exact: bool = True):
        super().__init__()
        self.network = network
        self.feature_layer, self.head, self.relu, self.exact = feature_layer, head, relu, exact
        self.feature_map = nn.Identity()  # A passes here (timm protocol): a module name for `last` layer hooks
        self.code: tuple | None = None  # (builder, kwargs) that rebuild `network` (a logged model needs them)

    @property
    def spec(self) -> dict:
        """How the wrapper sits on the network: enough to rebuild it around a fresh copy (the logged model)."""
        return {"feature_layer": self.feature_layer, "head": self.head, "relu": self.relu, "exact": self.exact}

    @property
    def features(self) -> nn.Module:
        return self.network.get_submodule(self.feature_layer) if self.feature_layer else self.feature_map

    @property
    def classifier(self) -> nn.Module:
        return self.network.get_submodule(self.head) if self.head else self.network.get_classifier()

    @property
    def last_layer(self) -> str:
        """The module name whose output is A (`--layers last` of selective_dropout)."""
        return f"network.{self.feature_layer}" if self.feature_layer else "feature_map"

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.feature_layer is None:  # timm: forward_features → A, forward_head → logits
            a = self.feature_map(self.network.forward_features(x))
            head = getattr(self.network, "forward_head", None)
            logits = head(a) if head is not None else self.classifier(a.mean((2, 3)))
            return (torch.relu(a) if self.relu else a), logits
        seen: list[torch.Tensor] = []
        # registered per call, after any layer hook of the training step, so A is what the head really sees
        handle = self.features.register_forward_hook(lambda mod, inp, out: seen.append(out))
        try:
            logits = self.network(x)
        finally:
            handle.remove()
        return (torch.relu(seen[-1]) if self.relu else seen[-1]), logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def _trace(module: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, nn.Module, torch.Tensor]], torch.Tensor]:
    """Every submodule's output in the order the modules finish, and the network's logits, for input `x`."""
    order: list = []
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: order.append((n, mod, out)))
               for n, m in module.named_modules() if n]
    try:
        logits = module(x)
    finally:
        for h in handles:
            h.remove()
    return order, logits


def _fits(head: nn.Module, a: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether logits = head(GAP(a)) (up to float error): CAM over `a` and `head` is then exact."""
    if not (isinstance(head, nn.Linear) and a.ndim == 4 and a.shape[1] == head.in_features):
        return False
    return bool(torch.allclose(head(a.mean((2, 3))), logits, rtol=1e-3, atol=1e-4 * float(logits.abs().max() + 1)))


def adapt(module: nn.Module, input_shape: tuple[int, int, int], features: str | None = None,
          head: str | None = None) -> nn.Module:
    """`module` under the CamNet contract, for images of `input_shape` (C, H, W); a CamNet is returned as is.

    Found automatically when the logits are global average pooling + one `nn.Linear` over a feature map:
    the last `nn.Linear` that makes the logits, and the outermost module finishing last before it whose
    output is that map (ReLU'd if the network applies it functionally: DenseNet). This covers torchvision's
    ResNet, DenseNet, EfficientNet, MobileNetV2 and RegNet, and timm-style models (`forward_features` +
    `get_classifier`). Otherwise name the layers (`features=`, `head=`, module names of `module`): the CAM
    is then approximate and the methods that need it exact refuse (`Method.exact_cam`).
    """
    if isinstance(module, (CamNet, Adapted)):
        return module
    if not isinstance(module, nn.Module):
        raise FocusmlError(f"the model must be a torch.nn.Module, got {type(module).__name__}; pass a module, or a "
                           f"focusml model name ({', '.join(MODELS)}).")
    names = dict(module.named_modules())
    for given, what in ((features, "features"), (head, "head")):
        if given is not None and given not in names:
            raise FocusmlError(f"{what}={given!r}: {type(module).__name__} has no such module; name one of "
                               f"{', '.join(list(n for n in names if n)[:30])}.")
    param = next(module.parameters(), None)
    x = torch.rand(2, *input_shape, device=param.device if param is not None else None)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if features is None and hasattr(module, "forward_features") and hasattr(module, "get_classifier"):
                a, logits = module.forward_features(x), module(x)
                for relu in (False, True):
                    if _fits(module.get_classifier(), torch.relu(a) if relu else a, logits):
                        return Adapted(module, None, None, relu).train(was_training)
                raise FocusmlError(f"{type(module).__name__} has forward_features and get_classifier, but its logits are "
                                   "not get_classifier()(global average pool of forward_features(x)); name the feature "
                                   "layer and the head instead (features=..., head=...).")
            order, logits = _trace(module, x)
    finally:
        module.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise FocusmlError(f"{type(module).__name__}(x) must return logits (N×classes), got "
                           f"{type(logits).__name__}; wrap the model so that forward returns the logits tensor.")
    heads = [i for i, (n, m, out) in enumerate(order) if isinstance(m, nn.Linear) and (head is None or n == head)
             and isinstance(out, torch.Tensor) and out.shape == logits.shape]
    if not heads:
        raise FocusmlError(f"{type(module).__name__}: found no nn.Linear {'named ' + repr(head) + ' ' if head else ''}"
                           "that makes the logits; name the head (head=MODULE_NAME) or use a network ending with "
                           "global average pooling and one linear layer.")
    last = heads[-1]
    linear_name, linear = order[last][0], order[last][1]
    maps = [(n, out) for n, m, out in order[:last] if (features is None or n == features)
            and isinstance(out, torch.Tensor) and out.ndim == 4 and not isinstance(m, _NOT_A_MAP)]
    if features is not None and not maps:
        raise FocusmlError(f"features={features!r} gives no N×K×h×w feature map before the head {linear_name!r}; name "
                           "the module whose output is the last convolutional feature map.")
    with torch.no_grad():
        for name, out in reversed(maps):
            for relu in (False, True):
                if _fits(linear, torch.relu(out) if relu else out, logits):
                    return Adapted(module, name, linear_name, relu)
            if features is None and out.shape[1] == linear.in_features:
                break  # the last map of the head's width does not fit: nothing earlier will
    if features is None:
        raise FocusmlError(f"{type(module).__name__}: its logits are not global average pooling + one linear layer "
                           "over a feature map, so CAM cannot be found exactly. Name the feature layer and the head "
                           "(features=..., head=...): the methods that need an exact CAM then refuse.")
    a = maps[-1][1]
    if a.shape[1] != linear.in_features:
        raise FocusmlError(f"features={features!r} has {a.shape[1]} channels but head {linear_name!r} takes "
                           f"{linear.in_features}; name a feature map as wide as the head's input.")
    return Adapted(module, features, linear_name, exact=False)
