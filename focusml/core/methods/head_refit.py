"""`head_refit`: keep a trained model's features and refit its linear head on shortcut-swapped images.

Last-layer retraining (deep feature reweighting, Kirichenko et al. 2022) with the masks in place
of group labels. Every annotated training image gets the masked content of a donor drawn
uniformly among the annotated training images, of any class, built like the counterfactual
metric's images (`counterfactual.blend`, which keeps the object where a mask is a background):

    x_s = x·(1 − u) + x_d·u,   u = max(m, m_d)

so what the masks mark carries no information about the label, while the rest of the image keeps
it. The head is then the multinomial logistic regression on the frozen pooled features
z = GAP(A(x_s)), standardised, with an L2 penalty:

    min_{W,b}  mean CE(W·z + b, y) + (l2 / 2)·‖W‖²       (L-BFGS; convex, so no learning rate)

and `l2` chosen on the run's selection metric (`acc/val_cf` where val has masks), among the heads
above chance accuracy on val where there is one (`choice_key`): validation only.
The convolutional features are untouched, so the refitted model's CAM is the same A under the new
weights w_c, and the run is evaluated, logged and registered like any other.

Why donors of every class, unlike the counterfactual metric's donors of another class: a donor of
another class always brings a wrong class's shortcut, and a head fitted on such images learns the
reverse shortcut ("this patch means not that class"), which a counterfactual metric built the same
way rewards (docs/benchmarks.md measures it). The original images are left out: they bring the
shortcut's correlation back.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from focusml import FocusmlError
from focusml.core import counterfactual
from focusml.core.data.base import Split, annotated
from focusml.core.evaluate import SELECTABLE, at_chance
from focusml.core.methods.base import Method, Param

#: the L2 strengths searched (on standardised features): from almost none to a head that barely moves
L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
L2_FALLBACK = 1e-3  # without a validation metric that sees the shortcut (no masks in val)
MIN_SWAPPED = 2048  # `copies auto`: enough swapped images for the head to see many donors per image


def swap_donors(masks, copies: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, donors): each annotated row `copies` times, each with a donor drawn uniformly among the
    other annotated rows, whatever their class; empty when fewer than two rows are annotated."""
    rows = torch.nonzero(annotated(masks)).flatten()
    if len(rows) < 2:
        return rows[:0], rows[:0]
    gen = torch.Generator().manual_seed(seed)
    recipients = rows.repeat(copies)
    pick = torch.randint(len(rows) - 1, (len(recipients),), generator=gen)
    own = torch.searchsorted(rows, recipients)
    donors = rows[pick + (pick >= own).long()]  # skip the row itself
    return recipients, donors


