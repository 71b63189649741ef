"""Tracking: the only part of focusml that imports MLflow.

- `store`: where runs go (`MLFLOW_TRACKING_URI`, else SQLite `mlflow.db` here), a reachability
  check, and `start_run` (a run that ends FAILED when its block raises);
- `log`: what a run logs (params, metrics, figures, files, the dataset, the model);
- `logger`: `RunLogger`, a run's logging as `Callbacks` plugged into the core `focusml.run.run`;
- `tracked`: `run`, the tracked run that the CLI, the MLproject and the tuner call;
- `runs`: runs read back (an experiment as a table, a run's model and data);
- `registry`: `register`, a run's model into the Model Registry;
- `sources`: `--init-from` (a run, `runs:/`, `models:/` or a file) → weights only, plus lineage tags.
"""

from focusml.tracking.log import (active_run_id, experiment_name, log_artifact, log_artifacts_to, log_dataset,
                                  log_dict, log_figure, log_image_step, log_metrics, log_model, log_params,
                                  log_state_dict, set_tags)
from focusml.tracking.logger import RunLogger
from focusml.tracking.registry import register
from focusml.tracking.runs import load_run_data, load_run_model, run_info, search_runs
from focusml.tracking.sources import Source
from focusml.tracking.sources import resolve as resolve_source
from focusml.tracking.store import DEFAULT_STORE, StopRun, check_reachable, default_uri, setup, start_run, tracking_uri
from focusml.tracking.tracked import run

__all__ = [
    "DEFAULT_STORE", "RunLogger", "Source", "StopRun", "active_run_id", "check_reachable", "default_uri",
    "experiment_name", "load_run_data", "load_run_model", "log_artifact", "log_artifacts_to", "log_dataset", "log_dict",
    "log_figure", "log_image_step", "log_metrics", "log_model", "log_params", "log_state_dict", "register",
    "resolve_source", "run", "run_info", "search_runs", "set_tags", "setup", "start_run", "tracking_uri",
]
