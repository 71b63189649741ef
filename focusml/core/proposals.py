"""The proposals file `focusml discover` writes and the mask tool reads: regions on the feature grid.

A proposal is a group of images whose evidence sits in the same place, with a mask per member.
Masks travel as grids of cells ("0"/"1" strings, one per row of the model's feature grid): a cell
is what the model's evidence is measured on, and a grid is the same for every image size. Pixel
(y, x) of an H×W image is masked when the cell ⌊y·h/H⌋, ⌊x·w/W⌋ is (`cells_to_pixels`), which is
each cell's footprint under adaptive pooling when h divides H.

File (JSON, `FORMAT`):
    {"format": "focusml-proposals/1", "run_id": ..., "grid": [h, w], "classes": [...],
     "proposals": [{"id": "p01", "rank": 1, "scope": "all classes" | "class <name>",
                    "region": [h strings], "size": share of the image, "flip_rate": 0..1,
                    "members": [{"path": "<split>/<class>/<file>", "cells": [h strings]}, ...]}]}
"""

from __future__ import annotations

import numpy as np

FORMAT = "focusml-proposals/1"


def cells_to_text(cells: np.ndarray) -> list[str]:
    """(h, w) bool/0-1 array → h strings of "0"/"1"."""
    return ["".join("1" if v else "0" for v in row) for row in np.asarray(cells).astype(bool)]


def text_to_cells(rows: list[str]) -> np.ndarray:
    """h strings of "0"/"1" → (h, w) bool array; ValueError on anything else (ragged, other characters)."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, str) for r in rows):
        raise ValueError("a cell grid is a non-empty list of strings")
    width = len(rows[0])
    if width == 0 or any(len(r) != width or set(r) - {"0", "1"} for r in rows):
        raise ValueError("a cell grid's rows are strings of 0 and 1 of one length")
    return np.array([[c == "1" for c in r] for r in rows], dtype=bool)


def cells_to_pixels(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) cells → (height, width) bool mask: every pixel takes the cell its position falls in."""
    cells = np.asarray(cells, dtype=bool)
    h, w = cells.shape
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    return cells[rows[:, None], cols[None, :]]
