"""`focusml datasets export`: a dataset written in the folder layout, all at once or not at all.

The files go to a hidden temporary folder beside the target, which is renamed into place only
when every file is written, so Ctrl-C, SIGTERM or a full disk never leave a half-written dataset
that would load as a smaller one. The export records what it is in `.focusml-export.json`
(dataset name, data seed, fingerprint): a non-empty target that is not the same export is
refused (it may be the user's own data), unless `force` replaces it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from focusml import FocusmlError
from focusml.core.data.base import Dataset
from focusml.core.data.folder import export as write_folder

RECORD = ".focusml-export.json"


def export_dataset(dataset: Dataset, out: Path, name: str, data_seed: int, force: bool = False) -> Path:
    """Write `dataset` (loaded as `name` with `data_seed`) under `out` atomically; returns `out`.

    `out` may be missing, empty, or an earlier export of the same dataset (replaced); anything else
    is refused (FocusmlError) unless `force`.
    """
    out = Path(out).absolute()
    record = {"dataset": name, "data_seed": data_seed, "fingerprint": dataset.fingerprint}
    if out.exists() and not out.is_dir():
        raise FocusmlError(f"{out} is a file, not a folder: give a new or empty folder to export {name} into.")
    if out.is_dir() and any(out.iterdir()) and not force:
        try:
            found = json.loads((out / RECORD).read_text())
        except (OSError, ValueError):
            found = None
        if found != record:
            what = (f"an export of {found.get('dataset')} (data seed {found.get('data_seed')}, fingerprint "
                    f"{found.get('fingerprint')})" if isinstance(found, dict) else "files that are not a focusml export")
            raise FocusmlError(f"{out} is not empty: it holds {what}. Export {name} to a new or empty folder, or "
                               "pass --force to replace that folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old = None
    try:
        write_folder(dataset, tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        if out.is_dir() and any(out.iterdir()):  # replaced: moved aside first, removed once the new one is in
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)  # an empty or missing target is replaced in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists() and (old / out.name).exists():
            os.replace(old / out.name, out)  # put the previous folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out
