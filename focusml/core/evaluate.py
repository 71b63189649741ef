"""Metrics on every split (docs/methods.md).

- accuracy (plus balanced accuracy and macro-F1 on `test`);
- the literature's attention metrics, `wr` and `cam_in_mask`, from the positive CAM of the
  predicted class upsampled to the image;
- `evidence_in_mask`: the share of all classes' evidence, both signs, that comes from the
  masked cells (`cam.region_evidence`): it also sees a shortcut used as evidence *against*
  classes, which the positive CAM never shows;
- the counterfactual metrics `acc_cf` and `flip` (`focusml.core.counterfactual`): what the model does
  when the masked content comes from an image of another class. They need only masks, so they
  can be computed on `val`, and they are what selection uses by default.

`Evaluator` uses counterfactual splits built once per split (`counterfactuals`), so the per-epoch
validation and the final test pay only for the forward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from focusml import FocusmlError
from focusml.core import counterfactual
from focusml.core.cam import cam_from_features, cam_in_mask, evidence_in_mask, evidence_share, region_evidence, upsample, \
    wrong_reason
from focusml.core.data import Dataset, Split
from focusml.core.data.base import as_float
from focusml.core.data.stream import batches

#: Validation metrics a run can select its checkpoint on, with the direction that is better.
SELECTABLE = {
    "acc/val_cf": "max", "acc/val": "max", "flip/val": "min", "evidence_in_mask/val": "min",
    "wr/val": "min", "cam_in_mask/val": "min", "acc/val_clean": "max",
}


CHANCE_MARGIN = 0.02  # acc/val within this of the majority-class share counts as chance


def at_chance(acc: float, labels: torch.Tensor, num_classes: int) -> tuple[bool, float]:
    """(whether `acc` is at chance on `labels`, the majority class's share): what a model that always answers
    one class scores. NaN is not at chance (nothing was measured)."""
    chance = float(torch.bincount(labels, minlength=num_classes).max()) / max(len(labels), 1)
    return bool(math.isfinite(acc) and acc <= chance + CHANCE_MARGIN), chance


_NEEDS_MASKS = {"acc/val_cf", "flip/val", "evidence_in_mask/val", "wr/val", "cam_in_mask/val"}


def select_metric(select: str, data: Dataset) -> str:
    """The metric `--select` names for this dataset ("auto": `acc/val_cf` when `val` has masks, else the last epoch).

    Raises FocusmlError for a metric the dataset cannot compute (no masks in `val`, no `val_clean`).
    """
    annotated = bool(data.split("val").annotated.any())
    if select == "auto":
        return "acc/val_cf" if annotated and data.num_classes > 1 else "last"
    if select in _NEEDS_MASKS and not annotated:
        raise FocusmlError(f"--select {select} needs masks on the validation images, and dataset '{data.name}' has "
                           "none in val. Add masks (focusml masks serve), or use --select acc/val or last.")
    if select == "acc/val_clean" and "val_clean" not in data.splits:
        raise FocusmlError(f"--select acc/val_clean needs a clean validation split, and dataset '{data.name}' has "
                           "none (a folder dataset needs a clean/ tree). Use --select acc/val_cf, acc/val or last.")
    return select


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class, counts (scikit-learn's layout)."""
    return np.bincount(num_classes * labels.astype(np.int64) + preds, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean recall over the classes present in `labels` (scikit-learn's `balanced_accuracy_score`)."""
    classes = np.unique(labels)
    return float(np.mean([(preds[labels == c] == c).mean() for c in classes])) if len(classes) else float("nan")


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean F1 over the classes in `labels` or `preds`, 0 for a class never right (scikit-learn's
    `f1_score(average="macro")`). Computed here: importing scikit-learn costs a run about a second."""
    scores = []
    for c in np.union1d(labels, preds):
        tp = np.sum((preds == c) & (labels == c))
        wrong = np.sum(preds != labels, where=(preds == c) | (labels == c))
        scores.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


@dataclass
class Predictions:
    labels: np.ndarray
    preds: np.ndarray
    pos_cams: torch.Tensor  # N×H×W, ReLU of the predicted class's CAM at image size
    masks: torch.Tensor  # N×H×W
    evidence: torch.Tensor  # N, share of all-class evidence from the masked cells
    probability: np.ndarray  # N, softmax probability of the predicted class
    cf_preds: np.ndarray | None = None  # N, predictions on the counterfactuals (set by `Evaluator`)
    cf_valid: np.ndarray | None = None  # N, whether the image has a counterfactual

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.preds).mean())


@torch.no_grad()
def predict(model, split: Split, device: torch.device, batch_size: int = 256, cams: bool = True) -> Predictions:
    """Predictions of `model` on a split; `cams=False` skips the CAM and evidence maps (labels only)."""
    model.eval()
    preds, probs, pos, shares, masks = [], [], [], [], []
    weight = model.classifier.weight
    for _, rows in batches(split, torch.arange(len(split)), batch_size):  # streamed: read by workers
        x, m, _ = as_float(*rows)
        masks.append(m)
        a, logits = model.forward_features(x.to(device))
        prob, pred = torch.softmax(logits, 1).max(1)
        preds.append(pred.cpu())
        probs.append(prob.cpu())
        if cams:
            cam = cam_from_features(a, weight).gather(1, pred.view(-1, 1, 1, 1).expand(-1, 1, *a.shape[-2:]))[:, 0]
            pos.append(upsample(cam.clamp_min(0), x.shape[-2:]).cpu())
            shares.append(evidence_share(*region_evidence(a, weight, m.to(device))).cpu())
    empty = torch.zeros(0)
    masks = torch.cat(masks) if masks else torch.zeros((0, *split.masks.shape[1:]))
    return Predictions(split.labels.numpy(), torch.cat(preds).numpy(), torch.cat(pos) if pos else empty, masks,
                       torch.cat(shares) if shares else empty, torch.cat(probs).numpy())


def dead_share(pos_cams: torch.Tensor) -> float:
    """Share of images whose positive CAM is zero everywhere (a dead network has 1.0: no evidence
    anywhere, which WR and CAM-in-mask would otherwise read as "attends to nothing wrong")."""
    if len(pos_cams) == 0:
        return float("nan")
    return float((pos_cams.flatten(1).amax(1) <= 0).float().mean())


def attention_metrics(p: Predictions) -> dict[str, float]:
    return {"wr": wrong_reason(p.pos_cams, p.masks), "cam_in_mask": cam_in_mask(p.pos_cams, p.masks),
            "evidence_in_mask": evidence_in_mask(p.evidence, p.masks), "cam_dead": dead_share(p.pos_cams)}


def counterfactuals(split: Split) -> counterfactual.Counterfactuals:
    """`counterfactual.build(split)`, made once per split object and kept on it (splits are never
    changed in place): the validation of every epoch and the final test share one build."""
    built = split.__dict__.get("_counterfactuals")
    if built is None:
        built = split.__dict__["_counterfactuals"] = counterfactual.build(split)
    return built


class Evaluator:
    """The metrics of one dataset, its counterfactual `val` and `test` built once."""

    def __init__(self, data: Dataset, device: torch.device):
        self.data, self.device = data, device
        self.cf = {name: counterfactuals(data.split(name)) for name in ("val", "test") if name in data.splits}

    def _split_metrics(self, model, name: str) -> tuple[dict[str, float], Predictions]:
        p = predict(model, self.data.split(name), self.device)
        out = {f"acc/{name}": p.accuracy, **{f"{k}/{name}": v for k, v in attention_metrics(p).items()}}
        cf = self.cf.get(name)
        if cf is not None:
            pc = predict(model, cf.split, self.device, cams=False)
            p.cf_preds, p.cf_valid = pc.preds, cf.valid.numpy()
            got = counterfactual.metrics(p.labels, p.preds, pc.preds, cf.valid)
            out.update({f"acc/{name}_cf": got["acc_cf"], f"flip/{name}": got["flip"]})
        return out, p

    def validation(self, model) -> dict[str, float]:
        """Per-epoch metrics on `val` (and `val_clean` where the dataset has it): no test split is read."""
        out, _ = self._split_metrics(model, "val")
        if "val_clean" in self.data.splits:
            out["acc/val_clean"] = predict(model, self.data.split("val_clean"), self.device, cams=False).accuracy
        return out

    def test(self, model) -> tuple[dict[str, float], np.ndarray, Predictions]:
        """Final metrics on every test split; returns (metrics, confusion matrix on `test`, test predictions)."""
        metrics, p = self._split_metrics(model, "test")
        metrics["bacc/test"] = balanced_accuracy(p.labels, p.preds)
        metrics["f1/test"] = macro_f1(p.labels, p.preds)
        for name in ("test_confounded", "test_clean"):
            if name in self.data.splits:
                metrics[f"acc/{name}"] = predict(model, self.data.splits[name], self.device, cams=False).accuracy
        cm = confusion_matrix(p.labels, p.preds, self.data.num_classes)
        return metrics, cm, p


def test_metrics(model, data: Dataset, device: torch.device) -> tuple[dict[str, float], np.ndarray, Predictions]:
    """`Evaluator(data, device).test(model)`, for a one-off call."""
    return Evaluator(data, device).test(model)
