"""Contextual decomposition (CD) of a CAM network's logits into the part due to a region and the rest.

CD (Murdoch et al. 2018; Singh et al. 2019, "Hierarchical interpretations for neural network
predictions") carries two tensors through the network, `rel` (evidence that comes from the
region) and `irrel` (everything else), starting from `rel = x ⊙ m`, `irrel = x ⊙ (1 − m)`, so
that `rel + irrel` equals the ordinary activation at every layer (completeness). CDEP (Rieger
et al. 2020) penalises the `rel` part of the logits; see `focusml.core.methods.cdep`.

Rules per layer type (those of `focusml.core.models`: the small CNN and torchvision's VGG stacks):

- affine layers (Conv2d, Linear, BatchNorm2d): the linear part acts on each tensor; the bias is
  split in proportion to |rel| and |irrel| at each output unit, as in the CDEP code. Where both
  parts are exactly zero the whole bias goes to `irrel` (the CDEP code drops it there, which
  breaks completeness). BatchNorm2d uses the statistics the real forward would use: the batch
  statistics of `rel + irrel` in training mode (running statistics are not updated), the
  running statistics in evaluation mode;
- ReLU: `rel' = ReLU(rel)`, `irrel' = ReLU(rel + irrel) − ReLU(rel)` (CDEP's rule);
- MaxPool2d: the winning positions are those of `rel + irrel`; both parts are read there;
- AdaptiveAvgPool2d, AvgPool2d, Flatten: linear without bias, applied to each part;
- Dropout: identity in evaluation mode; in training mode one random mask is drawn and applied
  to both parts, so the decomposition stays complete for that draw;
- torchvision's residual blocks (ResNet's BasicBlock and Bottleneck): both parts go through the
  branch and the shortcut (`downsample` or identity) separately and are added part by part (the
  sum is linear), then the block's ReLU rule;
- torchvision's dense blocks (DenseNet's _DenseBlock, _DenseLayer): concatenation is linear, so
  each part is concatenated with its own earlier features; a layer's `drop_rate` > 0 in training
  draws one mask for both parts, like Dropout.

Any other layer is refused with an error naming it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from focusml import FocusmlError

Pair = tuple[torch.Tensor, torch.Tensor]


def _both(fn, rel: torch.Tensor, irrel: torch.Tensor) -> Pair:
    """Apply a linear map to both parts in one call (batched along dim 0)."""
    out = fn(torch.cat([rel, irrel], 0))
    return out[: len(rel)], out[len(rel):]


def _split_bias(rel: torch.Tensor, irrel: torch.Tensor, bias: torch.Tensor) -> Pair:
    """Share `bias` (broadcastable to rel) between the parts in proportion to their magnitudes."""
    a, b = rel.abs(), irrel.abs()
    total = a + b
    share = torch.where(total > 0, a / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    return rel + share * bias, irrel + (1 - share) * bias


def _conv(module: nn.Conv2d, rel, irrel) -> Pair:
    if module.padding_mode != "zeros":
        raise FocusmlError(f"contextual decomposition supports zero-padded Conv2d only, got padding_mode={module.padding_mode!r}.")
    rel, irrel = _both(lambda t: F.conv2d(t, module.weight, None, module.stride, module.padding, module.dilation,
                                          module.groups), rel, irrel)
    if module.bias is None:
        return rel, irrel
    return _split_bias(rel, irrel, module.bias[None, :, None, None])


def _linear(module: nn.Linear, rel, irrel) -> Pair:
    rel, irrel = _both(lambda t: F.linear(t, module.weight), rel, irrel)
    if module.bias is None:
        return rel, irrel
    return _split_bias(rel, irrel, module.bias)


def _batchnorm(module: nn.BatchNorm2d, rel, irrel) -> Pair:
    if module.training or module.running_mean is None:
        total = rel + irrel
        mean = total.mean((0, 2, 3))
        var = total.var((0, 2, 3), unbiased=False)
    else:
        mean, var = module.running_mean, module.running_var
    scale = torch.rsqrt(var + module.eps)
    shift = -mean * scale
    if module.affine:
        scale, shift = scale * module.weight, shift * module.weight + module.bias
    return _split_bias(rel * scale[None, :, None, None], irrel * scale[None, :, None, None], shift[None, :, None, None])


def _relu(module, rel, irrel) -> Pair:
    r = F.relu(rel)
    return r, F.relu(rel + irrel) - r


def _maxpool(module: nn.MaxPool2d, rel, irrel) -> Pair:
    _, idx = F.max_pool2d(rel + irrel, module.kernel_size, module.stride, module.padding, module.dilation,
                          module.ceil_mode, return_indices=True)
    flat = idx.flatten(2)
    pick = lambda t: t.flatten(2).gather(2, flat).view_as(idx)  # noqa: E731
    return pick(rel), pick(irrel)


def _dropout(module: nn.Dropout, rel, irrel) -> Pair:
    if not module.training or module.p == 0:
        return rel, irrel
    keep = F.dropout(torch.ones_like(rel), module.p, training=True)
    return rel * keep, irrel * keep


def _linear_nobias(module, rel, irrel) -> Pair:
    return _both(module, rel, irrel)


RULES = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: _relu,
    nn.MaxPool2d: _maxpool,
    nn.AdaptiveAvgPool2d: _linear_nobias,
    nn.AvgPool2d: _linear_nobias,
    nn.Flatten: _linear_nobias,
    nn.Dropout: _dropout,
    nn.Identity: lambda module, rel, irrel: (rel, irrel),
}


def _residual(block, rel, irrel) -> Pair:
    """torchvision BasicBlock / Bottleneck: relu(branch(x) + shortcut(x)), the sum taken part by part."""
    names = ["conv1", "bn1", "relu", "conv2", "bn2"] + (["relu", "conv3", "bn3"] if hasattr(block, "conv3") else [])
    r, i = rel, irrel
    for name in names:
        r, i = propagate(getattr(block, name), r, i)
    if block.downsample is not None:
        rel, irrel = propagate(block.downsample, rel, irrel)
    return _relu(block.relu, r + rel, i + irrel)


def _dense_layer(layer, features: list[Pair]) -> Pair:
    """torchvision _DenseLayer on its list of earlier (rel, irrel) features: cat → norm1 → relu1 → conv1 → norm2 →
    relu2 → conv2 (→ dropout)."""
    r, i = torch.cat([f[0] for f in features], 1), torch.cat([f[1] for f in features], 1)
    for name in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
        r, i = propagate(getattr(layer, name), r, i)
    return _dropout(nn.Dropout(layer.drop_rate).train(layer.training), r, i)


def _dense_block(block, rel, irrel) -> Pair:
    features = [(rel, irrel)]
    for layer in block.values():
        features.append(_dense_layer(layer, features))
    return torch.cat([f[0] for f in features], 1), torch.cat([f[1] for f in features], 1)


def _torchvision_rules() -> dict:
    """Rules for torchvision's composite blocks (imported only when a model has one)."""
    from torchvision.models import densenet, resnet

    return {resnet.BasicBlock: _residual, resnet.Bottleneck: _residual, densenet._DenseBlock: _dense_block}


