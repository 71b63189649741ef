"""The Model Registry: a run's logged model as a new version of a registered model, described and tagged.

`register_version` registers the run's LoggedModel (`models:/m-…`) and gives the version what a
reviewer needs without opening the run: a description (method, dataset, the test metrics, the
gap closed between the baseline and the upper bound of the same dataset and seed when the
experiment has them, the source run) and tags (`focusml.method`, `focusml.dataset`, `acc/test`,
`gap_closed`, `source_run_id`, ...). It also says when the model looks degenerate: test accuracy
at chance level, or CAMs that are zero everywhere (a dead network). `register` is the same,
returning just the version number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlflow
from mlflow.utils.validation import (  # MLflow's own rules, so a name it would refuse is refused before anything exists
    _validate_model_alias_name, _validate_model_alias_name_reserved, _validate_model_name)

from focusml import FocusmlError
from focusml.tracking.log import run_model
from focusml.tracking.runs import resolve_run_id

#: the metrics shown and written into the description, in this order
SHOWN = ("acc/test", "acc/test_cf", "flip/test", "evidence_in_mask/test", "wr/test", "cam_in_mask/test",
         "cam_dead/test", "acc/test_confounded", "acc/test_clean", "selected_epoch")
PAIR_PARAMS = ("seed", "data_seed", "model")
CHANCE_MARGIN = 0.05  # acc/test within 5 points of 1/classes is "chance level"
SMALL_GAP = 0.10  # a baseline → upper-bound gap under 10 points makes "gap closed" noise


@dataclass
class Registered:
    name: str
    version: str
    alias: str | None
    run_id: str
    source: str
    metrics: dict[str, float]
    references: dict[str, float] = field(default_factory=dict)  # baseline / upper_bound acc/test
    gap_closed: float | None = None
    warnings: list[str] = field(default_factory=list)
    description: str = ""


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _references(client: mlflow.MlflowClient, run) -> dict[str, float]:
    """Mean acc/test of the finished baseline and upper-bound runs of the same dataset, seed, data seed
    and model in the run's experiment (the pairing `focusml compare` uses)."""
    tags, params = run.data.tags, run.data.params
    dataset = tags.get("focusml.dataset")
    if not dataset:
        return {}
    out = {}
    for method in ("baseline", "upper_bound"):
        found = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`focusml.method` = '{method}' and tags.`focusml.dataset` = '{dataset}' "
                          "and attributes.status = 'FINISHED'",
            max_results=500)
        accs = [r.data.metrics["acc/test"] for r in found
                if "acc/test" in r.data.metrics and "mlflow.parentRunId" not in r.data.tags
                and all(r.data.params.get(k) == params.get(k) for k in PAIR_PARAMS)]
        if accs:
            out[method] = sum(accs) / len(accs)
    return out


def _num_classes(run) -> int | None:
    for inp in (run.inputs.dataset_inputs if run.inputs else []):
        for tag in inp.tags:
            if tag.key == "classes" and tag.value:
                return len(tag.value.split(","))
    return None


def assess(metrics: dict[str, float], num_classes: int | None, references: dict[str, float]) -> list[str]:
    """Why a model should not be trusted as it is (empty when nothing looks wrong)."""
    out = []
    acc = metrics.get("acc/test")
    if _finite(acc) and num_classes:
        chance = 1.0 / num_classes
        if acc <= chance + CHANCE_MARGIN:
            out.append(f"acc/test {acc:.3f} is at chance level ({num_classes} classes: {chance:.3f}); "
                       "the model has not learned the task.")
    dead = metrics.get("cam_dead/test")
    if _finite(dead) and dead >= 0.99:
        out.append("its CAMs are zero everywhere on the test images (cam_dead/test = 1): a dead network, "
                   "not one that ignores the shortcut.")
    elif not _finite(dead) and metrics.get("wr/test") == 0 and not _finite(metrics.get("cam_in_mask/test")):
        out.append("wr/test is 0 with no CAM mass anywhere: the CAMs look dead.")
    if "baseline" in references and "upper_bound" in references:
        gap = references["upper_bound"] - references["baseline"]
        if gap < SMALL_GAP:
            out.append(f"the baseline → upper bound gap is only {100 * gap:.1f} points "
                       f"({references['baseline']:.3f} → {references['upper_bound']:.3f}): gap closed is noise here.")
    return out


