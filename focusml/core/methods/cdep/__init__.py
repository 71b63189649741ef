"""`cdep`: Contextual Decomposition Explanation Penalization (Rieger, Singh, Murdoch & Yu,
ICML 2020, "Interpretations are useful: penalizing explanations to align neural networks with
prior knowledge").

The logits are split by contextual decomposition (`decomposition.py` beside this module) into
`rel`, the evidence carried by the pixels under the mask, and `irrel`, the rest
(rel + irrel = logits). Penalty (docs/methods.md): `mean_i Σ_c softmax([rel_ic, irrel_ic])[0]`
over images with a non-empty mask (unmasked images add zero): the share of each class score
attributed to the masked region, summed over classes as the paper's code does. The
decomposition is a second forward pass of both parts with its own backward.

λ scale: each class term is a share in (0, 1), about one half at initialisation, so the raw
penalty is ≈C/2 while CE is ≈ln C: already of the order of CE, so no rescaling is applied
(λ=1 is the raw penalty). Default λ = 10: the best of a small grid on a selection seed not among
the reported seeds (docs/benchmarks.md). The network drives this share towards zero within a few
epochs at every λ tried while still using the decoy, which is why CDEP closes only part of the gap.
"""

from __future__ import annotations

import torch

from focusml import FocusmlError
from focusml.core.methods.cdep.decomposition import decompose
from focusml.core.methods.base import Batch, Method, lam_param


def cdep_penalty(model, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Unscaled CDEP penalty: mean over the batch of the summed rel-shares of masked images."""
    masked = m.flatten(1).amax(1) > 0
    if not masked.any():
        return x.new_zeros(())
    rel, irrel = decompose(model, x[masked], m[masked])
    share = torch.softmax(torch.stack([rel, irrel], -1), -1)[..., 0]
    return share.sum(1).sum() / len(x)


class ContextualDecompositionPenalty(Method):
    name = "cdep"
    family = "peer"
    exact_cam = True
    summary = "CDEP (Rieger et al. 2020): penalise the masked region's contextual-decomposition share of the logits"
    params = (lam_param(1.0, "raw penalty, ≈C/2 at initialisation vs CE ≈ ln C"),)

    def check(self, model, data, device) -> None:
        if not hasattr(model, "pool"):  # `models.Adapted`: a network whose layers the decomposition does not know
            raise FocusmlError("cdep decomposes focusml's own architectures layer by layer, not your own network; "
                               "use pas, pasa or rrr_gradcam, or a focusml model (model='resnet18', ...).")

    def penalty(self, model, batch: Batch, features, logits) -> torch.Tensor:
        return cdep_penalty(model, batch.x, batch.m)
