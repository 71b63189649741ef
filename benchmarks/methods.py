"""Benchmark every registered method on one dataset: quality and cost against the references.

Trains each method of `focusml.methods.METHODS` (baseline and upper bound always included, so a
peer method added as a new module is picked up automatically) with several seeds, tracking
disabled, and prints one Markdown table:

    method | family | acc/test mean ± std | wr/test mean | gap closed | s/epoch ÷ baseline

`gap closed` is the mean over seeds of (acc − acc_baseline) / (acc_upper − acc_baseline), each
seed paired with the baseline and upper bound of the same seed. The time ratio is, per seed, the
median training time per epoch (validation excluded) divided by the baseline's of the same seed,
then averaged over seeds. Methods run interleaved (seed by seed) so that load on the machine hits
all of them alike; `--jobs N` runs N single-threaded worker processes (use at most the number of
free cores, or timings stop meaning anything).

Examples:
    python benchmarks/methods.py                                  # all methods, 3 seeds, defaults
    python benchmarks/methods.py --methods pas,pasa --seeds 2 --epochs 10 --out table.md
    python benchmarks/methods.py --methods pas --set pas.lam=0.3  # a non-default option
    python benchmarks/methods.py --init-scale                     # λ=1 penalty vs CE at init
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from focusml.analysis.summary import fmt_mean_std, gap_closed, markdown_table, mean_std
from focusml.cache import cache_dir
from focusml.config import MaskAugment, RunConfig
from focusml.methods import METHODS, Batch
from focusml.methods.generative import Generative, inpainter
from focusml.models import build_model
from focusml.run import load_data, run
from focusml.train import resolve_device

REFERENCES = ("baseline", "upper_bound")
TARGETS = {"loss": 0.9, "replacement": 0.5}  # gap closed, per family (issue 3)
TIME_TARGET = {"pas": 1.2, "pasa": 1.2}


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: write it as METHOD.PARAM=VALUE, e.g. pas.lam=0.3")
        out.setdefault(method, {})[param] = value
    return out


def parse_augment(items: list[str]) -> dict:
    kinds = {f.name: type(f.default) for f in fields(MaskAugment)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in kinds:
            raise SystemExit(f"--augment {item!r}: write KEY=VALUE with KEY one of {', '.join(kinds)}")
        out[key] = kinds[key](value)
    MaskAugment(**out).validate()
    return out


def one_run(job: tuple) -> dict:
    """Train one (method, seed) with the core run (no tracking); return the numbers the table needs."""
    torch.set_num_threads(1)
    method, seed, epochs, dataset, device, params, augment = job
    config = RunConfig(method=method, dataset=dataset, seed=seed, epochs=epochs, device=device,
                       log_model=False, method_params=dict(params), augment=MaskAugment(**dict(augment)))
    start = time.perf_counter()
    result = run(config)
    times = [h["time/epoch_s"] for h in result.history]
    return {"method": method, "seed": seed, "acc": result.metrics["acc/test"], "wr": result.metrics["wr/test"],
            "acc_confounded": result.metrics.get("acc/test_confounded", float("nan")),
            "epoch_s": statistics.median(times), "wall_s": time.perf_counter() - start}


def warm_caches(methods: list[str], dataset: str, device: str) -> None:
    """Train what `prepare` would train once (the generative inpainter) before workers start."""
    if "generative" not in methods:
        return
    data = load_data(RunConfig(dataset=dataset))
    inpainter.load_or_train(data, Generative.train_split, cache_dir(), resolve_device(device), Generative.settings)


def summarise(results: list[dict], methods: list[str], families: dict[str, str]) -> pd.DataFrame:
    """One row per method: acc/test and gap closed as mean ± std over seeds, each seed paired with its
    own baseline and upper bound (`focusml.analysis.summary.gap_closed`), and time per epoch ÷ baseline."""
    runs = pd.DataFrame(results)
    ref = {m: runs[runs["method"] == m].set_index("seed") for m in REFERENCES}
    runs["gap"] = gap_closed(runs["acc"], runs["seed"].map(ref["baseline"]["acc"]),
                             runs["seed"].map(ref["upper_bound"]["acc"]))
    runs["time"] = runs["epoch_s"] / runs["seed"].map(ref["baseline"]["epoch_s"])
    stats = mean_std(runs, "method", ["acc", "gap"]).fillna({"acc std": 0.0, "gap std": 0.0})
    means = runs.groupby("method", sort=False).agg(acc_confounded=("acc_confounded", "mean"), wr=("wr", "mean"),
                                                   time=("time", "mean"), epoch_s=("epoch_s", "mean"))
    table = stats.join(means).reindex([m for m in methods if m in set(runs["method"])])
    table.insert(0, "family", [families[m] for m in table.index])
    return table


def markdown(table: pd.DataFrame) -> str:
    cells = pd.DataFrame({
        "method": table.index,
        "family": table["family"],
        "acc/test (mean ± std)": [fmt_mean_std(m, s) for m, s in zip(table["acc mean"], table["acc std"])],
        "acc/test_confounded": table["acc_confounded"].map("{:.3f}".format),
        "wr/test": table["wr"].map("{:.1f}".format),
        "gap closed (mean ± std)": ["—" if m in REFERENCES else fmt_mean_std(g, s, digits=0, scale=100, unit="%")
                                    for m, g, s in zip(table.index, table["gap mean"], table["gap std"])],
        "s/epoch ÷ baseline": table["time"].map("{:.2f}×".format),
    })
    return markdown_table(cells)


def verdicts(table: pd.DataFrame) -> list[str]:
    out = []
    for method, r in table.iterrows():
        want = TARGETS.get(r["family"]) if method in ("pas", "pasa") or r["family"] == "replacement" else None
        if want is not None:
            ok = r["gap mean"] >= want
            out.append(f"{method}: gap closed {100 * r['gap mean']:.0f}% (target ≥ {100 * want:.0f}%) "
                       f"{'met' if ok else 'MISSED'}")
        if method in TIME_TARGET:
            ok = r["time"] <= TIME_TARGET[method]
            out.append(f"{method}: {r['time']:.2f}× baseline time per epoch (target ≤ "
                       f"{TIME_TARGET[method]}×) {'met' if ok else 'MISSED'}")
    return out


def init_scale(dataset: str, n: int = 256, seeds: int = 5) -> str:
    """λ=1 penalty of every λ-method at initialisation next to CE, on `n` training images."""
    data = load_data(RunConfig(dataset=dataset))
    x, m, y = data.split("train").batch(torch.arange(min(n, len(data.split("train")))))
    rows = []
    for name, cls in METHODS.items():
        if "lam" not in {p.name for p in cls.params}:
            continue
        method = cls({"lam": 1.0})
        pens, ces = [], []
        for seed in range(seeds):
            torch.manual_seed(seed)
            c, h, w = data.image_shape
            model = build_model("small", c, data.num_classes, max(h, w))
            xin = x.clone().requires_grad_(cls.needs_input_grad)
            feats, logits = model.forward_features(xin)
            pen = method.penalty(model, Batch(xin, m, y, torch.arange(len(y))), feats, logits)
            pens.append(float(pen.detach()) if pen is not None else 0.0)
            ces.append(float(F.cross_entropy(logits, y).detach()))
        rows.append({"method": name,
                     "λ=1 penalty at init (mean over seeds)": f"{statistics.fmean(pens):.3f} "
                                                              f"(range {min(pens):.3f}–{max(pens):.3f})",
                     "CE at init": f"{statistics.fmean(ces):.3f}"})
    return markdown_table(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="3", help="number of seeds (0..N−1) or a comma list (default 3)")
    ap.add_argument("--epochs", type=int, default=RunConfig().epochs, help="epochs per run (default: RunConfig's)")
    ap.add_argument("--methods", default="", help="comma list (default: every registered method)")
    ap.add_argument("--dataset", default="decoy-digits")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto (cuda when available)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel single-threaded worker processes (default 1)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                    help="override a method option, e.g. pas.lam=0.3 (repeatable)")
    ap.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                    help="mask augmentation for the mask-based methods, e.g. dilate=4 (repeatable)")
    ap.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--init-scale", action="store_true", help="only print λ=1 penalty vs CE at initialisation")
    args = ap.parse_args(argv)

    if args.init_scale:
        print(init_scale(args.dataset))
        return 0
    seeds = list(range(int(args.seeds))) if "," not in args.seeds else [int(s) for s in args.seeds.split(",")]
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()] or list(METHODS)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    methods = list(REFERENCES) + [m for m in chosen if m not in REFERENCES]
    sets = parse_sets(args.set)
    augment = parse_augment(args.augment)
    jobs = [(m, s, args.epochs, args.dataset, args.device, tuple(sets.get(m, {}).items()),
             tuple(augment.items()) if METHODS[m].uses_masks else ()) for s in seeds for m in methods]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warm_caches(methods, args.dataset, args.device)
    start = time.perf_counter()
    results = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            for r in pool.map(one_run, jobs):
                results.append(r)
                print(f"  {r['method']:<18} seed {r['seed']}: acc/test {r['acc']:.3f}  {r['epoch_s']:.2f} s/epoch",
                      file=sys.stderr, flush=True)
    else:
        for job in jobs:
            r = one_run(job)
            results.append(r)
            print(f"  {r['method']:<18} seed {r['seed']}: acc/test {r['acc']:.3f}  {r['epoch_s']:.2f} s/epoch",
                  file=sys.stderr, flush=True)
    summary = summarise(results, methods, {m: METHODS[m].family for m in methods})
    options = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in METHODS[m]({k: v for k, v in sets.get(m, {}).items()}).options.items())
                        for m in methods if METHODS[m].params)
    header = (f"{args.dataset}, {len(seeds)} seeds ({', '.join(map(str, seeds))}), {args.epochs} epochs, "
              f"lr {RunConfig().lr}, batch {RunConfig().batch_size}, device {args.device}, jobs {args.jobs}; "
              f"{time.perf_counter() - start:.0f} s in all\n\noptions: {options}\n"
              f"mask augmentation: {', '.join(f'{k}={v}' for k, v in augment.items()) or 'none (defaults)'}\n")
    table = markdown(summary)
    text = header + "\n" + table + "\n\n" + "\n".join(f"- {v}" for v in verdicts(summary)) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
