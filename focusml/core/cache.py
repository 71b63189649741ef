"""Where focusml keeps what it computes once and reuses: `$FOCUSML_CACHE`, default `~/.cache/focusml`.

The built-in inpainter of `generative` and torchvision's MNIST files live under it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$FOCUSML_CACHE` when set, else `~/.cache/focusml` (read at call time, so tests can redirect it)."""
    return Path(os.environ.get("FOCUSML_CACHE", Path.home() / ".cache" / "focusml"))
