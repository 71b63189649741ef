"""`--init-from SOURCE`: a trained model's weights, resolved from the tracking store, and its lineage.

SOURCE is a local state-dict file, a run id, `runs:/RUN_ID[/PATH]`, `models:/NAME@ALIAS`,
`models:/NAME/VERSION` or `models:/m-MODEL_ID` (a logged model). A run or a registered model gives
the weights its run evaluated: `checkpoints/selected_epochN.pt` when `--select` chose an earlier
epoch, else `checkpoints/last.pt`; `runs:/ID/PATH` names one artifact file, which must exist inside
the run's artifacts. They are read with `torch.load(weights_only=True)`: no model is ever unpickled. Everything here happens before
the new run starts, so a missing run, model or checkpoint is refused without leaving a run behind;
the core then checks the architecture (`focusml.core.models.load_init_state`), also before the run.

The new run records its lineage:

- tag `focusml.init_from`: the source run id (a local file: `focusml.init_from_file`, its path);
- tag `focusml.init_from_checkpoint`: the artifact the weights came from;
- tag `focusml.init_from_model`: `NAME/VERSION` when the source was a registered model (and
  `focusml.init_from_alias` when it was named by alias);
- the source run's logged model as a model input of the new run (`mlflow.log_inputs`), so the
  MLflow UI lists it under the run's logged models; the param `init_from` keeps SOURCE as typed.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelInput

from focusml import FocusmlError
from focusml.core.models import InitWeights, read_init_file, read_state_dict, source_kind
from focusml.tracking.log import run_model
from focusml.tracking.runs import resolve_run_id

CHECKPOINTS = "checkpoints"


@dataclass
class Source:
    """Resolved `--init-from`: the weights, the tags the new run gets, and the logged model to link."""

    weights: InitWeights
    tags: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None  # the source's LoggedModel, logged as an input of the new run


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def _get_run(run_id: str, source: str):
    try:
        return _client().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(f"--init-from {source}: run {run_id} not found in {mlflow.get_tracking_uri()} "
                           f"({e.message.splitlines()[0]}). Check the id (`focusml train` prints it) and "
                           "MLFLOW_TRACKING_URI.") from None


def evaluated_checkpoint(run_id: str, source: str) -> str:
    """The artifact path of the weights run `run_id` evaluated: selected_epochN.pt if logged, else last.pt."""
    try:
        names = {a.path for a in _client().list_artifacts(run_id, CHECKPOINTS)}
    except mlflow.exceptions.MlflowException:
        names = set()
    selected = sorted(n for n in names if Path(n).name.startswith("selected_epoch") and n.endswith(".pt"))
    if selected:
        return selected[0]
    if f"{CHECKPOINTS}/last.pt" in names:
        return f"{CHECKPOINTS}/last.pt"
    raise FocusmlError(f"--init-from {source}: run {run_id} has no checkpoint ({CHECKPOINTS}/last.pt): it was not logged "
                       "by `focusml train`, or it failed or was pruned before the end. Pick a finished focusml run.")


LOGGED_MODEL = "model"  # runs:/ID/model: the run's logged model, whose weights are its evaluated checkpoint


def named_artifact(run_id: str, path: str, source: str) -> str | None:
    """The artifact `runs:/ID/PATH` names (None: the evaluated checkpoint, for no PATH or `model`).

    Confined to the run's artifacts: an absolute PATH or one with `..` is refused, and so is a
    PATH the run lacks, naming the files it has (a typo is never silently replaced by last.pt).
    """
    if path.strip("/") in ("", LOGGED_MODEL):
        return None
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:  # "/etc/x", "a/../../x", "C:/x"
        raise FocusmlError(f"--init-from {source}: the path after the run id must stay inside the run's artifacts "
                           "(no '..', no absolute path), e.g. runs:/RUN_ID/checkpoints/last.pt.")
    path = path.rstrip("/")
    parent = path.rpartition("/")[0] or None
    try:
        listed = _client().list_artifacts(run_id, parent)
    except (mlflow.exceptions.MlflowException, OSError):
        listed = []
    files = {a.path for a in listed if not a.is_dir}
    if path not in files:
        try:
            have = sorted(files | {a.path for a in _client().list_artifacts(run_id, CHECKPOINTS) if not a.is_dir})
        except (mlflow.exceptions.MlflowException, OSError):
            have = sorted(files)
        shown = ", ".join(have[:12]) + (", …" if len(have) > 12 else "") if have else "none"
        raise FocusmlError(f"--init-from {source}: run {run_id} has no artifact file {path} (its files: {shown}). "
                           "Name one of them, or give runs:/RUN_ID for its evaluated checkpoint.")
    return path


def _download_state(run_id: str, artifact: str, source: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError) as e:
            raise FocusmlError(f"--init-from {source}: cannot download {artifact} of run {run_id} "
                               f"({str(e).splitlines()[0]}).") from None
        return read_state_dict(local)


def _registry(source: str) -> tuple[str, dict[str, str], str | None]:
    """models:/... → (run id, lineage tags, logged model id)."""
    client = _client()
    ref = source[len("models:/"):].strip("/")
    if ref.startswith("m-") and "/" not in ref and "@" not in ref:  # a logged model's id
        try:
            logged = client.get_logged_model(ref)
        except mlflow.exceptions.MlflowException as e:
            raise FocusmlError(f"--init-from {source}: no logged model {ref} ({e.message.splitlines()[0]}).") from None
        if not logged.source_run_id:
            raise FocusmlError(f"--init-from {source}: logged model {ref} has no source run to take a checkpoint from.")
        return logged.source_run_id, {}, ref
    alias = None
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        fetch = lambda: client.get_model_version_by_alias(name, alias)  # noqa: E731
    else:
        match = re.fullmatch(r"(.+)/(\d+)", ref)
        if not match:
            raise FocusmlError(f"--init-from {source}: write models:/NAME@ALIAS or models:/NAME/VERSION "
                               "(e.g. models:/digits@champion, models:/digits/3).")
        name = match.group(1)
        fetch = lambda: client.get_model_version(name, match.group(2))  # noqa: E731
    try:
        mv = fetch()
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(f"--init-from {source}: no such registered model version in {mlflow.get_tracking_uri()} "
                           f"({e.message.splitlines()[0]}). `focusml register RUN_ID --name NAME --alias ALIAS` "
                           "makes one.") from None
    run_id = mv.run_id
    model_id = getattr(mv, "model_id", None)
    if not run_id and model_id:
        run_id = client.get_logged_model(model_id).source_run_id
    if not run_id:
        raise FocusmlError(f"--init-from {source}: version {mv.version} of '{name}' has no source run, so no "
                           "focusml checkpoint to take the weights from. Register a run logged by `focusml train`.")
    tags = {"focusml.init_from_model": f"{name}/{mv.version}"}
    if alias:
        tags["focusml.init_from_alias"] = alias
    return run_id, tags, model_id


def source_run(source: str) -> tuple[str, str, dict[str, str], str | None]:
    """(run id, artifact path, lineage tags, logged model id) of a run, runs:/ or models:/ SOURCE; no download."""
    if source_kind(source) == "models":
        run_id, tags, model_id = _registry(source)
        return run_id, "", tags, model_id
    run_id, _, path = source[len("runs:/"):].partition("/") if source.startswith("runs:/") else (source, "", "")
    return resolve_run_id(run_id, f"--init-from {source}"), path, {}, None


def resolve(source: str) -> Source:
    """The weights SOURCE names, read weights-only, with the new run's lineage tags. FocusmlError if unusable."""
    kind = source_kind(source)
    if kind == "file":
        return Source(read_init_file(source), {"focusml.init_from_file": str(Path(source).resolve())})
    run_id, path, tags, model_id = source_run(source)
    run = _get_run(run_id, source)
    artifact = named_artifact(run_id, path, source) or evaluated_checkpoint(run_id, source)
    state = _download_state(run_id, artifact, source)
    if model_id is None and (logged := run_model(run)) is not None:
        model_id = logged.model_id
    tags = {"focusml.init_from": run_id, "focusml.init_from_checkpoint": artifact, **tags}
    return Source(InitWeights(state, source, run.data.params.get("model") or None), tags, model_id)


def log_lineage(source: Source | None) -> None:
    """On the active run: the source's logged model as a model input (the UI links the runs)."""
    if source is None or not source.model_id:
        return
    run = mlflow.active_run()
    try:  # the client call: `mlflow.log_inputs(models=...)` is refused outside Databricks, the REST call is not
        _client().log_inputs(run.info.run_id, models=[LoggedModelInput(source.model_id)])
    except mlflow.exceptions.MlflowException:  # a server without logged-model inputs: the tags still say it
        pass