def propagate(module: nn.Module, rel: torch.Tensor, irrel: torch.Tensor) -> Pair:
    """Carry (rel, irrel) through one layer; rel + irrel equals module(rel + irrel)."""
    if isinstance(module, nn.Sequential):
        for layer in module:
            rel, irrel = propagate(layer, rel, irrel)
        return rel, irrel
    rule = RULES.get(type(module))
    if rule is None and type(module).__module__.startswith("torchvision."):
        RULES.update(_torchvision_rules())
        rule = RULES.get(type(module))
    if rule is None:
        raise FocusmlError(
            f"contextual decomposition (cdep) does not support layer {type(module).__name__}; supported: "
            f"{', '.join(t.__name__ for t in RULES)} (and torchvision's ResNet and DenseNet blocks). Use a model "
            "built from these layers (every focusml --model is)."
        )
    return rule(module, rel, irrel)


def decompose(model, x: torch.Tensor, m: torch.Tensor) -> Pair:
    """(rel, irrel) logits of a CamNet for images x (N×C×H×W) and region masks m (N×H×W in [0, 1]).

    `rel` is the evidence carried by the pixels under m, `irrel` the rest; rel + irrel = logits.
    """
    w = m[:, None].to(x.dtype)
    rel, irrel = propagate(model.features, x * w, x * (1 - w))
    rel, irrel = propagate(model.pool, rel, irrel)
    return propagate(model.classifier, rel.flatten(1), irrel.flatten(1))
