"""The tracking store and runs: where runs go, and a run that ends FAILED when its block raises.

The tracking URI is `MLFLOW_TRACKING_URI` when set, else a SQLite file `mlflow.db` in the
current directory (MLflow 3 has no file store). A remote server is checked for reachability
before any run starts, so a wrong URI never leaves a half-written run behind.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow

from focusml import FocusmlError
from focusml.tracking.experiment import mark_kind, use_experiment

DEFAULT_STORE = "mlflow.db"


def default_uri() -> str:
    return f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise FocusmlError unless an http(s) tracking server answers /health."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
    except (OSError, urllib.error.URLError) as e:
        raise FocusmlError(
            f"cannot reach the MLflow tracking server at {uri} ({getattr(e, 'reason', e)}). Start it with "
            "`focusml server` (or `mlflow server --host 127.0.0.1 --port PORT`), or unset MLFLOW_TRACKING_URI "
            "to use the local SQLite store."
        ) from None


def setup(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: `tracking_uri()`), after checking it answers."""
    uri = uri or tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


class StopRun(Exception):
    """Raised inside `start_run` to end a run early on purpose, not as a failure (e.g. a pruned
    Optuna trial): the run gets `tags` and ends with `status` instead of FAILED."""

    status = "KILLED"
    tags: dict[str, str] = {}


@contextmanager
def start_run(experiment: str | None, run_name: str | None = None, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None, system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under `mlflow run`, adopt) a run; end it FAILED if the block raises.

    `experiment` None means the environment's (`experiment.use_experiment`). Under `mlflow run`
    the entry point's run (`MLFLOW_RUN_ID`) is adopted: it gets `run_name` and `tags` and stays
    in the experiment `mlflow run` chose. A child run names its parent explicitly
    (`parent_run_id`), so trials in other threads or processes nest correctly without relying on
    the active-run stack. `system_metrics` turns on MLflow's CPU/memory/GPU sampling for the run.
    """
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run and parent_run_id is None and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=env_run, run_name=run_name, tags=tags, log_system_metrics=system_metrics or None)
        mark_kind(run.info.experiment_id)
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
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except StopRun as e:
        if e.tags:
            mlflow.set_tags(e.tags)
        mlflow.end_run(status=e.status)
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
