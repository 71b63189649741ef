"""Images as a user has them → the batch a trained network takes: what the logged MLflow model and
`focusml predict` apply before the forward pass.

Accepted (`ACCEPTED`): image file paths, PNG/JPEG/... bytes, uint8 arrays H×W, H×W×C or N×H×W×C
(C 1–4; integer arrays with values 0–255 count as uint8, as JSON sends them), a list mixing
those, and the network's own input, a float array N×C×H×W in [0, 1] at the training size. Every
image goes through the folder dataset's own conversion (`data.folder.image_array`): 8 bits,
greyscale or RGB as the model was trained, resized (bilinear) to the training size, then scaled
to [0, 1], so a prediction sees what training saw. Anything else is refused with one line
naming what was given (type, dtype, shape, never the values) and what is accepted.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image

from focusml import FocusmlError
from focusml.core.data.folder import READ_ERRORS, image_array

ACCEPTED = ("image file paths, PNG/JPEG bytes, uint8 arrays H×W, H×W×C or N×H×W×C (0–255, any size, 1–4 channels), "
            "or a float32 array N×C×H×W in [0, 1] at the training size")


def _refuse(got: str) -> FocusmlError:
    return FocusmlError(f"the model takes {ACCEPTED}; got {got}")


def _described(arr: np.ndarray) -> str:
    article = "an" if str(arr.dtype)[0] in "aeio" else "a"
    return f"{article} {arr.dtype} array of shape {tuple(arr.shape)}"


def _from_file(item, what: str) -> Image.Image:
    try:
        img = Image.open(item)
        img.load()
        return img
    except FileNotFoundError:
        raise FocusmlError(f"no image file {os.fspath(item)}: give an existing path") from None
    except READ_ERRORS as e:
        reason = type(e).__name__ if isinstance(item, io.BytesIO) else f"{type(e).__name__}: {e}"
        raise FocusmlError(f"{what} {'are' if isinstance(item, io.BytesIO) else 'is'} not a readable image ({reason}); "
                           "give a PNG or JPEG") from None


def _pixels(arr: np.ndarray) -> np.ndarray:
    """An integer array as uint8 pixels, refused unless every value is in 0–255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        lo, hi = (arr.min(), arr.max()) if arr.size and arr.dtype.kind in "iub" else ("", "")
        values = f" with values {lo}–{hi}" if arr.dtype.kind in "iu" else ""
        raise _refuse(_described(arr) + values)
    return arr.astype(np.uint8)


def _from_pixels(arr: np.ndarray) -> Image.Image:
    """One uint8 image H×W or H×W×C (C 1–4) as a PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2 or (arr.ndim == 3 and 2 <= arr.shape[2] <= 4):
        return Image.fromarray(np.ascontiguousarray(arr))
    raise _refuse(f"an image array of shape {tuple(arr.shape)} (channels last, 1–4 channels)")


def images(inputs) -> list:
    """The inputs as a list of single images (PIL images), or one float array N×C×H×W left as it is."""
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, (str, os.PathLike)):
        return [_from_file(inputs, f"file {os.fspath(inputs)}")]
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        return [_from_file(io.BytesIO(bytes(inputs)), f"the {len(inputs)} bytes given")]
    if isinstance(inputs, (list, tuple)):
        if inputs and all(isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, torch.Tensor))
                          for x in inputs):
            return [img for x in inputs for img in _single(x)]
        try:
            inputs = np.asarray(inputs)
        except ValueError:
            raise _refuse(f"a {type(inputs).__name__} of {len(inputs)} items of uneven shapes") from None
    if not isinstance(inputs, np.ndarray):
        raise _refuse(f"a {type(inputs).__module__}.{type(inputs).__name__}")
    arr = inputs
    if arr.dtype.kind in "OUS":
        return [img for x in arr.reshape(-1).tolist() for img in _single(x)]
    if arr.size == 0:
        raise _refuse(f"an empty array of shape {tuple(arr.shape)}")
    if arr.dtype.kind == "f":
        return [arr]
    arr = _pixels(arr)
    if arr.ndim in (2, 3):
        return [_from_pixels(arr)]
    if arr.ndim == 4:
        return [_from_pixels(a) for a in arr]
    raise _refuse(_described(arr))


def _single(item) -> list:
    """One item of a list: a path, encoded bytes or an image array (H×W, H×W×C: one image; N×H×W×C: N)."""
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        return images(item)
    arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "iu":
        return images(arr)
    raise _refuse(f"a list holding a {type(arr).__name__}" + (f" ({_described(arr)})" if isinstance(arr, np.ndarray)
                                                               else ""))


def _float_batch(arr: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """The network's own input, checked: N×C×H×W at the training shape, finite, in [0, 1]."""
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
        raise _refuse(f"{_described(arr)} (a float array must be N×{shape[0]}×{shape[1]}×{shape[2]})")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise _refuse(f"{_described(arr)} with values {lo:g} to {hi:g} (floats must be in [0, 1]; pass uint8 "
                      "for 0–255 pixels)")
    return torch.as_tensor(arr, dtype=torch.float32)


def to_batch(inputs, shape: tuple[int, int, int]) -> torch.Tensor:
    """`inputs` (see `ACCEPTED`) as a float32 batch N×C×H×W in [0, 1] for a network trained on C×H×W images."""
    c, h, w = shape
    got = images(inputs)
    if len(got) == 1 and isinstance(got[0], np.ndarray):
        return _float_batch(got[0], (c, h, w))
    mode = "L" if c == 1 else "RGB"
    rows = np.stack([image_array(img, mode, (w, h)) for img in got])
    return torch.from_numpy(rows).float() / 255.0
