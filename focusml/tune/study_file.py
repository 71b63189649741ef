"""Reading a study file (`studies/*.yaml`): every error names the field, the value and what is allowed."""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path
from typing import Any

import yaml

from focusml import FocusmlError
from focusml.core.config import load_yaml
from focusml.tune.spec import OBJECTIVES, PARAM_TYPES, PRUNERS, SAMPLERS, TOP_KEYS, Objective, SearchParam, StudySpec
from focusml.core.values import coerce


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study file (YAML), apply `--set KEY=VALUE` overrides, validate it."""
    data = apply_overrides(load_yaml(path), overrides, source=str(path))
    spec = parse_spec(data, source=str(path), default_name=Path(path).stem)
    spec.overrides = tuple(overrides)
    return spec


#: top-level keys `--set` may change directly; any other key is a run option and goes to `fixed`
_TOP_SETTABLE = ("method", "dataset", "n_trials", "seed", "study_name", "sampler", "pruner", "objectives")


def apply_overrides(data: dict[str, Any], overrides, source: str = "study") -> dict[str, Any]:
    """The study mapping with `KEY=VALUE` overrides applied (values parsed as YAML: `3` is a number,
    `true` a boolean, `[a, b]` a list).

    `method`, `dataset`, `n_trials`, `seed`, `study_name`, `sampler`, `pruner` and `objectives`
    replace the top-level entry; a dotted key sets inside a mapping (`sampler.n_startup_trials=4`,
    `search.lam.high=10`); any other key is a run option set in `fixed` (`epochs=3`,
    `batch_size=64`); a searched option set this way is fixed at that value and no longer searched.
    """
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise FocusmlError(f"--set {item!r}: write KEY=VALUE, e.g. --set epochs=3 or --set dataset=symbols.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise FocusmlError(f"--set {item!r}: the value is not valid YAML ({e}).") from None
        if "." in key:
            head, *path = key.split(".")
            node = out.get(head)
            if isinstance(node, str):  # `sampler: tpe` shorthand → {name: tpe}
                node = out[head] = {"name": node}
            if node is None:
                node = out[head] = {}
            for part in path[:-1]:
                if not isinstance(node, dict):
                    break
                node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FocusmlError(f"--set {item!r}: {'.'.join([head, *path[:-1]])} in {source} is not a mapping.")
            node[path[-1]] = value
        elif key in _TOP_SETTABLE:
            out[key] = value
        else:
            search = out.get("search")
            if isinstance(search, dict):
                for name in list(search):
                    if str(name).replace("-", "_") == key:
                        del search[name]  # fixed now: no longer searched
                enqueue = out.get("enqueue")
                if isinstance(enqueue, list):
                    out["enqueue"] = [{k: v for k, v in e.items() if str(k).replace("-", "_") != key}
                                      if isinstance(e, dict) else e for e in enqueue]
                    out["enqueue"] = [e for e in out["enqueue"] if e != {}]
            fixed = out.get("fixed")
            if not isinstance(fixed, dict):
                fixed = out["fixed"] = {}
            fixed[key] = value
    return out


def _fail(source: str, where: str, value: Any, allowed: str) -> FocusmlError:
    return FocusmlError(f"{source}: {where} is {value!r}; {allowed}.")


def _mapping(source: str, where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(source, where, value, "it must be a mapping of name: value")
    return value


def _int(source: str, where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(source, where, value, f"it must be a whole number ≥ {low}")
    return value


def parse_spec(data: dict[str, Any], source: str = "study", default_name: str = "study") -> StudySpec:
    """Validate a study mapping; every error names the field, the value and what is allowed."""
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise _fail(source, f"key '{unknown[0]}'", data[unknown[0]], f"allowed top-level keys: {', '.join(TOP_KEYS)}")
    for key in ("method", "dataset"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(source, key, data.get(key), f"give the {key} name (see `focusml {key}s`)"
                        if key == "method" else "give a dataset name (see `focusml datasets list`)")
    fixed = {k.replace("-", "_"): v for k, v in _mapping(source, "fixed", data.get("fixed")).items()}
    for key in ("method", "dataset"):
        if key in fixed:
            raise _fail(source, f"fixed.{key}", fixed[key], f"set `{key}` at the top level of the study file")
    search = _parse_search(source, _mapping(source, "search", data.get("search")))
    for p in search:
        if p.name in fixed:
            raise _fail(source, f"search.{p.name}", "also in fixed", "a searched option cannot also be fixed")
    objectives = _parse_objectives(source, data.get("objectives", ["acc/val_cf"]))
    sampler, sampler_options = _parse_choice(source, "sampler", data.get("sampler", "tpe"), SAMPLERS)
    pruner, pruner_options = _parse_choice(source, "pruner", data.get("pruner", "none"), PRUNERS)
    seed = data.get("seed", 0)
    if seed is not None:
        seed = _int(source, "seed", seed, 0)
    if "seed" in sampler_options:
        raise _fail(source, "sampler.seed", sampler_options["seed"], "put the seed at the top level (`seed:`)")
    name = data.get("study_name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, "study_name", name, "give a non-empty name")
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise _fail(source, "enqueue", enqueue, "it must be a list of {param: value} mappings tried first")
    names = {p.name for p in search}
    for i, e in enumerate(enqueue):
        extra = [k for k in e if k not in names]
        if extra:
            raise _fail(source, f"enqueue[{i}].{extra[0]}", e[extra[0]], f"enqueue only searched params: {', '.join(sorted(names))}")
    enqueue = [_check_enqueued(source, i, e, search) for i, e in enumerate(enqueue)]
    _check_options(source, "sampler", SAMPLERS[sampler], sampler_options)
    _check_options(source, "pruner", PRUNERS[pruner], pruner_options)
    spec = StudySpec(source=source, method=data["method"], dataset=data["dataset"], fixed=fixed, search=search,
                     objectives=objectives, n_trials=_int(source, "n_trials", data.get("n_trials", 20), 1),
                     sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
                     seed=seed, study_name=name.strip(), enqueue=tuple(enqueue))
    _check_runs(spec)
    _check_strategy(spec)
    return spec


def _check_enqueued(source: str, i: int, entry: dict, search: tuple[SearchParam, ...]) -> dict:
    """An `enqueue` entry with each value of its param's type and inside its range or choices."""
    out = {}
    for p in search:
        if p.name not in entry:
            continue
        where, value = f"enqueue[{i}].{p.name}", entry[p.name]
        if p.type == "categorical":
            if value not in p.choices:
                raise _fail(source, where, value, f"choose one of search.{p.name}'s choices {list(p.choices)}")
        else:
            try:
                value = coerce(where, value, p.type)
            except FocusmlError as e:
                raise FocusmlError(f"{source}: {e}") from None
            if not p.low <= value <= p.high:
                raise _fail(source, where, value, f"it must lie in search.{p.name}'s range [{p.low}, {p.high}]")
        out[p.name] = value
    return out


