"""Which MLflow experiment a run goes to, and how the experiment presents itself in the UI.

The experiment is, in this order: the one named on the command line (`--experiment`), else
`MLFLOW_EXPERIMENT_NAME`, else `MLFLOW_EXPERIMENT_ID` (what `mlflow run` passes on), else
`focusml`. MLflow's own client honours the same variables, so `focusml` and `mlflow run` agree.

Every experiment focusml writes to is tagged `mlflow.experimentKind=custom_model_development`
(unless it already has a kind): MLflow 3's mark of a classic ML experiment (runs, charts, models)
rather than a GenAI one (traces). The UI (3.17) opens the side the browser last chose whatever the
tag, so the links focusml prints name the side themselves (`store.ui_page`).

Each such experiment also holds focusml's saved view of its runs (`add_view`): the runs table with
the headline metrics as columns, best `acc/test` first. The UI's runs table shows no metric column
until a user picks one (its defaults are Source, Models, Dataset, kept per browser), and its URL
carries the sort and filter but not the columns; a saved view (an experiment tag, MLflow ≥ 3.15)
carries both, and the links focusml prints to an experiment open it (`viewStateShareKey`).
"""

from __future__ import annotations

import json
import os
import time

import mlflow
from mlflow.entities import Experiment
from mlflow.exceptions import MlflowException

from focusml import FocusmlError
from focusml.tracking.database import retry_unique

DEFAULT_EXPERIMENT = "focusml"
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment, where `mlflow run` puts runs unless told otherwise


def resolve_experiment(explicit: str | None = None) -> str:
    """The experiment's name: `explicit`, else `MLFLOW_EXPERIMENT_NAME`, else the experiment of
    `MLFLOW_EXPERIMENT_ID`, else `focusml`. Needs tracking set up only for the id case."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_NAME"]
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        exp = mlflow.MlflowClient().get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"])
        return exp.name
    return DEFAULT_EXPERIMENT


def use_experiment(explicit: str | None = None) -> Experiment:
    """Set (creating if needed) the run's experiment, see `resolve_experiment`; tag its kind."""
    if not explicit and not os.environ.get("MLFLOW_EXPERIMENT_NAME") and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        exp = mlflow.set_experiment(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"])
    else:
        exp = mlflow.set_experiment(resolve_experiment(explicit))
    mark_kind(exp.experiment_id, exp.tags)
    add_view(exp.experiment_id, exp.tags)
    return exp


def mark_kind(experiment_id: str, tags: dict | None = None) -> None:
    """Tag the experiment so the UI opens the classic ML view; an experiment that has a kind keeps it."""
    if tags is None:
        tags = mlflow.MlflowClient().get_experiment(experiment_id).tags
    if KIND_TAG not in (tags or {}):
        # runs starting together on a new experiment all add the tag: made again if it lost the race
        retry_unique(lambda: mlflow.MlflowClient().set_experiment_tag(experiment_id, KIND_TAG, KIND))


#: focusml's saved view: the UI lists it under *Views* by name and opens it from `?viewStateShareKey=focusml`.
VIEW_ID = "focusml"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # the prefix the MLflow 3.17 web app reads saved views from
VIEW_NAME = "focusml: headline metrics"
#: The runs table's metric columns, in order; the first sorts it, highest first. Gap closed is no run's
#: metric (it needs the baseline and upper bound: `focusml compare` puts it in the description).
HEADLINE = ("acc/test", "acc/val_cf", "flip/test")


def view_state() -> dict:
    """The saved view's state as the web app stores it: its column keys (`metrics.`KEY``, as the runs
    table names them; only these, so that they fit beside the run names with the assistant panel open)
    and search facets (`orderByKey`, `orderByAsc`); everything else stays the UI's."""
    columns = [f"metrics.`{m}`" for m in HEADLINE]
    return {"selectedColumns": columns, "orderByKey": columns[0], "orderByAsc": False}


def add_view(experiment_id: str, tags: dict | None = None, uri: str | None = None) -> bool:
    """Give the experiment (of the store `uri`, default MLflow's) focusml's saved view (`VIEW_TAG`) unless
    it has it as this version writes it; True when the experiment has it afterwards (False: the store
    could not say or refused, and links leave the view out).

    The tag's value is the web app's envelope `{name, createdAt, updatedAt, state}`, `state` the
    view as JSON text (the app also reads it uncompressed). A view a user deleted comes back with
    the next run; one of another focusml version is rewritten."""
    client = mlflow.MlflowClient(tracking_uri=uri or mlflow.get_tracking_uri())
    try:
        if tags is None:
            tags = client.get_experiment(experiment_id).tags
        try:
            held = json.loads(tags.get(VIEW_TAG) or "null")
            if held["name"] == VIEW_NAME and json.loads(held["state"]) == view_state():
                return True
        except (TypeError, KeyError, ValueError):
            pass
        now = int(time.time() * 1000)
        envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(view_state())}
        retry_unique(lambda: client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope)))
        return True
    except (MlflowException, OSError):
        return False


#: The experiment tag MLflow shows, as Markdown, as the experiment's description.
NOTE_TAG = "mlflow.note.content"
#: Where focusml's own section of a description starts: what is above it is the user's and kept.
NOTE_MARKER = "<!-- focusml: everything below this line is rewritten by `focusml compare`; write above it -->"
NOTE_LIMIT = 20000  # MLflow's limit on an experiment tag's value


def merge_note(note: str | None, section: str) -> str:
    """The description `note` with focusml's section (below `NOTE_MARKER`) replaced by `section`; the
    text above the marker (all of a note without one) kept as the user wrote it."""
    own = (note or "").split(NOTE_MARKER, 1)[0].rstrip()
    return "\n\n".join(p for p in (own, NOTE_MARKER, section.strip()) if p) + "\n"


def write_note(experiment_id: str, *sections: str) -> str:
    """Put the first of `sections` (Markdown, longest form first) that fits MLflow's limit into the
    experiment's description as focusml's part (`merge_note`); returns the description written.
    FocusmlError when none fits (the user's text above the marker is too long)."""
    client = mlflow.MlflowClient()
    current = client.get_experiment(experiment_id).tags.get(NOTE_TAG)
    for section in sections:
        note = merge_note(current, section)
        if len(note) <= NOTE_LIMIT:
            client.set_experiment_tag(experiment_id, NOTE_TAG, note)
            return note
    raise FocusmlError(f"experiment {experiment_id}'s description would exceed MLflow's {NOTE_LIMIT} characters; "
                       "shorten the text above focusml's section")
