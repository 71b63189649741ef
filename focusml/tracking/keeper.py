"""A run that outlives its process: the local run folder, a resumable checkpoint every epoch, the
tracking server going away, and `focusml train --resume`.

`RunKeeper` is the outermost `Callbacks` of a tracked run, an explicit wrapper around one list of
callbacks, `RunLogger` first and then the caller's (`CallbackList`: every hook reaches each of them,
the logging first). It checks a resumed run before the logger re-attaches it, takes the run's folder
once the logger has opened the run, saves each checkpoint before handing it on, and turns a lost
server into `TrackingLost` around every hook. Every tracked run gets a local folder
`$FOCUSML_CACHE/runs/<run_id>/` (`run_dir`):

- `resume.pt`: the whole training state after the last finished epoch (`train.training_state`),
  replaced atomically every epoch and uploaded as the run's `checkpoints/resume.pt` while the
  server answers;
- `metrics.jsonl`: every finished epoch's metrics, one JSON object per line (NaN written as NaN);
- `lock`: held (flock) by the process working on the run, so a live run is never resumed twice;
- `finished`: written once the final metrics and artifacts are logged.

The folder is removed when the run ends FINISHED; after a failure, a kill or a lost server it
stays, and `resume` continues from it (or from the uploaded `checkpoints/resume.pt`).

When an MLflow call fails because the server is gone (after MLflow's bounded retries,
`store.HTTP_DEFAULTS`), the keeper raises `TrackingLost`: the process ends with the run's folder
named in the message. On `--resume` the epochs whose metrics never reached the server are sent
from the checkpoint's history, each (metric, step) only if the server lacks it, so every epoch
is there exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
import torch
from mlflow.entities import Metric

from focusml import FocusmlError, RunFailed
from focusml.core.cache import cache_dir
from focusml.core.callbacks import CallbackList, Callbacks, listed
from focusml.tracking.log import log_artifact, set_tags
from focusml.tracking.logger import RunLogger, epoch_step
from focusml.tracking.store import TrackingLost, fcntl, is_remote, probe_timeout, reachable

RESUME_FILE = "resume.pt"


def run_dir(run_id: str) -> Path:
    """The local folder of run `run_id` (`$FOCUSML_CACHE/runs/<run_id>`)."""
    return cache_dir() / "runs" / run_id


class RunLock:
    """An exclusive, non-blocking flock on `<run dir>/lock`, released by the kernel when the process dies."""

    def __init__(self, folder: Path):
        self.path, self.file = folder / "lock", None

    def acquire(self, run_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise FocusmlError(f"run {run_id} is still running here ({holder}); stop it first, or wait for it "
                                   "to end.") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _lost(e: BaseException) -> str | None:
    """Why the tracking server counts as gone after `e`, or None when `e` is another failure."""
    if not is_remote():
        return None
    why = reachable(mlflow.get_tracking_uri(), probe_timeout())
    if why is not None:
        return why
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return str(e).splitlines()[0]
    text = str(e)
    if "API request to" in text and ("failed" in text or "Max retries" in text):
        return text.splitlines()[0][:300]
    return None


def load_state(path: Path) -> dict:
    """A training state file, read with `weights_only=True` (nothing in it is executed)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state or "history" not in state:
        raise FocusmlError(f"{path} is not a focusml training state (resume.pt).")
    return state


