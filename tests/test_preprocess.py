"""Images as a user has them → the network's input: every accepted form, the training conversion, one-line refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from focusml import FocusmlError
from focusml.core.data.folder import image_array
from focusml.core.preprocess import ACCEPTED, to_batch


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def grey():
    return np.random.default_rng(0).integers(0, 256, (10, 14), dtype=np.uint8)


def test_every_form_of_the_same_image_gives_the_same_batch(grey, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(grey).save(path)
    want = torch.from_numpy(grey).float()[None, None] / 255
    rgb = np.repeat(grey[:, :, None], 3, axis=2)  # grey as RGB: converted back exactly
    forms = [str(path), path, _png(grey), grey, grey[:, :, None], rgb, rgb[None], [str(path)], [grey],
             np.array([str(path)], dtype=object), grey.astype(np.int64), want.numpy()]
    for form in forms:
        got = to_batch(form, (1, 10, 14))
        assert got.dtype == torch.float32 and torch.equal(got, want), type(form)
    assert torch.equal(to_batch([str(path), _png(grey), rgb], (1, 10, 14)), want.expand(3, -1, -1, -1))


def test_other_sizes_and_channels_are_converted_like_the_folder_dataset(grey):
    big = np.asarray(Image.fromarray(grey).resize((28, 20)))
    rgba = np.stack([big, big // 2, 255 - big, np.full_like(big, 255)], axis=-1)
    got = to_batch(rgba, (3, 10, 14))
    assert got.shape == (1, 3, 10, 14)
    want = image_array(Image.fromarray(rgba), "RGB", (14, 10))  # what training would have stored
    assert torch.equal(got[0], torch.tensor(want).float() / 255)
    assert to_batch(np.zeros((2, 7, 7, 2), np.uint8), (1, 10, 14)).shape == (2, 1, 10, 14)  # grey + alpha, batch
    assert to_batch(_png(rgba[:, :, :3].copy(), "JPEG"), (1, 10, 14)).shape == (1, 1, 10, 14)


@pytest.mark.parametrize("bad,reason", [
    (np.full((2, 1, 10, 14), 200.0, np.float32), "floats must be in [0, 1]; pass uint8 for 0–255 pixels"),
    (np.zeros((2, 3, 10, 14), np.float32), "a float array must be N×1×10×14"),
    (np.zeros((10, 14, 7), np.uint8), "got an image array of shape (10, 14, 7) (channels last, 1–4 channels)"),
    (np.full((10, 14), 300), "got an int64 array of shape (10, 14) with values 300–300"),
    (np.zeros(5, np.uint8), "got a uint8 array of shape (5,)"),
    ({"image": 1}, "got a builtins.dict"),
    (b"not an image", "the 12 bytes given are not a readable image (UnidentifiedImageError); give a PNG or JPEG"),
    ("/no/such/file.png", "no image file /no/such/file.png"),
])
def test_a_wrong_input_is_refused_in_one_line_without_its_values(bad, reason):
    with pytest.raises(FocusmlError) as err:
        to_batch(bad, (1, 10, 14))
    msg = str(err.value)
    assert reason in msg and "\n" not in msg and len(msg) < 400, msg
    assert "[[" not in msg and "200." not in msg  # the array itself is never printed
    if isinstance(bad, (np.ndarray, dict)):
        assert msg.startswith(f"the model takes {ACCEPTED}; got ")
