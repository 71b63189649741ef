"""The tracked run: what `focusml train`, the MLproject entry points and the Optuna trials call.

`run` is the core `focusml.core.run.run` with `RunLogger` and the caller's callbacks as one list, wrapped by
`keeper.RunKeeper` (the run's local folder, a resumable checkpoint every epoch, a lost server),
after checking that the tracking store answers (so a wrong URI never leaves a half-written run).
`resume` continues a stopped run in the same MLflow run, from its last finished epoch.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import mlflow
import torch

from focusml import FocusmlError, environment
from focusml.core.callbacks import Callbacks
from focusml.core.config import RunConfig
from focusml.core.data import Dataset
from focusml.core.run import RunResult
from focusml.core.run import run as run_untracked
from focusml.tracking.keeper import RESUME_FILE, RunKeeper, RunLock, load_state, run_dir
from focusml.tracking.logger import RunLogger
from focusml.tracking.runs import resolve_run_id, run_info
from focusml.tracking.sources import resolve
from focusml.tracking.store import setup, terminate_run


def run(config: RunConfig, *, callbacks: Callbacks | list[Callbacks] | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, checkpoints: bool = True, data: Dataset | None = None,
        model: torch.nn.Module | None = None) -> RunResult:
    """Train and evaluate one configuration and log everything to MLflow; returns the metrics and run id.

    `config.init_from` (a run, a registered model or a file) is resolved here, before any run starts.
    `checkpoints=False`: no resumable state is kept (Optuna trials, which are retried instead).
    `data`, `model`: your own dataset and network, passed on to the core run (`focusml.core.run.run`).
    """
    config.validate(own_data=data is not None, own_model=model is not None)
    setup()
    source = resolve(config.init_from) if config.init_from else None
    keeper = RunKeeper(RunLogger(parent_run_id, tags, lineage=source), callbacks, checkpoints=checkpoints)
    return run_untracked(config, keeper, init=source.weights if source else None, data=data, model=model)


def resume_config(run_id: str, given: dict | None = None, device: str | None = None) -> tuple[RunConfig, dict]:
    """The config of run `run_id` from its params, and the run's params. Refuses (FocusmlError) a run
    that cannot be resumed, and options in `given` (flat, as `RunConfig.from_flat` takes) that
    differ from the run's; `device` may differ (the run continues on it)."""
    setup()
    info = run_info(run_id)
    run_id = info.info.run_id
    status, params, tags = info.info.status, info.data.params, info.data.tags
    if status == "FINISHED":
        raise FocusmlError(f"run {run_id} is FINISHED: there is nothing to resume. Start a new run instead.")
    if "optuna.trial_number" in tags or tags.get("focusml.kind") == "tune":
        raise FocusmlError(f"run {run_id} belongs to an Optuna study: re-run `focusml tune` with the same study name "
                           "to resume the study (its stopped trials are retried).")
    if tags.get("focusml.kind", "training") != "training":
        raise FocusmlError(f"run {run_id} is a {tags['focusml.kind']} run, not a training run: only `focusml train` "
                           "runs can be resumed.")
    if "method" not in params or "dataset" not in params:
        raise FocusmlError(f"run {run_id} was not logged by `focusml train` (it has no method/dataset params).")
    config = RunConfig.from_params(params)
    if given:
        wanted = RunConfig.from_params({**params, **{k: str(v) for k, v in given.items()}})
        theirs, ours = config.to_params(), wanted.to_params()
        diff = [k for k in ours if str(ours[k]) != str(theirs.get(k))]
        if diff:
            shown = ", ".join(f"--{k.replace('_', '-')} {ours[k]} (the run has {theirs.get(k)})" for k in diff)
            raise FocusmlError(f"--resume {run_id} continues the run with its own options; these differ: {shown}. "
                               "Drop them, or start a new run.")
    if device:
        config.device = device
    return config.validate(), params


