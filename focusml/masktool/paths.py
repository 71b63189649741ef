"""Safe path resolution for the mask tool: nothing outside the dataset root is read or written.

Every path the web page names is relative to the folder dataset's `images/` tree and has exactly
three parts, `<split>/<class>/<file>`. A part may not be empty, `.`, `..`, contain a slash,
backslash or NUL, or start with a dot; an absolute path is refused. After joining, the path is
resolved with every symbolic link followed (`os.path.realpath`) and must still lie inside the
dataset root, so a link that leaves the root, whether on the file or on any folder above it,
is refused too. Listings skip such entries instead of failing.

Writes never go through a symbolic link, not even one that stays inside the root (a mask path
linked to a training image would otherwise overwrite the image): `masks/`, `masks/<split>/`,
`masks/<split>/<class>/` and the mask file itself must be real folders and a regular file, or
the write is refused (UnsafePath, HTTP 403). Where the OS allows (POSIX), the folders are opened
one at a time from the root with O_NOFOLLOW and every later step works relative to the opened
folder, so a folder swapped for a link mid-write cannot redirect it either.

Masks are written atomically: a temporary file created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW)
in the mask's own folder, fsync, `os.replace` onto the mask's name (a rename replaces a directory
entry and never writes into the file an entry points to).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from focusml import FocusmlError
from focusml.core.data.folder import IMAGE_EXTENSIONS, READ_ERRORS, mask_path


class UnsafePath(FocusmlError):
    """A path that is malformed or would leave the dataset root."""


class BrokenImage(FocusmlError):
    """An image or mask file that cannot be decoded: that one file is refused (HTTP 422), listings mark it."""


def open_image(path: Path, rel: str, what: str = "image", header_only: bool = False) -> Image.Image:
    """The image at `path` (decoded, or only its header); BrokenImage naming `rel` when it is not a readable image."""
    try:
        img = Image.open(path)
        if not header_only:
            img.load()
        return img
    except READ_ERRORS as e:
        raise BrokenImage(f"the {what} of {rel} is not a readable image ({type(e).__name__}: {e}); replace or "
                          "remove the file") from None


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
    """A folder dataset on disk (layout of focusml.core.data.folder), seen through safe paths only."""

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
        return self.inside(*mask_path(Path(), *split_rel(rel)).parts)

    def image_size(self, rel: str) -> tuple[int, int]:
        """From the file's header; BrokenImage when it is not an image."""
        with open_image(self.image_file(rel), rel, header_only=True) as img:
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
        with open_image(path, rel, "mask") as m:
            m = m.convert("L")
            if m.size != (w, h):
                m = m.resize((w, h), Image.NEAREST)
            return (np.asarray(m) > 0).astype(np.uint8)

    def write_mask(self, rel: str, mask: np.ndarray) -> Path | None:
        """Save `mask` (H×W, non-zero = irrelevant) as a single-channel 0/255 PNG, atomically.

        An all-zero mask of an image that has no mask file writes nothing (None): no file already
        means "not annotated", so only drawn masks reach the disk. Refused (UnsafePath) when the mask
        file or a folder above it in masks/ is a symbolic link.
        """
        w, h = self.image_size(rel)
        if mask.shape != (h, w):
            raise ValueError(f"mask is {mask.shape[1]}×{mask.shape[0]}, image {rel} is {w}×{h}")
        split, cls, name = split_rel(rel)
        self.check_writable(rel)
        if not mask.any() and self.backup(rel) is None:
            return None
        return atomic_write_png(self, (split, cls, Path(name).stem + ".png"), (mask > 0).astype(np.uint8) * 255)

    def check_writable(self, rel: str) -> None:
        """Raise UnsafePath if saving the mask of `rel` would go through a link or onto a non-file.

        Missing folders are fine (a save creates them); checked before a bulk change touches anything.
        """
        split, cls, name = split_rel(rel)
        target = _Target(self, split, cls, Path(name).stem + ".png")
        with target.folder(create=False) as folder:
            if folder is not None:
                target.entry_kind(folder)

    def backup(self, rel: str) -> bytes | None:
        """Current bytes of the mask file of `rel`, or None when it has none (for bulk undo)."""
        split, cls, name = split_rel(rel)
        target = _Target(self, split, cls, Path(name).stem + ".png")
        with target.folder(create=False) as folder:
            if folder is None or target.entry_kind(folder) is None:
                return None
            return target.read(folder)

    def restore(self, rel: str, data: bytes | None) -> None:
        """Put back the mask bytes `backup` returned (None: remove the mask); never through a link."""
        split, cls, name = split_rel(rel)
        target = _Target(self, split, cls, Path(name).stem + ".png")
        if data is not None:
            atomic_write_bytes(self, (split, cls, target.name), data)
            return
        with target.folder(create=False) as folder:
            if folder is not None and target.entry_kind(folder) is not None:
                target.unlink(folder)


_DIR_FD = all(f in os.supports_dir_fd for f in (os.open, os.stat, os.mkdir, os.rename, os.unlink)) \
    and os.stat in os.supports_follow_symlinks and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def _is_link(st: os.stat_result) -> bool:
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_reparse_tag", 0))  # Windows junctions too


