"""Figures people would rather look at than read: CAM grids and confusion matrices (matplotlib, Agg)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from focusml.core.data import Dataset, Split  # noqa: E402
from focusml.core.evaluate import predict  # noqa: E402


def sample_indices(labels: torch.Tensor, num_classes: int, per_class: int = 2) -> torch.Tensor:
    """The first `per_class` rows of each class: a fixed, label-balanced sample for CAM grids."""
    picks = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)]
    return torch.cat(picks)


def _display(img: torch.Tensor) -> np.ndarray:
    arr = img.float().numpy()
    if arr.shape[0] == 1:
        return arr[0]
    arr = arr.transpose(1, 2, 0)  # RGB: matplotlib ignores vmin/vmax, so bring 0..255 to [0, 1]
    return arr / 255.0 if arr.max() > 1 else arr


#: Okabe–Ito colours, told apart with every common colour-vision deficiency (red/green is not)
RIGHT, WRONG = "#0072B2", "#D55E00"  # blue, vermillion


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a square-ish grid for n panels, never wider than 2:1 (the MLflow UI shows
    image series as small square-ish thumbnails, so a long strip becomes unreadable)."""
    cols = max(1, math.ceil(math.sqrt(n * 1.25)))
    return (n + cols - 1) // cols, cols


class CamGrid:
    """A CAM grid of fixed images and masks whose CAMs, predictions and title change (`update`).

    The figure, its layout and the mask outlines are made once; `update` only swaps the overlays
    and the texts, so a per-epoch series (`cam_grid_val`) costs one draw per epoch instead of a new
    figure and layout. `image()` renders it for `mlflow.log_image`; `close()` frees it.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels, classes: list[str], cols: int | None = None):
        n = len(images)
        rows, cols = grid_shape(n) if cols is None else ((n + min(cols, n) - 1) // min(cols, n), min(cols, n))
        self.n, self.cols, self.classes, self.labels = n, cols, classes, [int(y) for y in labels]
        self.fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows + 0.7), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        self.axes = list(axes.flat[:n])
        self.overlays, self.dead_texts = [], []
        for i, ax in enumerate(self.axes):
            img = _display(images[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.max() <= 1 else 255)
            self.overlays.append(ax.imshow(np.zeros(img.shape[:2]), cmap="inferno", alpha=0.55, vmin=0, vmax=1))
            self.dead_texts.append(ax.text(0.5, 0.08, "", transform=ax.transAxes, ha="center", va="bottom",
                                           fontsize=11, color="black",
                                           bbox={"facecolor": "#F0E442", "edgecolor": "none", "pad": 2}))
            self.dead_texts[-1].set_visible(False)
            if masks[i].sum() > 0:
                ax.contour(masks[i].numpy(), levels=[0.5], colors="white", linewidths=1.5)
        self.head_lines = -1  # the suptitle's line count the layout was made for
        pars = self.fig.subplotpars  # tight_layout starts from these: a redone layout equals a fresh one
        self.pars = {k: getattr(pars, k) for k in ("left", "right", "bottom", "top", "wspace", "hspace")}

    def update(self, cams: torch.Tensor, preds, title: str | None = None) -> "CamGrid":
        dead = 0
        for i, ax in enumerate(self.axes):
            cam = cams[i].float().numpy()
            peak = float(cam.max()) if cam.size else 0.0
            overlay, text = self.overlays[i], self.dead_texts[i]
            overlay.set_visible(peak > 0)
            text.set_visible(peak <= 0)
            text.set_text("dead CAM" if peak <= 0 else "")
            if peak > 0:
                overlay.set_data(cam / peak)
            else:
                dead += 1
            y, p = self.classes[self.labels[i]], self.classes[int(preds[i])]
            ok = y == p
            ax.set_title(f"{y} ✓" if ok else f"{y} → {p} ✗", fontsize=13 if self.n > 12 else 17,
                         color=RIGHT if ok else WRONG, fontweight="bold" if not ok else "normal")
        head = title or ""
        if dead:
            head += f"\n{dead} of {self.n} CAMs all zero: dead, no positive evidence" if self.cols < 5 else \
                f"\n{dead} of {self.n} CAMs are all zero (dead: no positive evidence anywhere)"
        legend = "true ✓ · true → predicted ✗ · white: mask" if self.cols < 5 else \
            "label: true ✓ (right) or true → predicted ✗ (wrong) · white: mask · CAM: dark → bright"
        text = head + ("\n" if head else "") + legend
        self.fig.suptitle(text, fontsize=12 if self.cols >= 4 else 10)
        if text.count("\n") != self.head_lines:  # the layout depends on the title's height only
            self.fig.subplots_adjust(**self.pars)
            self.fig.tight_layout()
            self.head_lines = text.count("\n")
        return self

    def image(self) -> Image.Image:
        """The figure as it stands, as an RGB image (for an `mlflow.log_image` step series)."""
        self.fig.canvas.draw()
        return Image.fromarray(np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy())

    def close(self) -> None:
        plt.close(self.fig)


def cam_grid(images: torch.Tensor, masks: torch.Tensor, cams: torch.Tensor, labels, preds,
             classes: list[str], cols: int | None = None, title: str | None = None):
    """Each image with its positive CAM overlaid (inferno, scaled to the image's own maximum), the
    mask outlined in white and the label above it: `true ✓` in blue when right, `true → predicted ✗`
    in vermillion when wrong (shape and colour both tell). An all-zero CAM is written `dead CAM`
    instead of being drawn: it is a network that puts no positive evidence anywhere, not a clean one.
    """
    return CamGrid(images, masks, labels, classes, cols).update(cams, preds, title).fig


def sample_grid(data: Dataset, split_name: str = "train", per_class: int = 4, title: str | None = None):
    """A matplotlib figure: `per_class` images of each class from a split, one row per class
    (named on the left), each image with its mask outlined in cyan."""
    split = data.split(split_name)
    index = sample_indices(split.labels, data.num_classes, per_class)
    rows, cols = data.num_classes, per_class
    fig, axes = plt.subplots(rows, cols, figsize=(1.15 * cols + 0.9, 1.15 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(index.tolist()):
        y = int(split.labels[i])
        col = (split.labels[index[:k]] == y).sum().item()
        ax = axes[y, col]
        img = split.images[i].numpy()
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        mask = split.masks[i].numpy()
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
        if col == 0:
            ax.text(-0.08, 0.5, data.classes[y], transform=ax.transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title or f"{data.name}: {split_name}", fontsize=9)
    fig.tight_layout()
    return fig


def split_cam_grid(model, data: Dataset, split_name: str, index: torch.Tensor, device, title: str,
                   cols: int | None = None):
    """`cam_grid` of rows `index` of a split, with the model's predictions and positive CAMs."""
    split = data.split(split_name)
    sub = Split(split.images[index], split.masks[index], split.labels[index])
    p = predict(model, sub, device)
    return cam_grid(sub.images, sub.masks, p.pos_cams, p.labels, p.preds, data.classes, cols=cols, title=title)


class CamSeries:
    """The CAM grid of fixed rows of a split, redrawn for each state of a model: a per-epoch image
    series (`cam_grid_val`) that makes its figure once and pays one draw per step."""

    def __init__(self, data: Dataset, split_name: str, index: torch.Tensor):
        split = data.split(split_name)
        self.sub = Split(split.images[index], split.masks[index], split.labels[index])
        self.grid = CamGrid(self.sub.images, self.sub.masks, self.sub.labels, data.classes)

    def image(self, model, device, title: str) -> Image.Image:
        p = predict(model, self.sub, device)
        return self.grid.update(p.pos_cams, p.preds, title).image()

    def close(self) -> None:
        self.grid.close()


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "confusion matrix (test)"):
    """The confusion matrix as scikit-learn's `ConfusionMatrixDisplay` draws it (Blues, counts in
    each cell), drawn here so that a run never imports scikit-learn for one figure."""
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    n = cm.shape[0]
    im = ax.imshow(cm, interpolation="nearest", cmap="Blues")
    low, high = im.cmap(0), im.cmap(1.0)
    thresh = (cm.max() + cm.min()) / 2.0 if cm.size else 0
    for i in range(n):
        for j in range(n):
            value = cm[i, j]
            text = format(value, ".2g")
            if cm.dtype.kind != "f" and len(format(value, "d")) < len(text):
                text = format(value, "d")
            ax.text(j, i, text, ha="center", va="center", color=high if value < thresh else low)
    ax.set(xticks=np.arange(n), yticks=np.arange(n), xticklabels=classes, yticklabels=classes,
           ylabel="True label", xlabel="Predicted label")
    ax.set_ylim((n - 0.5, -0.5))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def to_pil(fig):
    """Render a figure to a PIL image (for mlflow.log_image step series) and close it."""
    fig.canvas.draw()
    img = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return img


