"""Dataset containers shared by every loader: splits of (image, mask, label) tensors.

Images are kept as uint8 (N×C×H×W) and masks as uint8 (N×H×W, 1 = irrelevant) so that a
dataset is cheap to hold, hash and export; `Split.batch` turns rows into float tensors. A
streamed split (`focusml.core.data.stream`) holds `Rows` read from disk on demand in place of the
image and mask tensors, with the same shape, indexing and `batch`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from focusml import FocusmlError

SPLITS = ("train", "val", "test", "test_confounded")
CLEAN_SPLITS = ("train_clean", "val_clean", "test_clean")


def as_float(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 rows → float images in [0, 1], float masks in {0, 1}, labels: what training and evaluation see."""
    return images.float().div_(255.0), masks.float(), labels


def annotated(masks) -> torch.Tensor:
    """Bool per row: does the mask mark anything (the image is annotated)? Tensor or streamed masks."""
    if isinstance(masks, torch.Tensor):
        return masks.flatten(1).amax(1) > 0 if len(masks) else torch.zeros(0, dtype=torch.bool)
    return masks.annotated()


@dataclass
class Split:
    images: torch.Tensor  # uint8 N×C×H×W (or streamed `Rows` of that shape)
    masks: torch.Tensor  # uint8 N×H×W, 1 = irrelevant, all-zero = not annotated (or streamed `Rows`)
    labels: torch.Tensor  # int64 N

    def __post_init__(self):
        n = len(self.labels)
        if self.images.ndim != 4 or self.masks.ndim != 3:
            raise ValueError("images must be N×C×H×W and masks N×H×W")
        if len(self.images) != n or len(self.masks) != n:
            raise ValueError("images, masks and labels must have the same length")
        if self.images.shape[-2:] != self.masks.shape[-2:]:
            raise ValueError("masks must have the images' height and width")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        """Whether images are read from disk on demand rather than held as a tensor."""
        return not isinstance(self.images, torch.Tensor)

    @property
    def annotated(self) -> torch.Tensor:
        """Bool per row: the image has a non-empty mask."""
        return annotated(self.masks)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float images in [0, 1], float masks in {0, 1} and labels for the given rows."""
        return as_float(self.images[index], self.masks[index], self.labels[index])


@dataclass
class Dataset:
    name: str
    classes: list[str]
    splits: dict[str, Split]
    description: str = ""
    params: dict = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["train"].images.shape[1:])

    def split(self, name: str) -> Split:
        if name not in self.splits:
            if name in CLEAN_SPLITS:
                raise FocusmlError(
                    f"dataset '{self.name}' has no clean split '{name}': the upper bound needs the "
                    "images rendered without the shortcut. For a folder dataset add a clean/ tree "
                    "(same relative paths as images/); built-in datasets always have one."
                )
            raise FocusmlError(f"dataset '{self.name}' has no split '{name}' (has: {', '.join(self.splits)})")
        return self.splits[name]

    @property
    def fingerprint(self) -> str:
        """A short content hash: equal data gives equal fingerprints on every machine.

        A streamed split is hashed from its decoded rows, read in order (one pass over the files),
        so streaming and in-memory loading of the same data give the same fingerprint; it is kept
        after the first call (a dataset with no streamed split is hashed on every call)."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.encode())
            for key in sorted(self.splits):
                s = self.splits[key]
                h.update(key.encode())
                for t in (s.images, s.masks, s.labels):
                    h.update(str(tuple(t.shape)).encode())
                    for part in ([t] if isinstance(t, torch.Tensor) else t.chunks()):
                        h.update(part.contiguous().numpy().tobytes())
            if not any(s.streamed for s in self.splits.values()):
                return h.hexdigest()[:16]
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