class _Target:
    """One mask file masks/<split>/<class>/<name> under the root, reached without following links.

    On POSIX, `folder()` yields a file descriptor of the class folder opened component by component
    with O_NOFOLLOW; elsewhere it yields the folder's path after checking each component with lstat.
    """

    def __init__(self, tree: DatasetTree, split: str, cls: str, name: str):
        self.tree, self.parts, self.name = tree, ("masks", check_part(split), check_part(cls)), check_part(name)

    def shown(self, depth: int | None = None) -> str:
        return "/".join((*self.parts, self.name)[:depth])

    def _link_error(self, depth: int | None = None) -> UnsafePath:
        what = "folder" if depth is not None else "file"
        return UnsafePath(
            f"{self.shown(depth)} is a symbolic link; the mask tool never writes through links (it could overwrite "
            f"the file it points to). Replace it with a real {what} or remove it."
        )

    def folder(self, create: bool):
        return _FolderHandle(self, create)

    def entry_kind(self, folder) -> str | None:
        """'file' when the mask exists as a regular file, None when absent; UnsafePath otherwise."""
        try:
            st = (os.stat(self.name, dir_fd=folder, follow_symlinks=False) if _DIR_FD
                  else os.lstat(os.path.join(folder, self.name)))
        except FileNotFoundError:
            return None
        if _is_link(st):
            raise self._link_error()
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{self.shown()} is not a regular file. Remove it; masks are PNG files.")
        return "file"

    def read(self, folder) -> bytes:
        fd = (os.open(self.name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY, dir_fd=folder) if _DIR_FD
              else os.open(os.path.join(folder, self.name), os.O_RDONLY | _O_NOFOLLOW | _O_BINARY))
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def unlink(self, folder) -> None:
        if _DIR_FD:
            os.unlink(self.name, dir_fd=folder)
        else:
            os.unlink(os.path.join(folder, self.name))

    def write(self, folder, data: bytes) -> None:
        """Exclusive temporary file in the folder, fsync, rename onto the mask's name."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
        for _ in range(100):
            tmp = f".mask-{secrets.token_hex(8)}.tmp"
            try:
                fd = (os.open(tmp, flags, 0o666, dir_fd=folder) if _DIR_FD
                      else os.open(os.path.join(folder, tmp), flags, 0o666))
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 64 random bits
            raise OSError(errno.EEXIST, "no free temporary file name", self.shown(3))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.entry_kind(folder)  # last check: the name may have become a link meanwhile
            if _DIR_FD:
                os.replace(tmp, self.name, src_dir_fd=folder, dst_dir_fd=folder)
            else:
                os.replace(os.path.join(folder, tmp), os.path.join(folder, self.name))
        except BaseException:
            self.unlink_tmp(folder, tmp)
            raise
        if _DIR_FD:
            try:
                os.fsync(folder)  # make the rename durable
            except OSError:
                pass

    @staticmethod
    def unlink_tmp(folder, tmp: str) -> None:
        try:
            if _DIR_FD:
                os.unlink(tmp, dir_fd=folder)
            else:
                os.unlink(os.path.join(folder, tmp))
        except OSError:
            pass  # already gone; the original error is what matters


class _FolderHandle:
    """Context manager: the class folder of a `_Target` (fd or path), None if missing and not created."""

    def __init__(self, target: _Target, create: bool):
        self.target, self.create, self.fd = target, create, None

    def __enter__(self):
        t = self.target
        if not _DIR_FD:
            return self._enter_paths()
        fd = os.open(t.tree.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        try:
            for depth, part in enumerate(t.parts, start=1):
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not self.create:
                        os.close(fd)
                        return None
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass  # created meanwhile: the O_NOFOLLOW open below checks what it is
                else:
                    if _is_link(st):
                        raise t._link_error(depth)
                    if not stat.S_ISDIR(st.st_mode):
                        raise UnsafePath(f"{t.shown(depth)} is not a folder. Move it away; masks go in "
                                         "masks/<split>/<class>/.")
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise t._link_error(depth) from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return fd

    def _enter_paths(self):
        t = self.target
        folder = t.tree.root
        for depth, part in enumerate(t.parts, start=1):
            folder = folder / part
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                if not self.create:
                    return None
                folder.mkdir(exist_ok=True)
                st = os.lstat(folder)
            if _is_link(st) or getattr(os.path, "isjunction", lambda p: False)(folder):
                raise t._link_error(depth)
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePath(f"{t.shown(depth)} is not a folder. Move it away; masks go in masks/<split>/<class>/.")
        return os.fspath(folder)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return False


def atomic_write_bytes(tree: DatasetTree, parts: tuple[str, str, str], data: bytes) -> Path:
    """Write masks/<split>/<class>/<name> under the tree's root atomically, never through a link."""
    split, cls, name = parts
    target = _Target(tree, split, cls, name)
    with target.folder(create=True) as folder:
        target.write(folder, data)
    return tree.root.joinpath("masks", split, cls, name)


def atomic_write_png(tree: DatasetTree, parts: tuple[str, str, str], array: np.ndarray) -> Path:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return atomic_write_bytes(tree, parts, buf.getvalue())
