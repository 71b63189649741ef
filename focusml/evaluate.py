"""Metrics on every split (docs/methods.md): accuracy, balanced accuracy, macro-F1, WR, CAM in mask.

Attention metrics use the positive CAM of the predicted class, upsampled to the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from focusml.cam import cam_in_mask, class_cam, upsample, wrong_reason
from focusml.data import Dataset, Split


@dataclass
class Predictions:
    labels: np.ndarray
    preds: np.ndarray
    pos_cams: torch.Tensor  # N×H×W, ReLU of the predicted class's CAM at image size
    masks: torch.Tensor  # N×H×W

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.preds).mean())


@torch.no_grad()
def predict(model, split: Split, device: torch.device, batch_size: int = 256) -> Predictions:
    model.eval()
    preds, cams = [], []
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x, _, _ = split.batch(idx)
        cam, logits = class_cam(model, x.to(device))
        preds.append(logits.argmax(1).cpu())
        cams.append(upsample(cam.clamp_min(0), x.shape[-2:]).cpu())
    return Predictions(split.labels.numpy(), torch.cat(preds).numpy(), torch.cat(cams), split.masks.float())


def attention_metrics(p: Predictions) -> dict[str, float]:
    return {"wr": wrong_reason(p.pos_cams, p.masks), "cam_in_mask": cam_in_mask(p.pos_cams, p.masks)}


def validation_metrics(model, data: Dataset, device: torch.device) -> dict[str, float]:
    """Per-epoch metrics on `val` (the only split used for choosing: no test leakage)."""
    p = predict(model, data.split("val"), device)
    att = attention_metrics(p)
    return {"acc/val": p.accuracy, "wr/val": att["wr"], "cam_in_mask/val": att["cam_in_mask"]}


def test_metrics(model, data: Dataset, device: torch.device) -> tuple[dict[str, float], np.ndarray, Predictions]:
    """Final metrics on every test split; returns (metrics, confusion matrix on `test`, test predictions)."""
    p = predict(model, data.split("test"), device)
    att = attention_metrics(p)
    metrics = {
        "acc/test": p.accuracy,
        "bacc/test": float(balanced_accuracy_score(p.labels, p.preds)),
        "f1/test": float(f1_score(p.labels, p.preds, average="macro")),
        "wr/test": att["wr"],
        "cam_in_mask/test": att["cam_in_mask"],
    }
    for name in ("test_confounded", "test_clean"):
        if name in data.splits:
            metrics[f"acc/{name}"] = predict(model, data.splits[name], device).accuracy
    cm = confusion_matrix(p.labels, p.preds, labels=list(range(data.num_classes)))
    return metrics, cm, p