def _describe(run, metrics: dict[str, float], refs: dict[str, float], gap: float | None, warnings: list[str]) -> str:
    tags, params = run.data.tags, run.data.params
    head = (f"{tags.get('focusml.method', '?')} on {tags.get('focusml.dataset', '?')} "
            f"(seed {params.get('seed', '?')}, {params.get('epochs', '?')} epochs, model {params.get('model', '?')}")
    if _finite(metrics.get("selected_epoch")):
        head += f", evaluated epoch {int(metrics['selected_epoch'])}"
    lines = [head + ")."]
    shown = [f"{k} {metrics[k]:.4g}" for k in SHOWN if k != "selected_epoch" and _finite(metrics.get(k))]
    if shown:
        lines.append("Test (shortcut broken): " + ", ".join(shown) + ".")
    if gap is not None:
        lines.append(f"Gap closed {100 * gap:.0f}% (baseline {refs['baseline']:.3f} → upper bound "
                     f"{refs['upper_bound']:.3f}, same dataset and seed).")
    lines.append(f"Source run {run.info.run_id} ({tags.get('mlflow.runName', '')}).")
    lines += [f"Warning: {w}" for w in warnings]
    return "\n".join(lines)


def check_registry_names(name: str, alias: str | None) -> None:
    """Refuse (FocusmlError) a model name or alias MLflow would refuse, before any version is created:
    otherwise the version exists and only setting its alias fails."""
    try:
        _validate_model_name(name)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(f"--name {name!r} is not a valid registered model name ({e.message.splitlines()[0]}); "
                           "use e.g. --name digits-pas.") from None
    if alias is None:
        return
    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(f"--alias {alias!r} cannot be used ({e.message.splitlines()[0]}; MLflow reserves 'latest' "
                           "and v<number>, which name versions); use e.g. --alias champion.") from None


def register_version(run_id: str, name: str, alias: str | None = "champion", artifact: str = "model") -> Registered:
    """Register a run's logged model as a new version of `name`, describe and tag it, set `alias` on it.

    The name and alias are checked first (`check_registry_names`), so a version is created only when its alias can be set."""
    check_registry_names(name, alias)
    client = mlflow.MlflowClient()
    run_id = resolve_run_id(run_id)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(f"run {run_id} not found in {mlflow.get_tracking_uri()}: {e.message}") from None
    logged = run_model(run)
    source = f"runs:/{run_id}/{artifact}"
    metrics = dict(run.data.metrics)
    if logged is not None:
        source = logged.model_uri
        metrics.update({m.key: m.value for m in (logged.metrics or [])})  # the evaluated checkpoint's
    elif not client.list_artifacts(run_id, artifact):
        raise FocusmlError(f"run {run_id} has no logged model to register (it ran with `log_model: false` / "
                           "--no-log-model, or was pruned or failed before the end). Pick a run that logged one.")
    metrics = {k: v for k, v in metrics.items() if k in SHOWN}
    refs = _references(client, run)
    gap = None
    if _finite(metrics.get("acc/test")) and "baseline" in refs and "upper_bound" in refs \
            and refs["upper_bound"] != refs["baseline"]:
        gap = (metrics["acc/test"] - refs["baseline"]) / (refs["upper_bound"] - refs["baseline"])
    warnings = assess(metrics, _num_classes(run), refs)
    description = _describe(run, metrics, refs, gap, warnings)
    tags = {"focusml.method": run.data.tags.get("focusml.method", ""),
            "focusml.dataset": run.data.tags.get("focusml.dataset", ""), "source_run_id": run_id,
            **{k: f"{metrics[k]:.4f}" for k in ("acc/test", "acc/test_cf", "flip/test") if _finite(metrics.get(k))}}
    if gap is not None:
        tags["gap_closed"] = f"{gap:.4f}"
    if warnings:
        tags["focusml.warning"] = " | ".join(warnings)[:5000]
    mv = mlflow.register_model(source, name, tags=tags)
    client.update_model_version(name, mv.version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return Registered(name, str(mv.version), alias, run_id, source, metrics, refs, gap, warnings, description)


def register(run_id: str, name: str, alias: str | None = "champion", artifact: str = "model") -> str:
    """`register_version`, returning just the new version number (as a string)."""
    return register_version(run_id, name, alias, artifact).version