def close(fig) -> None:
    plt.close(fig)


def mask_augment_grid(images: torch.Tensor, masks: torch.Tensor, augmented: list[torch.Tensor],
                      title: str | None = None):
    """Rows: the given masks, then each augmented draw, overlaid in red (alpha = mask value)."""
    rows = [("mask", masks), *((f"draw {i + 1}", a) for i, a in enumerate(augmented))]
    cols = len(images)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.4 * len(rows)), squeeze=False)
    for r, (label, ms) in enumerate(rows):
        for i in range(cols):
            ax = axes[r, i]
            ax.axis("off")
            img = _display(images[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.max() <= 1 else 255)
            overlay = np.zeros((*ms[i].shape, 4))
            overlay[..., 0] = 1.0
            overlay[..., 3] = 0.6 * ms[i].float().clamp(0, 1).numpy()
            ax.imshow(overlay)
            if i == 0:
                ax.set_title(label, fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


#: the proposed region's outline (magenta, as the mask tool draws a suggested mask)
REGION = "#CC00CC"


def proposal_grid(images: torch.Tensor, masks: torch.Tensor, labels, classes: list[str], title: str):
    """A proposal's members: each image with its proposed mask outlined in magenta and its class above it."""
    rows, cols = grid_shape(len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.2, 1.35 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, mask, y in zip(axes.flat, images, masks, labels):
        arr = _display(img)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        if mask.any():  # padded, so a region on the image's edge is outlined there too; filled lightly
            m = np.pad(mask.numpy().astype(float), 1)
            ax.contour(np.arange(-1, m.shape[1] - 1), np.arange(-1, m.shape[0] - 1), m, levels=[0.5], colors=REGION,
                       linewidths=1.4)
            ax.imshow(np.ma.masked_equal(mask.numpy(), 0), cmap=ListedColormap([REGION]), alpha=0.3,
                      interpolation="nearest")
        ax.set_xlim(-0.5, arr.shape[1] - 0.5)
        ax.set_ylim(arr.shape[0] - 0.5, -0.5)
        ax.set_title(classes[int(y)], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
