"""The mask tool: a local web page to draw irrelevance masks on a folder dataset.

`focusml masks serve DATASET_DIR [--run RUN_ID]` starts `server.make_server` over the dataset;
the page (static/index.html, static/app.js: plain HTML/JS, no build step) browses images by
split and class, draws and erases rectangles and brush strokes, applies one rectangle to a whole
class or split, and, with a run, overlays the model's CAM and turns it into a suggested mask.
Masks are single-channel PNGs in ROOT/masks/ (non-zero = irrelevant), written atomically;
`paths.DatasetTree` keeps every read and write inside the dataset root. With `--proposals FILE` the
page also answers the proposals of `focusml discover` (yes / no / mixed), which `proposals.ProposalBook`
turns into masks, never over a drawn one.
"""

from focusml.masktool.paths import DatasetTree, UnsafePath
from focusml.masktool.proposals import ProposalBook
from focusml.masktool.server import CamModel, MaskToolApp, load_cam_model, make_server

__all__ = ["CamModel", "DatasetTree", "MaskToolApp", "ProposalBook", "UnsafePath", "load_cam_model", "make_server"]
