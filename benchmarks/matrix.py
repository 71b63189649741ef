"""The whole matrix: every method × every built-in dataset × seeds, judged where the shortcut is broken.

Each run is the core `focusml.core.run.run` (no tracking, one thread per worker process) with the
method's defaults unless `--set`/`--grid` say otherwise. The table per dataset comes from
`focusml.analysis.summary` (the same code as `focusml compare`): acc/test, gap closed (each seed
paired with its own baseline and upper bound), the counterfactual metrics acc/test_cf and
flip/test, evidence_in_mask/test, wr/test and time per epoch relative to the baseline. Below it:

- per dataset, the Spearman correlation over all runs of `acc/test` with the validation metrics
  of the evaluated checkpoint, `acc/val_cf` and `acc/val` (can validation see the shortcut?);
- the upper bound's spread over seeds;
- with `--grid`, the validation-only choice of each setting: the value with the highest mean
  `acc/val_cf` over the datasets (test numbers are printed beside it, never used).

Every finished run is appended to `--out` (JSON lines) and reused when the same job comes again,
so an interrupted matrix resumes where it stopped. `--log-to EXPERIMENT` logs the table, CSV and
chart as a comparison run to MLflow (`MLFLOW_TRACKING_URI`, else ./mlflow.db).

Examples:
    python benchmarks/matrix.py --jobs 2                                   # 11 methods × 4 datasets × 3 seeds
    python benchmarks/matrix.py --methods baseline,upper_bound,pas --datasets symbols --seeds 1
    python benchmarks/matrix.py --grid pas.lam=0.1,1,10 --methods pas --seeds 100 --out grid.jsonl
    python benchmarks/matrix.py --fashion --train-size 10000 --seeds 1 --methods baseline,upper_bound,pas
    python benchmarks/matrix.py --init-scale --datasets symbols             # λ=1 penalty vs CE at init
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from focusml.analysis.summary import METRICS, markdown_table, mean_std, summarise, to_markdown
from focusml.core.cache import cache_dir
from focusml.core.config import RunConfig
from focusml.core.data import DATASETS
from focusml.core.methods import METHODS, Batch
from focusml.core.methods.generative import Generative, inpainter
from focusml.core.models import build_model
from focusml.core.run import load_data, run
from focusml.core.train import resolve_device

BUILTIN = [name for name, info in DATASETS.items() if info.builtin]
REFERENCES = ("baseline", "upper_bound")


def parse_settings(sets: list[str], grids: list[str]) -> dict[str, list[dict[str, str]]]:
    """METHOD.PARAM=VALUE (fixed) and METHOD.PARAM=V1,V2,... (grid) → per method, the list of option dicts."""
    fixed: dict[str, dict[str, str]] = {}
    grid: dict[str, dict[str, list[str]]] = {}
    for item, many in [(s, False) for s in sets] + [(g, True) for g in grids]:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot or method not in METHODS:
            raise SystemExit(f"{item!r}: write METHOD.PARAM=VALUE{'S' if many else ''} with a known method")
        if param not in {p.name for p in METHODS[method].params}:
            raise SystemExit(f"{item!r}: {method} has no option {param}")
        if many:
            grid.setdefault(method, {})[param] = value.split(",")
        else:
            fixed.setdefault(method, {})[param] = value
    out = {}
    for method in set(fixed) | set(grid):
        names = list(grid.get(method, {}))
        combos = itertools.product(*grid[method].values()) if names else [()]
        out[method] = [{**fixed.get(method, {}), **dict(zip(names, combo))} for combo in combos]
    return out


def job_key(job: dict) -> str:
    return json.dumps({k: job[k] for k in ("dataset", "method", "seed", "epochs", "options", "train_size")},
                      sort_keys=True)


def one_run(job: dict) -> dict:
    """Train one job with the core run; return its identity, its metrics and its time per epoch."""
    torch.set_num_threads(1)
    config = RunConfig(method=job["method"], dataset=job["dataset"], seed=job["seed"], epochs=job["epochs"],
                       device=job["device"], log_model=False, method_params=dict(job["options"]),
                       train_size=job["train_size"])
    start = time.perf_counter()
    result = run(config)
    return {**job, "metrics": result.metrics, "wall_s": time.perf_counter() - start}


def run_pool(todo: list[dict], fn, jobs: int, out: str, done: dict, key, describe) -> None:
    """Run `fn` over `todo` in `jobs` spawned processes; append each finished row to the JSON-lines
    file `out` at once (so an interrupted benchmark resumes) and print one progress line per row."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max(1, jobs), mp_context=mp.get_context("spawn")) as pool:
        for i, row in enumerate(pool.map(fn, todo), 1):
            done[key(row)] = row
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{i}/{len(todo)} {time.perf_counter() - start:.0f}s] {row['dataset']:<13} {row['method']:<17} "
                  f"s{row['seed']} {describe(row)}", file=sys.stderr, flush=True)


