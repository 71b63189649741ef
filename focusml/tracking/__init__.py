"""Tracking: the only part of focusml that imports MLflow.

- `store`: where runs go (`MLFLOW_TRACKING_URI`, else SQLite `mlflow.db` here), a reachability
  check, bounded HTTP retries, the SQLite schema created under a lock, and `start_run` (a run
  that ends FINISHED, FAILED with its reason, or KILLED);
- `log`: what a run logs (params, metrics, figures, files, the dataset, the model);
- `logger`: `RunLogger`, a run's logging as `Callbacks` plugged into the core `focusml.run.run`;
- `keeper`: `RunKeeper`, a run's local folder, per-epoch resumable checkpoint and server loss;
- `tracked`: `run`, the tracked run that the CLI, the MLproject and the tuner call, and
  `resume`, which continues a stopped run;
- `runs`: runs read back (an experiment as a table, a run's model and data);
- `registry`: `register`, a run's model into the Model Registry.
"""

from focusml.tracking.log import (active_run_id, experiment_name, log_artifact, log_artifacts_to, log_dataset,
                                  log_dict, log_figure, log_image_step, log_metrics, log_model, log_params,
                                  log_state_dict, set_tags)
from focusml.tracking.keeper import RunKeeper, run_dir
from focusml.tracking.logger import RunLogger
from focusml.tracking.registry import register
from focusml.tracking.runs import load_run_data, load_run_model, run_info, search_runs
from focusml.tracking.store import (DEFAULT_STORE, StopRun, TrackingLost, check_reachable, default_uri, setup,
                                    search_runs_where, start_run, terminate_run, tracking_uri)
from focusml.tracking.tracked import resume, resume_config, run

__all__ = [
    "DEFAULT_STORE", "RunKeeper", "RunLogger", "StopRun", "TrackingLost", "active_run_id", "check_reachable", "default_uri", "experiment_name",
    "load_run_data", "load_run_model", "log_artifact", "log_artifacts_to", "log_dataset", "log_dict", "log_figure",
    "log_image_step", "log_metrics", "log_model", "log_params", "log_state_dict", "register", "resume", "resume_config",
    "run", "run_dir", "run_info", "search_runs", "search_runs_where", "set_tags", "setup", "start_run", "terminate_run", "tracking_uri",
]
