"""What the parent run logs: the study's setup, its outcome and its figures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.visualization import matplotlib as ovm

import focusml.core.figures  # noqa: F401  (selects matplotlib's Agg backend before Optuna draws)
from focusml import tracking
from focusml.tune.recovery import CALL_ATTR
from focusml.tune.results import StudyResult, TrialRecord, choose_trial
from focusml.tune.spec import SearchParam, StudySpec


def log_setup(spec: StudySpec, name: str, shown: str, n: int, workers: int, n_before: int) -> None:
    tracking.log_params({
        "study_name": name, "study_file": spec.source, "storage": shown, "method": spec.method,
        "dataset": spec.dataset, "objectives": ",".join(f"{o.metric}:{o.direction}" for o in spec.objectives),
        "sampler": spec.sampler, "pruner": spec.pruner, "sampler_seed": spec.seed, "trials_requested": n,
        "workers": workers, "trials_before": n_before,
        "search_space": json.dumps({p.name: _space(p) for p in spec.search}),
        **{f"fixed.{k}": v for k, v in spec.fixed.items()},
        **({"overrides": " ".join(spec.overrides)[:6000]} if spec.overrides else {}),
    })
    if Path(spec.source).is_file():
        tracking.log_artifact(spec.source, artifact_path="study")


def _space(p: SearchParam) -> Any:
    if p.type == "categorical":
        return list(p.choices)
    return {"type": p.type, "low": p.low, "high": p.high, **({"log": True} if p.log else {}),
            **({"step": p.step} if p.step else {})}


def this_call(trials: list[optuna.trial.FrozenTrial], parent_id: str) -> int:
    """How many of `trials` the `tune` call of MLflow run `parent_id` ran (other machines may run the rest)."""
    return sum(t.user_attrs.get(CALL_ATTR) == parent_id for t in trials)


def summarise(study: optuna.Study, spec: StudySpec, name: str, shown: str, parent_id: str) -> StudyResult:
    """Log the study's outcome on the parent run and return it."""
    trials = study.get_trials(deepcopy=False)
    best, notes = choose_trial(trials, spec.directions)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pareto = (study.best_trials if spec.multi else [best]) if best else []
    result = StudyResult(name, shown, parent_id, [o.metric for o in spec.objectives], [TrialRecord.of(t) for t in trials],
                         this_call(trials, parent_id), TrialRecord.of(best) if best else None, [TrialRecord.of(t) for t in pareto])
    result.notes = notes
    counts = {f"trials/{s.lower()}": float(result.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL")}
    tracking.log_metrics({**counts, "trials/total": float(len(trials)), "trials/this_call": float(result.new_trials)})
    for t in done:  # the optimisation history as step series (step = trial number)
        tracking.log_metrics({f"trial/{o.metric}": v for o, v in zip(spec.objectives, t.values)}, step=t.number)
    if best is not None:
        tracking.log_params({f"best.{k}": v for k, v in best.params.items()})
        tracking.log_metrics({f"best/{o.metric}": v for o, v in zip(spec.objectives, best.values)})
        tracking.set_tags({"best.trial_number": str(best.number), "best.run_id": best.user_attrs.get("mlflow_run_id", ""),
                           **({"focusml.warning": " | ".join(notes)[:5000]} if notes else {})})
    tracking.log_dict({"chosen": best.number if best else None,
                       "pareto_front": [vars(r) for r in result.pareto],
                       "trials": [vars(r) for r in result.trials]}, "study/trials.json")
    _log_figures(study, spec, result)
    return result


def _log_figures(study: optuna.Study, spec: StudySpec, result: StudyResult) -> None:
    """History, importances (need ≥ 2 completed trials with varying params) and the Pareto front.

    Each figure is optional: when Optuna cannot draw one (too few trials, one distinct value),
    the reason is kept in `result.skipped` and tagged on the parent run instead.
    """
    targets = [(o.metric, (lambda t, i=i: t.values[i]) if spec.multi else None) for i, o in enumerate(spec.objectives)]
    plots: list[tuple[str, Callable[[], Any]]] = []
    for metric, target in targets:
        slug = metric.replace("/", "_")
        plots.append((f"optimization_history_{slug}", lambda t=target, m=metric: ovm.plot_optimization_history(
            study, target=t, target_name=m)))
        plots.append((f"param_importances_{slug}", lambda t=target, m=metric: ovm.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=t, target_name=m)))
    if spec.multi:
        plots.append(("pareto_front", lambda: ovm.plot_pareto_front(study, target_names=result.objectives)))
    elif result.count("PRUNED"):
        plots.append(("intermediate_values", lambda: ovm.plot_intermediate_values(study)))
    n_done = result.count("COMPLETE")
    for name, draw in plots:
        if name.startswith("param_importances") and n_done < 2:
            result.skipped[name] = f"needs ≥ 2 completed trials, has {n_done}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
        except Exception as e:  # an optional figure must never fail the study
            result.skipped[name] = f"{type(e).__name__}: {e}"
            continue
        fig = getattr(ax, "figure", None) or ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        tracking.log_figure(fig, f"figures/{name}.png")
        result.figures.append(f"figures/{name}.png")
    if result.skipped:
        tracking.set_tags({f"figure_skipped.{k}": v[:500] for k, v in result.skipped.items()})
    if not spec.multi and n_done >= 2:
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            tracking.log_metrics({f"importance/{k}": v for k, v in imp.items()})
        except (RuntimeError, ValueError):
            pass  # already recorded as a skipped figure
