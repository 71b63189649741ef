"""One owner per outside thing: the mask tool decodes a user's image and finds its mask as the folder
loader does (`data.folder.eight_bit`, `data.folder.mask_path`), so what a user draws on and what the CAM
suggestion reads is what the model trains on."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from focusml.core.data import DataOptions
from focusml.core.data.folder import load_folder, mask_path
from focusml.masktool import CamModel, DatasetTree, MaskToolApp

W, H = 9, 7


@pytest.fixture
def sixteen_bit(tmp_path):
    """A folder dataset of 16-bit greyscale PNGs whose values span 0…65535 (clipping them to 8 bits shows)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split, cls in itertools.product(("train", "val", "test"), ("a", "b")):
        path = root / "images" / split / cls / "x.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 65536, (H, W)).astype(np.uint16)).save(path)
    assert Image.open(root / "images" / "train" / "a" / "x.png").mode.startswith("I;16")
    return root


def test_the_mask_tool_and_the_loader_decode_a_16_bit_png_identically(sixteen_bit, monkeypatch):
    loaded = load_folder(DataOptions(root=sixteen_bit)).split("train")
    want = loaded.images[0, 0].numpy()  # class a's image, as the model trains on it
    assert want.max() > 128  # scaled to 8 bits, not clipped at 255 (which would make it all white)
    app = MaskToolApp(sixteen_bit)
    shown = np.asarray(Image.open(io.BytesIO(app.image_png("train/a/x.png"))))
    assert shown.shape == (H, W, 3) and all(np.array_equal(shown[..., c], want) for c in range(3))

    import focusml.core.cam

    seen = {}

    def class_cam(model, x):  # the CAM suggestion's input, recorded
        seen["x"] = x
        raise RuntimeError("recorded")

    monkeypatch.setattr(focusml.core.cam, "class_cam", class_cam)
    app.cam_model = CamModel(model=None, classes=["a", "b"])
    monkeypatch.setattr(CamModel, "in_channels", 1)
    with pytest.raises(RuntimeError, match="recorded"):
        app.cam("train/a/x.png")
    assert np.array_equal((seen["x"][0, 0] * 255).round().byte().numpy(), want)


def test_the_mask_tool_writes_masks_where_the_loader_reads_them(tmp_path):
    (tmp_path / "images" / "val" / "cat").mkdir(parents=True)
    tree = DatasetTree(tmp_path)
    assert tree.mask_file("val/cat/photo.v2.jpg") == mask_path(tree.root, "val", "cat", "photo.v2.jpg")