@torch.no_grad()
def pooled_features(model, images, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """GAP(A(x)) of uint8 images N×C×H×W (a tensor or streamed rows), on the CPU as float32."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[torch.arange(start, min(start + batch_size, len(images)))].float().div_(255.0)
        a, _ = model.forward_features(x.to(device))
        out.append(a.float().mean((2, 3)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def swapped_features(model, split: Split, copies: int, seed: int, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of the swapped training images x_s, made batch by batch."""
    recipients, donors = swap_donors(split.masks, copies, seed)
    feats = []
    for start in range(0, len(recipients), 512):
        r, d = recipients[start:start + 512], donors[start:start + 512]
        has = torch.ones(len(r), dtype=torch.bool)
        x_s, _ = counterfactual.blend(split.images[r], split.masks[r], split.images[d], split.masks[d], has)
        feats.append(pooled_features(model, x_s, device))
    return (torch.cat(feats) if feats else torch.zeros(0)), split.labels[recipients]


def fit_path(z: torch.Tensor, y: torch.Tensor, classes: int, grid):
    """(l2, W, b) for each L2 of `grid`, strongest first: the L2-penalised multinomial logistic regression
    on features `z`, standardised inside and folded back (W·z + b are the logits on the raw features).
    Each fit starts from the previous one's solution, so the weakly penalised, nearly separable fits
    take a few L-BFGS steps instead of hundreds."""
    mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
    zs = ((z - mean) / std).double()  # float64: L-BFGS meets its tolerance instead of running out of steps
    w = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    for l2 in sorted(grid, reverse=True):
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=100, tolerance_grad=1e-5, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(zs @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        wd, bd = w.detach().float(), b.detach().float()
        yield l2, wd / std, bd - (wd * (mean / std)).sum(1)


def temperature(w: torch.Tensor, b: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> float:
    """The T > 0 that minimises the validation NLL of logits (W·z + b)/T (temperature scaling, Guo et al.
    2017). Predictions do not change; the logits' scale does: a weakly penalised head on nearly separable
    features has huge logits, a poor start for a full refinement whose cross-entropy begins from them."""
    logits = (z @ w.T + b).double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(1e-3, 1e3))


def copies_for(value, annotated: int) -> int:
    """`copies auto`: enough swaps of each annotated image to make about `MIN_SWAPPED` images (1 to 16)."""
    if value != "auto":
        return int(value)
    return max(1, min(16, math.ceil(MIN_SWAPPED / max(annotated, 1))))


class HeadRefit(Method):
    name = "head_refit"
    family = "refinement"
    exact_cam = True
    summary = ("features of a trained model kept; the linear head refitted on training images whose masked "
               "content is swapped with another image's (seconds; needs --init-from)")
    params = (
        Param("l2", float, "auto", "L2 strength of the head's logistic regression on standardised features; "
              "auto = the value of a grid that scores best on the selection metric (acc/val_cf)", low=0.0, auto=True),
        Param("copies", int, "auto", "swapped copies of each annotated training image, each with its own donor; "
              "auto = enough for about 2048 images (1 to 16)", low=1, high=64, auto=True),
    )
    needs_init = True
    replaces_training = True

    def check(self, model, data, device) -> None:
        split = data.split(self.train_split)
        annotated = int(split.annotated.sum())
        if annotated < 2:
            raise FocusmlError(f"head_refit swaps the masked content between annotated training images, and dataset "
                               f"'{data.name}' has {annotated} annotated training image(s). Draw masks on at least two "
                               "(focusml masks serve), or raise --mask-budget.")
        present = torch.unique(split.labels[split.annotated])
        if data.num_classes > 1 and len(present) < 2:  # the head would learn to answer that one class
            raise FocusmlError(f"head_refit refits the head on the annotated training images, and the {annotated} of "
                               f"dataset '{data.name}' are all of class '{data.classes[int(present[0])]}': the head "
                               "would answer that class for every image. Draw masks on images of other classes too "
                               "(focusml masks serve), or answer more proposals of focusml discover.")
        if not hasattr(model, "classifier") or not isinstance(model.classifier, torch.nn.Linear):
            raise FocusmlError("head_refit refits the model's linear head (`classifier`), and this model has none.")

    def fit(self, model, data, config, device, callbacks, evaluator, select: str):
        """Fit the head at every L2 of the grid (or the one given), keep the best on `select`; returns the
        validation metrics of the kept head (one 'epoch' for the run's history)."""
        start, cpu = time.perf_counter(), time.process_time()
        split = data.split(self.train_split)
        copies = copies_for(self.options["copies"], int(split.annotated.sum()))
        z, y = swapped_features(model, split, copies, config.seed, device)
        callbacks.log_params({"copies_used": copies, "swapped_images": len(y)})
        grid = L2_GRID if self.options["l2"] == "auto" else (float(self.options["l2"]),)
        if select == "last" and len(grid) > 1:  # nothing on val can see the shortcut: no search
            grid = (L2_FALLBACK,)
        pooled = FastScores(model, evaluator, device)
        before = pooled(model.classifier.weight.detach().float().cpu(), model.classifier.bias.detach().float().cpu())
        fast = pooled if select in FastScores.METRICS else None  # else a CAM metric: the whole model is evaluated
        val_labels = data.split("val").labels
        best = None
        for i, (l2, w, b) in enumerate(fit_path(z, y, data.num_classes, grid)):
            if fast is None:
                set_head(model, w, b)
            scores = fast(w, b) if fast is not None else evaluator.validation(model)
            callbacks.on_prepare("head refit: L2 grid", i, len(grid))
            key = choice_key(scores, select, at_chance(scores["acc/val"], val_labels, data.num_classes)[0])
            if best is None or key >= best[0]:
                best = (key, l2, w, b)
        _, l2, w, b = best
        t = temperature(w, b, *pooled.calibration_set())
        set_head(model, w / t, b / t)
        callbacks.log_params({"l2_chosen": l2, "temperature": round(t, 4)})
        # the refit's own cost, as an epoch's time leaves out its validation: wall and this process's CPU seconds
        spent = {"time/epoch_s": time.perf_counter() - start, "time/cpu_s": time.process_time() - cpu}
        source = {f"source_{k}": v for k, v in before.items()}
        return {**spent, "l2": l2, **evaluator.validation(model), **source}


def choice_key(scores: dict[str, float], select: str, low: bool) -> tuple[float, ...]:
    """How a head of the L2 path ranks (higher is better): one above chance accuracy on val first (`low`: at
    chance), then `select`, then acc/val. A head that answers one class scores acc/val_cf 1.0 when the annotated
    val images are all of that class; a few annotated images of one class would otherwise choose it."""
    sign = 1.0 if SELECTABLE.get(select, "max") == "max" else -1.0
    key = (0.0 if low else 1.0, sign * scores.get(select, math.nan) if select != "last" else 0.0, scores["acc/val"])
    return tuple(-math.inf if math.isnan(k) else k for k in key)


def set_head(model, w: torch.Tensor, b: torch.Tensor) -> None:
    with torch.no_grad():
        model.classifier.weight.copy_(w.to(model.classifier.weight))
        model.classifier.bias.copy_(b.to(model.classifier.bias))


class FastScores:
    """acc/val, acc/val_cf and flip/val of a head from pooled features computed once: the features do not
    change while the head is searched, so each candidate costs one matrix product."""

    METRICS = ("acc/val", "acc/val_cf", "flip/val")

    def __init__(self, model, evaluator, device: torch.device):
        self.val = evaluator.data.split("val")
        self.z = pooled_features(model, self.val.images, device)
        cf = evaluator.cf.get("val")
        self.cf = cf if cf is not None and bool(cf.valid.any()) else None
        self.cf_z = pooled_features(model, self.cf.split.images, device) if self.cf is not None else None

    def calibration_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) to calibrate on: val's counterfactuals where it has them (they break the
        shortcut), else val."""
        if self.cf is None:
            return self.z, self.val.labels
        keep = self.cf.valid
        return self.cf_z[keep], self.val.labels[keep]

    def __call__(self, w: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        preds = (self.z @ w.T + b).argmax(1)
        out = {"acc/val": float((preds == self.val.labels).float().mean())}
        if self.cf is not None:
            got = counterfactual.metrics(self.val.labels, preds, (self.cf_z @ w.T + b).argmax(1), self.cf.valid)
            out.update({"acc/val_cf": got["acc_cf"], "flip/val": got["flip"]})
        return out