class RunKeeper(Callbacks):
    """The local folder, per-epoch checkpoints and server-loss handling of one tracked run, around
    `[logger, *callbacks]` (`callbacks`: None, one `Callbacks` or a list, the caller's).

    `resume`: the training state to continue from (the run is `logger.resume_id`);
    `fingerprint`: the dataset fingerprint the run logged, checked before re-attaching;
    `checkpoints=False` keeps no resume state (Optuna trials: a stopped trial is retried instead).
    """

    def __init__(self, logger: RunLogger, callbacks=None, resume: dict | None = None, fingerprint: str | None = None,
                 checkpoints: bool = True, lock: RunLock | None = None):
        self.logger, self.resume, self.fingerprint, self.checkpoints = logger, resume, fingerprint, checkpoints
        self.tracked = CallbackList([logger, *listed(callbacks)])
        self.folder: Path | None = None
        self.lock = lock  # already held (`tracking.resume`), else taken when the run opens
        self.epoch = -1 if resume is None else resume["epoch"]

    # ---- the run's scope ---------------------------------------------------------------------------

    @contextmanager
    def run_scope(self, ctx):
        if self.resume is not None:
            self._check_resume(ctx)  # before the run is re-attached: a refusal leaves it as it was
        try:
            with self._server_errors(), self.tracked.run_scope(ctx):
                if self.folder is None and self.checkpoints:
                    self._open(self.logger.run_id)
                if self.resume is not None:
                    self._guard(self._send_missing)
                yield
            if self.folder is not None:
                if self.lock is not None:
                    self.lock.release()
                shutil.rmtree(self.folder, ignore_errors=True)  # FINISHED: everything is on the server
                self.folder = None
        finally:
            if self.lock is not None:
                self.lock.release()
            if self.folder is not None and self.folder.is_dir() and \
                    {f.name for f in self.folder.iterdir()} <= {"lock"}:
                shutil.rmtree(self.folder, ignore_errors=True)  # no epoch finished: nothing to keep

    def _open(self, run_id: str) -> None:
        self.folder = run_dir(run_id)
        self.lock = RunLock(self.folder)
        self.lock.acquire(run_id)

    def _check_resume(self, ctx) -> None:
        run_id = self.logger.resume_id
        if self.fingerprint and ctx.data.fingerprint != self.fingerprint:
            raise FocusmlError(f"run {run_id} trained on dataset '{ctx.config.dataset}' with fingerprint "
                               f"{self.fingerprint}, but that data now has fingerprint {ctx.data.fingerprint}: it "
                               "changed, so the run cannot be continued. Start a new run.")
        try:
            ctx.model.load_state_dict(self.resume["model"])
        except RuntimeError as e:
            raise FocusmlError(f"the checkpoint of run {run_id} does not fit its model "
                               f"'{ctx.config.model}': {str(e).splitlines()[0]}") from None
        if self.checkpoints:
            self.folder = run_dir(run_id)
            if self.lock is None:
                self._open(run_id)

    def _lost_error(self, why: str) -> TrackingLost:
        run_id = self.logger.run_id or self.logger.resume_id
        head = f"the tracking server at {mlflow.get_tracking_uri()} stopped answering ({why}); run {run_id} is left " \
               "unfinished there"
        if self.folder is None or self.epoch < 0:
            return TrackingLost(f"{head}; no epoch had finished, so there is nothing to resume: start the run again "
                                "once the server is back.")
        return TrackingLost(f"{head}; the checkpoint after epoch {self.epoch + 1} and the metrics so far are in "
                            f"{self.folder}. When the server is back: focusml train --resume {run_id}")

    @contextmanager
    def _server_errors(self):
        """A lost server becomes `TrackingLost`; the run's own failures pass through as they are."""
        try:
            yield
        except (RunFailed, KeyboardInterrupt, FocusmlError):
            raise
        except Exception as e:
            why = _lost(e)
            if why is None:
                raise
            raise self._lost_error(why) from e

    def _guard(self, fn, *args):
        """Call an MLflow-logging function; a lost server becomes `TrackingLost`."""
        with self._server_errors():
            return fn(*args)

    def _send_missing(self) -> None:
        """Send the checkpoint's per-epoch metrics the server lacks (each metric and step at most once);
        tag the run resumed, its earlier end tags moved to `focusml.resumed_from`."""
        run_id, history = self.logger.run_id, self.resume["history"]
        client = mlflow.MlflowClient()
        keys = sorted({k for h in history for k in h})
        have = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
        now = int(time.time() * 1000)
        missing = [Metric(k, float(v), now, epoch_step(i)) for i, h in enumerate(history) for k, v in h.items()
                   if epoch_step(i) not in have[k]]
        for start in range(0, len(missing), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=missing[start:start + 1000])
        set_tags({"focusml.resumed": f"after epoch {self.resume['epoch'] + 1}"})
        _move_end_tags(client, run_id)

    # ---- the hooks --------------------------------------------------------------------------------

    def on_checkpoint(self, epoch, state):
        self.epoch = epoch
        if self.folder is not None:  # saved first, then handed on
            path = self.folder / RESUME_FILE
            _atomic(path, lambda tmp: torch.save(state, tmp))
            lines = "".join(json.dumps({"epoch": i, "step": epoch_step(i), **h}) + "\n"
                            for i, h in enumerate(state["history"]))
            _atomic(self.folder / "metrics.jsonl", lambda tmp: tmp.write_text(lines))
            self._guard(log_artifact, path, "checkpoints")
        self._guard(self.tracked.on_checkpoint, epoch, state)

    def on_epoch_end(self, epoch, metrics, model):
        self._guard(self.tracked.on_epoch_end, epoch, metrics, model)

    def on_run_end(self, ctx, result):
        self._guard(self.tracked.on_run_end, ctx, result)
        if self.folder is not None:
            (self.folder / "finished").write_text("final metrics and artifacts logged\n")

    def log_artifact(self, path, artifact_path):
        self._guard(self.tracked.log_artifact, path, artifact_path)

    def log_params(self, params):
        self._guard(self.tracked.log_params, params)

    def on_prepare(self, desc, step, steps):
        self._guard(self.tracked.on_prepare, desc, step, steps)

    def on_batch_end(self, epoch, step, steps, loss):
        self._guard(self.tracked.on_batch_end, epoch, step, steps, loss)


END_TAGS = {"focusml.killed": "KILLED", "focusml.failure": "FAILED"}


def _move_end_tags(client: mlflow.MlflowClient, run_id: str) -> None:
    """A re-attached run drops the tags of how it ended before (they would contradict a FINISHED
    run), keeping them in `focusml.resumed_from` ("KILLED: SIGINT", earlier resumes first)."""
    tags = client.get_run(run_id).data.tags
    ended = [f"{status}: {tags[key]}" for key, status in END_TAGS.items() if key in tags]
    if not ended:
        return
    history = [h for h in (tags.get("focusml.resumed_from"), *ended) if h]
    client.set_tag(run_id, "focusml.resumed_from", " | ".join(history)[-5000:])
    for key in END_TAGS:
        if key in tags:
            client.delete_tag(run_id, key)

