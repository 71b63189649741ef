"""Database URLs (`postgresql://…`, `mysql://…`, `sqlite:///…`) as MLflow's and Optuna's stores: a
driver that is installed, and a form that is safe to print.

`with_driver` checks the URL's SQLAlchemy driver imports before any store is opened, so a missing
driver is one FocusmlError line, not a traceback from deep inside SQLAlchemy. A `postgresql://`
URL without a driver means psycopg (3) to SQLAlchemy ≥ 2.1 and psycopg2 before; either one that is
installed is used (`focusml[postgres]` installs psycopg2). `redact` hides a URL's password;
`retry_unique` makes a write again that lost a unique-key race to another process. `check_sqlite_file`
refuses a SQLite store that cannot work (a folder, a file that is no database, a missing folder)
before MLflow or Optuna opens it with a traceback or creates folders nobody asked for.
"""

from __future__ import annotations

import importlib.util
import time
import urllib.parse
from pathlib import Path
from typing import Callable, TypeVar

from focusml import FocusmlError

T = TypeVar("T")
POSTGRES_DRIVERS = ("psycopg2", "psycopg")  # SQLAlchemy dialects postgresql+psycopg2, postgresql+psycopg
POSTGRES_HINT = "pip install 'focusml[postgres]'"


ENGINES = ("postgresql", "mysql", "sqlite", "mssql")  # the databases MLflow's and Optuna's stores take


def is_database(url: str | None) -> bool:
    """A SQLAlchemy database URL (not an http(s) server, databricks, a file path or a journal)."""
    return bool(url) and "://" in url and url.split("://")[0].split("+")[0] in ENGINES


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(path: Path, what: str) -> None:
    """Refuse (FocusmlError) a SQLite store at `path` that is a folder, a file that is not a SQLite
    database, or a file in a folder that does not exist (created by nobody but the user)."""
    if path.is_dir():
        raise FocusmlError(f"{what}: {path} is a folder; give a database file, e.g. sqlite:///{path / 'mlflow.db'}.")
    if not path.parent.is_dir():
        raise FocusmlError(f"{what}: the folder {path.parent} does not exist; create it (mkdir -p {path.parent}) "
                           "or name a file in an existing folder.")
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise FocusmlError(f"{what}: cannot read {path} ({e.strerror}).") from None
        if not SQLITE_HEADER.startswith(head):  # empty (SQLite makes it a database) or being written is fine
            raise FocusmlError(f"{what}: {path} is not a SQLite database (it holds something else); name a new "
                               "file or an existing database.")


def redact(url: str) -> str:
    """`url` with its password (if any) replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def with_driver(url: str, what: str = "the store") -> str:
    """`url`, or the same URL naming an installed PostgreSQL driver; FocusmlError if its driver is missing."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        dialect = sqlalchemy.engine.make_url(url).get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise FocusmlError(f"{what} {redact(url)}: unknown database kind '{url.split('://')[0]}'; use "
                           "postgresql://, mysql:// or sqlite:///.") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise FocusmlError(f"{what} {redact(url)} is not a database URL ({e}).") from None
    try:
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
        return url
    except ImportError as e:
        missing = e.name or str(e)
    scheme, rest = url.split("://", 1)
    if scheme == "postgresql":  # no driver named: take whichever one is installed
        for driver in POSTGRES_DRIVERS:
            if _installed(driver):
                return f"postgresql+{driver}://{rest}"
    if scheme == "postgresql":
        raise FocusmlError(f"{what} {redact(url)} needs a PostgreSQL driver (psycopg2 or psycopg) and none is "
                           f"installed: {POSTGRES_HINT}.")
    hint = POSTGRES_HINT if scheme == "postgresql+psycopg2" else f"pip install {missing}"
    raise FocusmlError(f"{what} {redact(url)} needs the database driver `{missing}`, which is not installed: {hint}.")


def reason(e: BaseException, url: str = "") -> str:
    """One line saying why a database call failed (the driver's own message, without SQLAlchemy's links),
    and the fix where it is clear (a PostgreSQL database that does not exist yet)."""
    text = str(getattr(e, "orig", None) or e).strip()
    why = " ".join(line.strip() for line in text.splitlines() if line.strip() and "sqlalche.me" not in line)
    if "does not exist" in why and url.startswith("postgresql") and "database" in why:
        import sqlalchemy.engine

        why += f"; create it first: createdb {sqlalchemy.engine.make_url(url).database}"
    return why


def check_connects(url: str, what: str = "the store", timeout: int = 10, shown: str | None = None) -> None:
    """FocusmlError (naming the fix) unless the database server at `url` accepts a connection; SQLite is not checked."""
    if url.startswith("sqlite"):
        return
    import sqlalchemy
    import sqlalchemy.pool

    args = {"connect_timeout": timeout} if url.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=args)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as e:
        why = reason(e, url)
        end = "" if why.endswith((".", "?", "!")) else "."
        raise FocusmlError(f"cannot connect to {what} {shown or redact(url)}: {why}{end}") from None
    finally:
        engine.dispose()


UNIQUE_RACE = ("UniqueViolation", "duplicate key value", "DuplicateTable", "DuplicateObject", "Duplicate entry",
               "UNIQUE constraint failed")


def retry_unique(call: Callable[[], T], tries: int = 3) -> T:
    """`call()`, made again when the store refused it for a unique key that another process took meanwhile.

    Runs that start together on one experiment each insert the same dataset or experiment tag, and
    tune calls that start together on a new database each create Optuna's tables: MLflow and
    Optuna check, then insert, so on PostgreSQL or MySQL all but the first fail (a SQLite file
    serialises them). Made again, the call finds the row (or table) and uses it.
    """
    for attempt in range(tries):
        try:
            return call()
        except Exception as e:  # MLflow's RestException or MlflowException, carrying the database's message
            if attempt == tries - 1 or not any(s in str(e) for s in UNIQUE_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