def _check_options(source: str, key: str, cls: type, options: dict) -> None:
    """Sampler or pruner options of the type their constructor declares (bool, int or float, maybe None):
    Optuna takes `n_startup_trials: 2.5` or `multivariate: 1` without a word and fails later, mid-study."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    for name, value in options.items():
        if name not in params or value is None:
            continue  # Optuna names an unknown option when the sampler is made
        annotation = params[name].annotation
        kinds = (annotation.__name__ if isinstance(annotation, type) else str(annotation)).replace(" ", "").split("|")
        if kinds[0] in ("bool", "int", "float") and set(kinds) <= {kinds[0], "None"}:
            try:
                options[name] = coerce(f"{key}.{name}", value, kinds[0])
            except FocusmlError as e:
                raise FocusmlError(f"{source}: {e}") from None


def _parse_search(source: str, raw: dict) -> tuple[SearchParam, ...]:
    if not raw:
        raise _fail(source, "search", raw, "give at least one searched option, e.g. `lam: {type: float, low: 0.01, high: 100, log: true}`")
    out = []
    for name, spec in raw.items():
        where = f"search.{name}"
        name = str(name).replace("-", "_")
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        spec = _mapping(source, where, spec)
        allowed_keys = {"type", "low", "high", "log", "step", "choices"}
        bad = [k for k in spec if k not in allowed_keys]
        if bad:
            raise _fail(source, f"{where}.{bad[0]}", spec[bad[0]], f"allowed keys: {', '.join(sorted(allowed_keys))}")
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise _fail(source, f"{where}.type", kind, f"choose one of {', '.join(PARAM_TYPES)}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or not all(
                    c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise _fail(source, f"{where}.choices", choices, "give a non-empty list of numbers or strings")
            extra = [k for k in spec if k not in ("type", "choices")]
            if extra:
                raise _fail(source, f"{where}.{extra[0]}", spec[extra[0]], "a categorical option takes only `choices`")
            out.append(SearchParam(name, kind, choices=tuple(choices)))
            continue
        if "choices" in spec:
            raise _fail(source, f"{where}.choices", spec["choices"], f"`choices` needs `type: categorical`, not {kind}")
        num = int if kind == "int" else (int, float)
        low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
        for key, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, num) or not math.isfinite(value):
                raise _fail(source, f"{where}.{key}", value, f"give a finite {'whole number' if kind == 'int' else 'number'}")
        if not low < high:
            raise _fail(source, f"{where}.high", high, f"it must be greater than low ({low})")
        if not isinstance(log, bool):
            raise _fail(source, f"{where}.log", log, "true or false")
        if log and low <= 0:
            raise _fail(source, f"{where}.low", low, "a log-scaled range needs low > 0")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, num) or step <= 0:
                raise _fail(source, f"{where}.step", step, f"give a {'whole number' if kind == 'int' else 'number'} > 0")
            if log:
                raise _fail(source, f"{where}.step", step, "`step` and `log: true` cannot be combined (Optuna)")
        out.append(SearchParam(name, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                               log, step))
    return tuple(out)


def _parse_objectives(source: str, raw: Any) -> tuple[Objective, ...]:
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _fail(source, "objectives", raw, f"give a list of metrics among {', '.join(OBJECTIVES)}")
    out = []
    for i, item in enumerate(raw):
        where = f"objectives[{i}]"
        if isinstance(item, str):
            item = {"metric": item}
        item = _mapping(source, where, item)
        bad = [k for k in item if k not in ("metric", "direction")]
        if bad:
            raise _fail(source, f"{where}.{bad[0]}", item[bad[0]], "allowed keys: metric, direction")
        metric = item.get("metric")
        if metric not in OBJECTIVES:
            leak = " (choosing on a test split leaks the test set into the choice)" if "test" in str(metric) else ""
            raise _fail(source, f"{where}.metric", metric, f"choose a validation metric: {', '.join(OBJECTIVES)}{leak}")
        direction = item.get("direction", OBJECTIVES[metric])
        if direction != OBJECTIVES[metric]:
            raise _fail(source, f"{where}.direction", direction, f"{metric} is only sensibly {OBJECTIVES[metric]}d")
        if metric in [o.metric for o in out]:
            raise _fail(source, f"{where}.metric", metric, "each metric may appear once")
        out.append(Objective(metric, direction))
    return tuple(out)


def _parse_choice(source: str, key: str, raw: Any, known: dict) -> tuple[str, dict]:
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = dict(_mapping(source, key, raw))
    name = raw.pop("name", None)
    if name not in known:
        raise _fail(source, f"{key}.name" if raw else key, name, f"choose one of {', '.join(known)}")
    return name, raw


def _check_runs(spec: StudySpec) -> None:
    """The fixed options, and every edge value of the space, must make a valid run (field named if not)."""
    try:
        spec.config({})
    except FocusmlError as e:
        raise FocusmlError(f"{spec.source}: fixed options do not make a valid run: {e}") from None
    for p in spec.search:
        for value in p.corners():
            try:
                spec.config({p.name: value})
            except FocusmlError as e:
                raise FocusmlError(f"{spec.source}: search.{p.name} value {value!r} does not make a valid run: {e}") from None
    base = {p.name: p.corners()[0] for p in spec.search}
    try:
        spec.config(base)
    except FocusmlError as e:
        raise FocusmlError(f"{spec.source}: search values {base} together do not make a valid run: {e}") from None


def _check_strategy(spec: StudySpec) -> None:
    if spec.multi and spec.pruner != "none":
        raise _fail(spec.source, "pruner", spec.pruner,
                    f"Optuna prunes single-objective studies only and this one has {len(spec.objectives)} objectives: use `pruner: none`")
    if spec.sampler == "grid":
        for p in spec.search:
            if p.grid_values() is None:
                raise _fail(spec.source, f"search.{p.name}", "a continuous float range",
                            "the grid sampler needs a finite set: give `step`, or `type: categorical` with `choices`")
    if spec.sampler == "cmaes" and spec.multi:
        raise _fail(spec.source, "sampler", spec.sampler, "CMA-ES is single-objective: use tpe, nsga2 or random")
    spec.make_sampler()
    spec.make_pruner()
