"""Safe path resolution for the mask tool: nothing outside the dataset root is read or written.

Every path the web page names is relative to the folder dataset's `images/` tree and has exactly
three parts, `<split>/<class>/<file>`. A part may not be empty, `.`, `..`, contain a slash,
backslash or NUL, or start with a dot; an absolute path is refused. After joining, the path is
resolved with every symbolic link followed (`os.path.realpath`) and must still lie inside the
dataset root, so a link that leaves the root, whether on the file or on any folder above it,
is refused too. Listings skip such entries instead of failing.

Masks are written atomically: a temporary file in the mask's own folder, fsync, `os.replace`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from focusml import FocusmlError
from focusml.data.folder import IMAGE_EXTENSIONS


class UnsafePath(FocusmlError):
    """A path that is malformed or would leave the dataset root."""


def check_part(part: str) -> str:
    """Return `part` if it is one plain path component; raise UnsafePath otherwise."""
    if not isinstance(part, str) or part in ("", ".", ".."):
        raise UnsafePath(f"path component {part!r} is not allowed")
    if any(c in part for c in ("/", "\\", "\0")) or part.startswith(".") or len(part) > 255:
        raise UnsafePath(f"path component {part!r} is not a plain file or folder name")
    return part


def split_rel(rel: str) -> tuple[str, str, str]:
    """'<split>/<class>/<file>' → its three checked parts; refuses absolute and `..` paths."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePath("empty path")
    if rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePath(f"absolute path {rel!r} is not allowed; paths are relative to images/")
    parts = rel.split("/")
    for p in parts:
        check_part(p)
    if len(parts) != 3:
        raise UnsafePath(f"path {rel!r} must have the form <split>/<class>/<file>")
    return parts[0], parts[1], parts[2]


class DatasetTree:
    """A folder dataset on disk (layout of focusml.data.folder), seen through safe paths only."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if not (root / "images").is_dir():
            raise FocusmlError(
                f"{root} is not a folder dataset: {root / 'images'} is missing. Expected "
                "ROOT/images/<split>/<class>/<file>; `focusml datasets export decoy-digits DIR` writes an example."
            )
        self.root = Path(os.path.realpath(root))

    # -- resolution -------------------------------------------------------------------------
    def inside(self, *parts: str) -> Path:
        """Join checked parts under the root; raise UnsafePath if the real path leaves the root."""
        for p in parts:
            check_part(p)
        path = self.root.joinpath(*parts)
        real = Path(os.path.realpath(path))
        if real != self.root and self.root not in real.parents:
            raise UnsafePath(f"{'/'.join(parts)} leads outside the dataset root")
        return real

    def _safe_dir_entries(self, *parts: str) -> list[str]:
        try:
            base = self.inside(*parts)
        except UnsafePath:
            return []
        if not base.is_dir():
            return []
        names = []
        for name in sorted(os.listdir(base)):
            try:
                self.inside(*parts, name)
            except UnsafePath:
                continue
            names.append(name)
        return names

    # -- listing ----------------------------------------------------------------------------
    def splits(self) -> list[str]:
        return [s for s in self._safe_dir_entries("images") if (self.root / "images" / s).is_dir()]

    def classes(self, split: str) -> list[str]:
        self.inside("images", split)  # a split that leaves the root is refused, not listed empty
        return [c for c in self._safe_dir_entries("images", split) if self.inside("images", split, c).is_dir()]

    def images(self, split: str, cls: str) -> list[str]:
        """Image paths '<split>/<class>/<file>' of one class, sorted; entries leaving the root are skipped."""
        self.inside("images", split, cls)
        out = []
        for name in self._safe_dir_entries("images", split, cls):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and self.inside("images", split, cls, name).is_file():
                out.append(f"{split}/{cls}/{name}")
        return out

    # -- files ------------------------------------------------------------------------------
    def image_file(self, rel: str) -> Path:
        split, cls, name = split_rel(rel)
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            raise UnsafePath(f"{rel!r} is not an image file name ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        path = self.inside("images", split, cls, name)
        if not path.is_file():
            raise FileNotFoundError(rel)
        return path

    def mask_file(self, rel: str) -> Path:
        """Where the mask of image `rel` lives (masks/<split>/<class>/<stem>.png); may not exist yet."""
        split, cls, name = split_rel(rel)
        return self.inside("masks", split, cls, Path(name).stem + ".png")

    def image_size(self, rel: str) -> tuple[int, int]:
        with Image.open(self.image_file(rel)) as img:
            return img.size

    def read_mask(self, rel: str) -> np.ndarray:
        """The image's mask as uint8 H×W in {0, 1}; all zero when no mask file exists yet.

        A mask of another size than its image is resized (nearest neighbour) to the image's size,
        so saving it from the tool repairs it.
        """
        w, h = self.image_size(rel)
        path = self.mask_file(rel)
        if not path.is_file():
            return np.zeros((h, w), dtype=np.uint8)
        with Image.open(path) as m:
            m = m.convert("L")
            if m.size != (w, h):
                m = m.resize((w, h), Image.NEAREST)
            return (np.asarray(m) > 0).astype(np.uint8)

    def write_mask(self, rel: str, mask: np.ndarray) -> Path:
        """Save `mask` (H×W, non-zero = irrelevant) as a single-channel 0/255 PNG, atomically."""
        w, h = self.image_size(rel)
        if mask.shape != (h, w):
            raise ValueError(f"mask is {mask.shape[1]}×{mask.shape[0]}, image {rel} is {w}×{h}")
        split, cls, _ = split_rel(rel)
        for depth in range(1, 4):  # create masks/, masks/<split>/, masks/<split>/<class>/ safely
            folder = self.inside(*("masks", split, cls)[:depth])
            folder.mkdir(exist_ok=True)
        path = self.mask_file(rel)
        self.inside("masks", split, cls)  # re-check: a folder may have become a link meanwhile
        return atomic_write_png(path, (mask > 0).astype(np.uint8) * 255)

    def backup(self, rel: str) -> bytes | None:
        """Current bytes of the mask file of `rel`, or None when it has none (for bulk undo)."""
        path = self.mask_file(rel)
        return path.read_bytes() if path.is_file() else None

    def restore(self, rel: str, data: bytes | None) -> None:
        path = self.mask_file(rel)
        if data is None:
            if path.is_file():
                path.unlink()
            return
        atomic_write_bytes(path, data)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mask-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_png(path: Path, array: np.ndarray) -> Path:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
