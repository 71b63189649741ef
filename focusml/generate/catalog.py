"""What `focusml methods`, `focusml datasets list` and `focusml train --help` show, without importing torch.

The method and dataset registries are filled by importing every method and loader module, which
imports torch (seconds). Their listings and the options `focusml train` builds from them (every
method's params; the run options themselves are declared torch-free in `focusml.core.options`) are stored in `catalog.json` beside this file together
with a digest of the sources they were read from. `listing` returns the stored rows while the
digest still matches the sources, and otherwise (a method or loader was edited since) reads the
registries themselves, so the answer is never stale, only slower. `python -m focusml.generate.catalog`
rewrites the file; a test fails while it is out of date.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "core"  # where the registries' sources (SOURCES) live
CATALOG = Path(__file__).with_name("catalog.json")
SOURCES = ("methods", "data")  # the modules the registries and their options are read from


def sources_digest() -> str:
    """A hash of every module the registries are built from (paths and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for src in SOURCES for p in ((PACKAGE / src).rglob("*.py") if (PACKAGE / src).is_dir()
                                                     else [PACKAGE / src])):
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build() -> dict[str, list | dict]:
    """The listings and run options, read from the registries (imports torch)."""
    from focusml.core.data import DATASETS
    from focusml.core.methods import METHODS, all_params

    methods = [{"method": name, "family": cls.family,
                "options (default)": ", ".join(f"{p.name}={p.default}" for p in cls.params) or "—",
                "what changes": cls.summary} for name, cls in METHODS.items()]
    datasets = [{"dataset": d.name, "kind": "built-in" if d.builtin else "needs --data-root",
                 "shortcut": d.shortcut, "what": d.description} for d in DATASETS.values()]
    options = {
        "method_params": [{"name": p.name, "type": "str" if p.auto else p.type.__name__, "help": p.help,
                           "defaults": {n: q.default for n, c in METHODS.items() for q in c.params if q.name == p.name}}
                          for p in all_params().values()],
    }
    return {"methods": methods, "datasets": datasets, "train_options": options}


def stored() -> dict | None:
    """The stored catalog when it matches the sources, else None."""
    try:
        saved = json.loads(CATALOG.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("digest") == sources_digest() else None


def listing(kind: str) -> list | dict:
    """`kind` ("methods", "datasets" or "train_options"): stored if current, else read from the registries."""
    saved = stored()
    return saved[kind] if saved is not None else build()[kind]


def write(path: Path = CATALOG) -> Path:
    path.write_text(json.dumps({"digest": sources_digest(), **build()}, indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write()}")