def warm_caches(jobs: list[dict]) -> None:
    """Train what `prepare` trains once per dataset (the generative inpainter) before the workers start."""
    for dataset, device, size in {(j["dataset"], j["device"], j["train_size"]) for j in jobs if j["method"] == "generative"}:
        data = load_data(RunConfig(dataset=dataset, train_size=size))
        inpainter.load_or_train(data, Generative.train_split, cache_dir(), resolve_device(device), Generative.settings)


def tidy(rows: list[dict]) -> pd.DataFrame:
    """The runs as `summary.tidy_runs` would give them from MLflow: one row per run, short metric names."""
    frame = pd.DataFrame([{
        "run_id": job_key(r), "dataset": r["dataset"], "method": r["method"],
        "settings": " ".join(f"{k}={v}" for k, v in sorted(r["options"].items())),
        "seed": str(r["seed"]), "data_seed": "0", "model": "small",
        **{short: r["metrics"].get(name, float("nan")) for short, name in METRICS.items()},
    } for r in rows])
    return frame


def spearman(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: Spearman correlation over its runs of acc/test with acc/val_cf and with acc/val."""
    out = []
    for dataset, g in frame.groupby("dataset", sort=False):
        corr = g[["acc", "val_cf", "val"]].corr(method="spearman")
        out.append({"dataset": dataset, "runs": len(g), "ρ(acc/val_cf, acc/test)": f"{corr.loc['val_cf', 'acc']:.2f}",
                    "ρ(acc/val, acc/test)": f"{corr.loc['val', 'acc']:.2f}"})
    return pd.DataFrame(out)


def choices(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and setting: mean acc/val_cf over datasets (what chooses) and mean acc/test (shown, not used)."""
    per = frame.groupby(["method", "settings", "dataset"], sort=False)[["val_cf", "acc"]].mean().reset_index()
    agg = per.groupby(["method", "settings"], sort=False).agg(
        datasets=("dataset", "nunique"), val_cf=("val_cf", "mean"), acc=("acc", "mean")).reset_index()
    agg["chosen"] = agg.groupby("method")["val_cf"].transform("max").eq(agg["val_cf"]).map({True: "◀", False: ""})
    agg["mean acc/val_cf (chooses)"] = agg["val_cf"].map("{:.3f}".format)
    agg["mean acc/test (not used)"] = agg["acc"].map("{:.3f}".format)
    return agg[["method", "settings", "datasets", "mean acc/val_cf (chooses)", "mean acc/test (not used)", "chosen"]]


def init_scale(dataset: str, n: int = 256, seeds: int = 5) -> pd.DataFrame:
    """λ=1 penalty of every λ-method at initialisation (its defaults otherwise) next to CE, on `n` training images."""
    data = load_data(RunConfig(dataset=dataset))
    x, m, y = data.split("train").batch(torch.arange(min(n, len(data.split("train")))))
    rows = []
    for name, cls in METHODS.items():
        if "lam" not in {p.name for p in cls.params}:
            continue
        pens, ces = [], []
        for seed in range(seeds):
            torch.manual_seed(seed)
            c, h, w = data.image_shape
            model = build_model(RunConfig().model, c, data.num_classes, max(h, w))
            method = cls({"lam": 1.0})
            xin = x.clone().requires_grad_(cls.needs_input_grad)
            feats, logits = model.forward_features(xin)
            pen = method.penalty(model, Batch(xin, m, y, torch.arange(len(y))), feats, logits)
            pens.append(float(pen.detach()) if pen is not None else 0.0)
            ces.append(float(F.cross_entropy(logits, y).detach()))
        rows.append({"method": name, "λ=1 penalty at init": f"{pd.Series(pens).mean():.3f}",
                     "range": f"{min(pens):.3f}–{max(pens):.3f}", "CE at init": f"{pd.Series(ces).mean():.3f}"})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(BUILTIN), help="comma list (default: every built-in dataset)")
    ap.add_argument("--fashion", action="store_true", help="add decoy-fashion (real Fashion-MNIST images)")
    ap.add_argument("--train-size", type=int, default=None, help="decoy-fashion's training images (default: all 55,000)")
    ap.add_argument("--methods", default="", help="comma list (default: every method that trains from scratch)")
    ap.add_argument("--seeds", default="3", help="number of seeds (0..N−1) or a comma list (default 3)")
    ap.add_argument("--epochs", type=int, default=RunConfig().epochs)
    ap.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    ap.add_argument("--jobs", type=int, default=1, help="single-threaded worker processes (≤ free cores, or timings lie)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE", help="a non-default option")
    ap.add_argument("--grid", action="append", default=[], metavar="METHOD.PARAM=V1,V2", help="options to choose among")
    ap.add_argument("--out", default="matrix.jsonl", help="JSON lines of finished runs, reused on the next call")
    ap.add_argument("--report", default=None, help="also write the Markdown report to this file")
    ap.add_argument("--log-to", default=None, metavar="EXPERIMENT", help="log the report as an MLflow comparison run")
    ap.add_argument("--init-scale", action="store_true", help="only print λ=1 penalty vs CE at initialisation")
    args = ap.parse_args(argv)

    datasets = list(dict.fromkeys([d for d in args.datasets.split(",") if d] + (["decoy-fashion"] if args.fashion else [])))
    if args.init_scale:
        print("\n\n".join(f"### {d}\n\n{markdown_table(init_scale(d))}" for d in datasets))
        return 0
    seeds = list(range(int(args.seeds))) if "," not in args.seeds else [int(s) for s in args.seeds.split(",") if s]
    # every method that trains from scratch (head_refit refines a trained model: benchmarks/refine.py stages)
    chosen = [m for m in args.methods.split(",") if m] or [m for m, c in METHODS.items() if not c.needs_init]
    unknown = [m for m in chosen + datasets if m not in METHODS and m not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (methods: {', '.join(METHODS)}; datasets: {', '.join(DATASETS)})")
    methods = list(REFERENCES) + [m for m in chosen if m not in REFERENCES]
    settings = parse_settings(args.set, args.grid)
    jobs = [{"dataset": d, "method": m, "seed": s, "epochs": args.epochs, "device": args.device, "options": o,
             "train_size": args.train_size if d == "decoy-fashion" else None}
            for s in seeds for d in datasets for m in methods for o in settings.get(m, [{}])]
    done = {}
    if Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            row = json.loads(line)
            done[job_key(row)] = row
    todo = [j for j in jobs if job_key(j) not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {args.out}", file=sys.stderr)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warm_caches(todo)
    run_pool(todo, one_run, args.jobs, args.out, done, job_key,
             lambda row: f"{row['options'] or ''} acc/test {row['metrics']['acc/test']:.3f} acc/val_cf "
                         f"{row['metrics'].get('selected/acc/val_cf', float('nan')):.3f}")
    frame = tidy([done[job_key(j)] for j in jobs])
    table = summarise(frame)
    parts = [f"{len(jobs)} runs: {', '.join(datasets)}; seeds {', '.join(map(str, seeds))}; {args.epochs} epochs; "
             f"defaults of RunConfig and of each method unless a setting is shown.", to_markdown(table),
             "### Does validation see the shortcut? (Spearman over each dataset's runs)", markdown_table(spearman(frame))]
    upper = frame[frame["method"] == "upper_bound"]
    if len(upper):
        spread = mean_std(upper, "dataset", ["acc"]).reset_index()
        spread["upper_bound acc/test"] = [f"{m:.3f} ± {s:.3f} ({100 * s:.1f} points)" for m, s in
                                          zip(spread["acc mean"], spread["acc std"].fillna(0))]
        parts += ["### Upper bound over seeds", markdown_table(spread[["dataset", "n", "upper_bound acc/test"]])]
    if args.grid:
        parts += ["### Validation-only choice (mean acc/val_cf over the datasets)", markdown_table(choices(frame))]
    report = "\n\n".join(parts) + "\n"
    print(report)
    if args.report:
        Path(args.report).write_text(report)
    if args.log_to:
        from focusml.analysis.compare import log_report, write_report  # MLflow only when asked for
        from focusml.tracking import setup

        setup()
        out = Path(args.report or args.out).with_suffix("")
        paths = write_report(table, out.parent / (out.name + "-report"))
        print(f"logged as comparison run {log_report(table, paths, args.log_to)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
