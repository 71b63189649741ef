"""What `focusml methods` and `focusml datasets list` print, answered without importing torch.

The method and dataset registries are filled by importing every method and loader module, which
imports torch (seconds). Their listings are stored in `catalog.json` beside this file together
with a digest of the sources they were read from. `listing` returns the stored rows while the
digest still matches the sources, and otherwise (a method or loader was edited since) reads the
registries themselves, so the answer is never stale, only slower. `python -m focusml.catalog`
rewrites the file; a test fails while it is out of date.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE = Path(__file__).parent
CATALOG = PACKAGE / "catalog.json"
SOURCES = ("methods", "data")  # the packages whose modules fill the registries


def sources_digest() -> str:
    """A hash of every module the registries are built from (paths and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for pkg in SOURCES for p in (PACKAGE / pkg).rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build() -> dict[str, list[dict[str, str]]]:
    """The listings, read from the registries (imports torch)."""
    from focusml.data import DATASETS
    from focusml.methods import METHODS

    methods = [{"method": name, "family": cls.family,
                "options (default)": ", ".join(f"{p.name}={p.default}" for p in cls.params) or "—",
                "what changes": cls.summary} for name, cls in METHODS.items()]
    datasets = [{"dataset": d.name, "kind": "built-in" if d.builtin else "needs --data-root",
                 "shortcut": d.shortcut, "what": d.description} for d in DATASETS.values()]
    return {"methods": methods, "datasets": datasets}


def stored() -> dict | None:
    """The stored catalog when it matches the sources, else None."""
    try:
        saved = json.loads(CATALOG.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("digest") == sources_digest() else None


def listing(kind: str) -> list[dict[str, str]]:
    """The rows of `kind` ("methods" or "datasets"): stored if current, else read from the registries."""
    saved = stored()
    return saved[kind] if saved is not None else build()[kind]


def write(path: Path = CATALOG) -> Path:
    path.write_text(json.dumps({"digest": sources_digest(), **build()}, indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write()}")
