"""Where a study lives: `--storage` as an Optuna storage (SQLite, journal file or database URL)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from focusml import FocusmlError

DEFAULT_SQLITE = "optuna.db"
DEFAULT_JOURNAL = "optuna.journal"


def open_storage(storage: str | None, workers: int = 1) -> tuple[Any, str]:
    """(what Optuna takes, a display string without passwords) for `--storage`.

    None → `optuna.db` (SQLite) here for one process, `optuna.journal` here for several; a URL
    (`sqlite:///…`, `postgresql://…`, `mysql://…`) → that database; any other string → a journal
    file at that path. SQLite is refused for several workers: it locks under parallel writers.
    """
    if storage in (None, ""):
        storage = str(Path.cwd() / (DEFAULT_SQLITE if workers == 1 else DEFAULT_JOURNAL))
        if workers == 1:
            storage = f"sqlite:///{storage}"
    if "://" in storage:
        if storage.startswith("sqlite") and workers > 1:
            raise FocusmlError(
                f"--storage {storage} is SQLite, which locks under {workers} parallel writers. Use a journal file "
                f"(--storage {DEFAULT_JOURNAL}) on one machine, or a database server URL (postgresql://…) across machines.")
        return storage, _redact(storage)
    path = Path(storage)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        raise FocusmlError(f"--storage {storage} looks like an SQLite file: write it as a URL, sqlite:///{path.resolve()} "
                           f"(or give a journal file such as {DEFAULT_JOURNAL}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path))), f"journal:{path.resolve()}"


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url
