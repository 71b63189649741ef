"""The tracking store and how a run lives and ends.

The tracking URI is `MLFLOW_TRACKING_URI` when set, else a SQLite file `mlflow.db` in the
current directory (MLflow 3 has no file store). A remote server is checked for reachability
before any run starts, so a wrong URI never leaves a half-written run behind.

- **Bounded HTTP**: `setup` gives MLflow's HTTP client a timeout and a retry budget
  (`HTTP_DEFAULTS`, each overridable by its environment variable), so a server that goes away
  costs seconds, not minutes (at most `give_up_s()` after the call that meets it); `TrackingLost`
  is what a run raises then (exit status 3).
- **Truthful end states** (`start_run`): FINISHED; FAILED with the reason as tag
  `focusml.failure` (exception type and message, one line); KILLED for Ctrl-C and SIGTERM
  (`focusml.Terminated`) with tag `focusml.killed`; a run that cannot reach the server to say
  so stays RUNNING there, and `focusml train --resume` re-attaches to it.
- **SQLite**: the first process to use a store creates its schema under an exclusive lock on
  `<store>.lock`, so any number of processes can start together on a new file.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.exceptions import MlflowException

from focusml import FocusmlError, RunFailed, environment
from focusml.tracking.database import check_sqlite_file, is_database, redact, with_driver
from focusml.tracking.experiment import VIEW_ID, add_view, mark_kind, use_experiment

try:
    import fcntl
except ImportError:  # Windows: no flock; parallel first runs on a new SQLite file are not guarded there
    fcntl = None

DEFAULT_STORE = "mlflow.db"


def default_uri() -> str:
    return f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


#: Where `focusml server` serves the UI by default.
LOCAL_UI = "http://127.0.0.1:5000"

#: The query that opens the MLflow 3 web app on its classic ML side ("Model training": runs, charts, models).
#: Without it a browser that never chose a side opens the GenAI one, whatever the experiment's kind tag
#: says; the app reads it on every page but drops it when `#/runs/ID` redirects, hence experiment routes.
ML_VIEW = "workflowType=machine_learning"


def ui_page(experiment_id: str | None = None, run_id: str | None = None, view: bool = False) -> str:
    """The UI's route, in the ML view, of a run (`#/experiments/EID/runs/RID`), of an experiment's runs
    (`#/experiments/EID/runs`; `view`: in focusml's saved view, `experiment.add_view`), else of the
    experiments list; relative, so a link to it in a description works under any server prefix. A run
    without its experiment gets `#/runs/RID`, which the UI redirects to the run in the view the browser
    last chose."""
    if run_id and not experiment_id:
        return f"#/runs/{run_id}"
    if run_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"
    if experiment_id:
        return f"#/experiments/{experiment_id}/runs?{ML_VIEW}" + (f"&viewStateShareKey={VIEW_ID}" if view else "")
    return f"#/experiments?{ML_VIEW}"


def run_experiment_id(run_id: str, uri: str | None = None) -> str | None:
    """The experiment of run `run_id` on the store `uri` (default: MLflow's); None where the store cannot
    say, so that a link stays printable."""
    try:
        return mlflow.MlflowClient(tracking_uri=uri or mlflow.get_tracking_uri()).get_run(run_id).info.experiment_id
    except (MlflowException, OSError):
        return None


def ui_link(run_id: str | None = None, uri: str | None = None, server: str = "focusml server",
            experiment_id: str | None = None) -> str:
    """How to see a run (or an experiment's runs, or every experiment) of `uri` (default: the tracking URI)
    in the MLflow UI, as a phrase to print; the page opens in the classic ML view (`ui_page`).

    An http(s) URI is the UI itself: "open URL" (credentials left out). Any other store (SQLite,
    PostgreSQL) needs a server first: "`focusml server`, then open http://127.0.0.1:5000/...". A run's
    experiment, unless given, is asked of the store. An experiment's runs open in focusml's saved view
    (headline metrics as columns, best `acc/test` first), added to the experiment first where missing.
    """
    if run_id and not experiment_id:
        experiment_id = run_experiment_id(run_id, uri)
    view = bool(experiment_id and not run_id) and add_view(experiment_id, uri=uri)
    uri = uri or tracking_uri()
    page = ui_page(experiment_id, run_id, view)
    if is_remote(uri):
        parts = urllib.parse.urlsplit(uri)
        base = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))
        return f"open {base.rstrip('/')}/{page}"
    return f"`{server}`, then open {LOCAL_UI}/{page}"


#: MLflow's HTTP client limits unless the environment sets them: 15 s per request, 3 retries with
#: backoff 0, 2, 4 s (+ up to 0.5 s jitter each). MLflow's own defaults: 120 s and 7 retries, about 15 minutes.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
PROBE_S = 5  # the /health probe after a failed call (at most the request timeout)
CLOSE_S = 3  # each of the two calls that try to close the run after the server was lost (no retries)


def _http(key: str) -> float:
    try:
        return float(os.environ.get(key, HTTP_DEFAULTS[key]))
    except ValueError:
        return float(HTTP_DEFAULTS[key])


def probe_timeout() -> int:
    return max(1, min(PROBE_S, int(_http("MLFLOW_HTTP_REQUEST_TIMEOUT"))))


def close_timeout() -> int:
    """Whole seconds: MLflow reads MLFLOW_HTTP_REQUEST_TIMEOUT as an int (a "3.0" fails every call at once)."""
    return max(1, min(CLOSE_S, int(_http("MLFLOW_HTTP_REQUEST_TIMEOUT"))))


def give_up_s() -> float:
    """The most seconds a run takes to give up (exit 3) once its next MLflow call meets a server that accepts
    connections but never answers (frozen, SIGSTOP): the call's attempts, each one request timeout, the
    backoff between them (urllib3: 0, then factor × 2, × 4, …, each + at most the jitter), the /health
    probe, and the two calls that try to close the run. With the defaults: 4 × 15 + 6 + 1 + 5 + 2 × 3 = 78 s.
    A server whose port is closed is given up in about the backoff alone (connections are refused at once)."""
    timeout, retries = _http("MLFLOW_HTTP_REQUEST_TIMEOUT"), int(_http("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    factor, jitter = _http("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"), _http("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER")
    backoff = sum(factor * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    return (retries + 1) * timeout + backoff + probe_timeout() + 2 * close_timeout()


class TrackingLost(RunFailed):
    """The tracking server stopped answering during a run (after MLflow's bounded retries)."""

    exit_code = 3


def bound_http() -> None:
    """Set `HTTP_DEFAULTS` where the environment leaves them unset (read by MLflow at every request)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def is_remote(uri: str | None = None) -> bool:
    return (uri or mlflow.get_tracking_uri()).startswith(("http://", "https://"))


def reachable(uri: str, timeout: float = 5.0) -> str | None:
    """None when the http(s) server at `uri` answers /health (or `uri` is not a server), else why not."""
    if not is_remote(uri):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                return f"HTTP {r.status}"
    except (OSError, urllib.error.URLError) as e:
        return str(getattr(e, "reason", e))
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise FocusmlError unless an http(s) tracking server answers /health."""
    why = reachable(uri, timeout)
    if why is not None:
        raise FocusmlError(
            f"cannot reach the MLflow tracking server at {uri} ({why}). Start it with "
            "`focusml server` (or `mlflow server --host 127.0.0.1 --port PORT`), or unset MLFLOW_TRACKING_URI "
            "to use the local SQLite store."
        ) from None


SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")  # besides the database URLs (is_database)


def check_uri(uri: str, what: str = "MLFLOW_TRACKING_URI") -> None:
    """Refuse (FocusmlError, one line) a tracking URI MLflow 3 cannot use: an unknown scheme, a plain
    path or file: URI (MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true), a SQLite file that cannot be a store."""
    scheme = uri.split("://")[0].split("+")[0] if "://" in uri else uri if uri in SCHEMES else ""
    if is_database(uri):
        path = sqlite_path(uri)
        if path is not None:
            check_sqlite_file(path, f"{what} {uri}")
    elif scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise FocusmlError(f"{what} is {uri!r}, a path: MLflow 3 keeps runs in a database or a server, not in a "
                           f"folder. Use sqlite:///{Path(uri.removeprefix('file://')).absolute() / DEFAULT_STORE}, "
                           "or http://HOST:PORT of `focusml server`.")
    elif scheme not in (*SCHEMES, "", "file"):
        raise FocusmlError(f"{what} is {redact(uri)!r}: MLflow does not know the scheme '{scheme}://'. Use sqlite:///PATH, "
                           "postgresql://…, mysql://… or the http://HOST:PORT of `focusml server`.")


def setup(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: `tracking_uri()`), after checking it is a store MLflow can use
    (`check_uri`) that answers (or, for a database, that its driver is installed); bound its HTTP client.
    Returns the URI as used."""
    given = uri is not None
    uri = uri or tracking_uri()
    check_uri(uri, "the tracking URI" if given else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
              else "the default store")
    if is_database(uri):
        uri = with_driver(uri, "the tracking store")
    bound_http()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///…` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def store_lock(uri: str | None = None):
    """An exclusive lock on `<store>.lock` beside a SQLite store (nothing for other stores)."""
    path = sqlite_path(uri or mlflow.get_tracking_uri())
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_ready: set[str] = set()


def ensure_store(uri: str | None = None) -> None:
    """Create a SQLite store's schema once, under `store_lock` (MLflow migrates a new file when first
    opened; two processes doing it at once crash in alembic). Other stores need nothing."""
    uri = uri or mlflow.get_tracking_uri()
    if uri in _ready or sqlite_path(uri) is None:
        return
    with store_lock(uri):
        mlflow.MlflowClient(uri).search_experiments(max_results=1)  # opening the store migrates it
    _ready.add(uri)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__)[:1000]


def _quick_http():
    """MLflow calls that give up at once (no retries, `close_timeout()`): for closing a run after the server was lost."""
    return environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(close_timeout())})


def end_active(status: str, tags: dict[str, str] | None = None, quick: bool = False) -> bool:
    """End the active run with `status` (and `tags`); False when the store could not be told.

    The run leaves MLflow's active-run stack either way (MLflow pops it before the request).
    """
    ctx = _quick_http() if quick else _nothing()
    with ctx:
        ok = True
        if tags:
            try:
                mlflow.set_tags(tags)
            except Exception:
                ok = False
        try:
            mlflow.end_run(status=status)
        except Exception:
            return False
        return ok


@contextmanager
def _nothing():
    yield


def search_runs_where(filter_string: str) -> list[str]:
    """The ids of the runs, in any experiment, that match an MLflow filter string."""
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")
    return [r.info.run_id for r in runs]


def search_run_tags_where(filter_string: str) -> dict[str, dict[str, str]]:
    """{run id: its tags} of the runs, in any experiment, that match an MLflow filter string."""
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")
    return {r.info.run_id: dict(r.data.tags) for r in runs}


def terminate_run(run_id: str, status: str, tags: dict[str, str] | None = None,
                  states: tuple[str, ...] = ("RUNNING",)) -> bool:
    """End run `run_id` (not the active one) with `status` and `tags` if its status is one of `states` (by
    default: if it is still RUNNING) and it does not end so already; True if it changed the run.

    A RUNNING run gets its tags first, then its end: nobody sees it ended without its reason, and a
    process killed in between leaves it RUNNING, where the caller finds it again. A run that had
    ended (`states` beyond RUNNING: a FINISHED run whose Optuna trial was failed and retried) keeps
    its end time and gets tag `focusml.status_before` (its status until now), then its new status,
    then its tags: a process killed in between leaves the new status without the tags, which the
    caller, matching on the tags, finds again."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    was, tags = run.info.status, dict(tags or {})
    if was not in states or (was == status and all(run.data.tags.get(k) == v for k, v in tags.items())):
        return False
    if was == "RUNNING":
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status)
        return True
    if was != status and "focusml.status_before" not in run.data.tags:  # first: no later step can know it
        client.set_tag(run_id, "focusml.status_before", was)
    client.set_terminated(run_id, status, end_time=run.info.end_time)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return True


class StopRun(Exception):
    """Raised inside `start_run` to end a run early on purpose, not as a failure (e.g. a pruned
    Optuna trial): the run gets `tags` and ends with `status` instead of FAILED."""

    status = "KILLED"
    tags: dict[str, str] = {}


@contextmanager
def start_run(experiment: str | None, run_name: str | None = None, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None, run_id: str | None = None,
              system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Start a run (or continue `run_id`, or under `mlflow run` adopt its run) and end it truthfully.

    FINISHED when the block returns; KILLED on Ctrl-C or SIGTERM (tag `focusml.killed`: the
    signal); the `StopRun`'s status and tags; FAILED on any other exception (tag
    `focusml.failure`: its type and message on one line). After `TrackingLost` the run is
    ended without retries, so a server that stays away does not hold the process.

    `experiment` None means the environment's (`experiment.use_experiment`). Under `mlflow run`
    the entry point's run (`MLFLOW_RUN_ID`) is adopted: it gets `run_name` and `tags` and stays
    in the experiment `mlflow run` chose. A child run names its parent explicitly
    (`parent_run_id`), so trials in other threads or processes nest correctly without relying on
    the active-run stack. `system_metrics` turns on MLflow's CPU/memory/GPU sampling for the run.
    """
    ensure_store()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if run_id is not None:
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
        run = mlflow.start_run(run_id=run_id, tags=tags, log_system_metrics=system_metrics or None)  # same run
    elif env_run and parent_run_id is None and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=env_run, run_name=run_name, tags=tags, log_system_metrics=system_metrics or None)
        mark_kind(run.info.experiment_id)
        add_view(run.info.experiment_id)
    else:
        exp = use_experiment(experiment)
        active = mlflow.active_run()
        run = mlflow.start_run(
            experiment_id=exp.experiment_id,
            run_name=run_name,
            parent_run_id=parent_run_id,
            nested=parent_run_id is not None and active is not None,
            tags=tags,
            log_system_metrics=system_metrics or None,
        )
    try:
        yield run
    except KeyboardInterrupt as e:
        end_active("KILLED", {"focusml.killed": getattr(e, "signal_name", "SIGINT")})
        raise
    except StopRun as e:
        end_active(e.status, e.tags)
        raise
    except TrackingLost as e:
        end_active("FAILED", {"focusml.failure": _one_line(e)}, quick=True)
        raise
    except BaseException as e:
        end_active("FAILED", {"focusml.failure": _one_line(e)})
        raise
    else:
        if not end_active("FINISHED"):
            raise TrackingLost(f"the run finished, but the tracking server at {mlflow.get_tracking_uri()} could not "
                               f"be told: run {run.info.run_id} stays RUNNING there. When the server is back: "
                               f"focusml train --resume {run.info.run_id}")
