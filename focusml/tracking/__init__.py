"""Tracking: the only part of focusml that imports MLflow.

- `database`: database URLs (PostgreSQL, MySQL, SQLite) as stores: an installed driver, passwords hidden;
- `store`: where runs go (`MLFLOW_TRACKING_URI`, else SQLite `mlflow.db` here), a reachability
  check, bounded HTTP retries, the SQLite schema created under a lock, and `start_run` (a run
  that ends FINISHED, FAILED with its reason, or KILLED);
- `experiment`: which experiment a run goes to (`--experiment`, `MLFLOW_EXPERIMENT_NAME`, ...),
  tagged so the UI opens the classic ML view;
- `log`: what a run logs (params, metrics, figures, tables, files, the datasets, the model);
- `pyfunc`: the logged model, a pyfunc giving class probabilities and the predicted class name
  for images as a user has them (paths, bytes, arrays of any size);
- `predict`: `predict_files`, a logged model's predictions on image files (`focusml predict`);
- `logger`: `RunLogger`, a run's logging as `Callbacks` plugged into the core `focusml.core.run.run`;
- `keeper`: `RunKeeper`, a run's local folder, per-epoch resumable checkpoint and server loss;
- `tracked`: `run`, the tracked run that the CLI, the MLproject and the tuner call, and
  `resume`, which continues a stopped run;
- `runs`: runs read back (an experiment as a table, a run's model and data);
- `registry`: `register_version`, a run's model into the Model Registry, described and tagged;
- `sources`: `--init-from` (a run, `runs:/`, `models:/` or a file) → weights only, plus lineage tags.
"""

from focusml.tracking.database import check_connects, check_sqlite_file, is_database, redact, retry_unique, with_driver
from focusml.tracking.experiment import (DEFAULT_EXPERIMENT, HEADLINE, NOTE_MARKER, NOTE_TAG, VIEW_TAG, add_view,
                                         resolve_experiment, write_note)
from focusml.tracking.log import (active_run_id, experiment_name, log_artifact, log_artifacts_to, log_datasets,
                                  log_dict, log_figure, log_image_step, log_metrics, log_model, log_params,
                                  log_state_dict, log_table, set_tags)
from focusml.tracking.keeper import RunKeeper, run_dir
from focusml.tracking.logger import RunLogger
from focusml.tracking.predict import predict_files
from focusml.tracking.refine import Refinement, refine
from focusml.tracking.registry import Registered, check_registry_names, register, register_version
from focusml.tracking.runs import load_run_data, load_run_model, resolve_run_id, run_info, search_runs
from focusml.tracking.sources import Source
from focusml.tracking.sources import resolve as resolve_source
from focusml.tracking.store import (DEFAULT_STORE, StopRun, TrackingLost, check_reachable, check_uri, default_uri, setup,
                                    run_experiment_id, sqlite_path, search_run_tags_where, search_runs_where, start_run, terminate_run, tracking_uri,
                                    ui_link, ui_page)
from focusml.tracking.tracked import resume, resume_config, run

__all__ = [
    "Refinement", "refine",
    "DEFAULT_EXPERIMENT", "DEFAULT_STORE", "Registered", "RunKeeper", "RunLogger", "Source", "StopRun", "TrackingLost", "active_run_id",
    "check_connects", "check_registry_names", "check_reachable", "check_sqlite_file", "check_uri", "default_uri", "experiment_name", "load_run_data", "load_run_model", "log_artifact", "log_artifacts_to",
    "log_datasets", "log_dict", "log_figure", "log_image_step", "log_metrics", "log_model", "log_params", "log_state_dict",
    "log_table", "predict_files", "register", "register_version", "resolve_experiment", "resolve_run_id", "resolve_source", "resume",
    "resume_config", "run", "run_dir", "run_experiment_id", "run_info", "redact", "retry_unique", "search_runs", "search_run_tags_where", "search_runs_where", "set_tags", "setup",
    "sqlite_path", "start_run", "terminate_run", "tracking_uri", "ui_link", "ui_page", "NOTE_MARKER", "NOTE_TAG", "write_note",
    "HEADLINE", "VIEW_TAG", "add_view",
    "with_driver", "is_database",
]