def _unreadable(e: BaseException) -> str:
    first = " ".join(str(e).split()).split(". ")[0]  # torch's zip errors go on for lines
    return f"{type(e).__name__}: {first[:160]}"


def find_checkpoint(run_id: str, on_warning: Callable[[str], None] | None = None) -> dict:
    """The run's latest training state: its local `resume.pt` or its `checkpoints/resume.pt`, whichever is later.

    A local file that cannot be read (truncated, overwritten) is passed over for the uploaded one,
    saying so through `on_warning`; FocusmlError when neither can be read.
    """
    found, broken = [], []
    local = run_dir(run_id) / RESUME_FILE
    if local.is_file():
        try:
            found.append(load_state(local))
        except Exception as e:  # whatever torch.load makes of a damaged file
            broken.append(f"{local} is unreadable ({_unreadable(e)})")
    try:
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "checkpoints")}
    except Exception:
        names = set()
    if f"checkpoints/{RESUME_FILE}" in names:
        try:
            with environment({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}), tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"checkpoints/{RESUME_FILE}",
                                                           dst_path=tmp)
                found.append(load_state(Path(path)))
        except Exception as e:
            broken.append(f"the uploaded checkpoints/{RESUME_FILE} is unreadable ({_unreadable(e)})")
    if not found:
        why = "; ".join(broken) or (f"no {local}, no checkpoints/{RESUME_FILE} artifact: it stopped before its first "
                                    "epoch ended")
        raise FocusmlError(f"run {run_id} has no resumable checkpoint ({why}). Start a new run.")
    if broken and on_warning is not None:
        other = "local" if broken[0].startswith("the uploaded") else "uploaded"
        on_warning(f"{'; '.join(broken)}: resuming from the {other} "
                   f"checkpoint instead (after epoch {max(s['epoch'] for s in found) + 1}).")
    return max(found, key=lambda s: s["epoch"])


def resume(run_id: str, *, callbacks: Callbacks | list[Callbacks] | None = None, given: dict | None = None,
           device: str | None = None, on_warning: Callable[[str], None] | None = None) -> RunResult:
    """Continue run `run_id` (KILLED, FAILED, or RUNNING with its process gone) in the same MLflow run.

    Training goes on after the last finished epoch from the saved state; per-epoch metrics the
    server lacks are sent first. Refused (FocusmlError, the run untouched): a FINISHED run, a
    run with no checkpoint, options that differ from the run's, a run still running here.
    `on_warning(line)` is told when a damaged local checkpoint is passed over for the uploaded one.
    """
    setup()
    run_id = resolve_run_id(run_id, f"--resume {run_id}")
    config, params = resume_config(run_id, given, device)
    lock = RunLock(run_dir(run_id))
    lock.acquire(run_id)  # refuses a run that a live process here is still working on
    try:
        state = find_checkpoint(run_id, on_warning)
        if state["epoch"] >= config.epochs:
            raise FocusmlError(f"the checkpoint of run {run_id} is after epoch {state['epoch'] + 1}, but the run has "
                               f"{config.epochs} epochs.")
        if (run_dir(run_id) / "finished").is_file():  # everything was logged; only the end state was lost
            terminate_run(run_id, "FINISHED")
            info = run_info(run_id)
            return RunResult(dict(info.data.metrics), run_id)
        keeper = RunKeeper(RunLogger(run_id=run_id), callbacks, resume=state,
                           fingerprint=params.get("dataset_fingerprint"), lock=lock)
        source = resolve(config.init_from) if config.init_from else None  # the core refuses an unresolved run id
        return run_untracked(config, keeper, init=source.weights if source else None, resume=state)
    except FocusmlError:  # refused: leave no trace of this attempt
        lock.release()
        if {f.name for f in run_dir(run_id).iterdir()} <= {"lock"}:
            shutil.rmtree(run_dir(run_id), ignore_errors=True)
        raise
    finally:
        lock.release()
