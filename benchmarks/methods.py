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
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

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
    from dataclasses import fields

    from focusml.config import MaskAugment

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
    """Train one (method, seed) with tracking disabled; return the numbers the table needs."""
    import torch

    torch.set_num_threads(1)
    from focusml.config import RunConfig
    from focusml.experiment import run

    from focusml.config import MaskAugment

    method, seed, epochs, dataset, device, params, augment = job
    config = RunConfig(method=method, dataset=dataset, seed=seed, epochs=epochs, device=device,
                       log_model=False, method_params=dict(params), augment=MaskAugment(**dict(augment)))
    start = time.perf_counter()
    result = run(config, tracking_enabled=False)
    times = [h["time/epoch_s"] for h in result.history]
    return {"method": method, "seed": seed, "acc": result.metrics["acc/test"], "wr": result.metrics["wr/test"],
            "acc_confounded": result.metrics.get("acc/test_confounded", float("nan")),
            "epoch_s": statistics.median(times), "wall_s": time.perf_counter() - start}


def warm_caches(methods: list[str], dataset: str, device: str) -> None:
    """Train what `prepare` would train once (the generative inpainter) before workers start."""
    if "generative" not in methods:
        return
    import torch

    from focusml import inpainter
    from focusml.config import RunConfig
    from focusml.experiment import cache_dir, load_data
    from focusml.methods.generative import Generative

    data = load_data(RunConfig(dataset=dataset))
    inpainter.load_or_train(data, Generative.train_split, cache_dir(), torch.device("cpu" if device == "auto" else device),
                            Generative.settings)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: list[dict], methods: list[str], families: dict[str, str]) -> list[dict]:
    by = {(r["method"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    rows = []
    for m in methods:
        runs = [by[(m, s)] for s in seeds if (m, s) in by]
        if not runs:
            continue
        gaps, ratios = [], []
        for r in runs:
            base, upper = by.get(("baseline", r["seed"])), by.get(("upper_bound", r["seed"]))
            if base and upper and upper["acc"] != base["acc"]:
                gaps.append((r["acc"] - base["acc"]) / (upper["acc"] - base["acc"]))
            if base:
                ratios.append(r["epoch_s"] / base["epoch_s"])
        acc_m, acc_s = mean_std([r["acc"] for r in runs])
        gap = mean_std(gaps) if gaps else (float("nan"), float("nan"))
        rows.append({"method": m, "family": families[m], "acc": (acc_m, acc_s),
                     "acc_confounded": statistics.fmean(r["acc_confounded"] for r in runs),
                     "wr": statistics.fmean(r["wr"] for r in runs), "gap": gap,
                     "time": statistics.fmean(ratios) if ratios else float("nan"),
                     "epoch_s": statistics.fmean(r["epoch_s"] for r in runs), "n": len(runs)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| method | family | acc/test (mean ± std) | acc/test_confounded | wr/test | gap closed (mean ± std) "
             "| s/epoch ÷ baseline |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = "—" if r["method"] in REFERENCES else f"{100 * r['gap'][0]:.0f}% ± {100 * r['gap'][1]:.0f}%"
        lines.append(f"| {r['method']} | {r['family']} | {r['acc'][0]:.3f} ± {r['acc'][1]:.3f} | "
                     f"{r['acc_confounded']:.3f} | {r['wr']:.1f} | {gap} | {r['time']:.2f}× |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        want = TARGETS.get(r["family"]) if r["method"] in ("pas", "pasa") or r["family"] == "replacement" else None
        if want is not None:
            ok = r["gap"][0] >= want
            out.append(f"{r['method']}: gap closed {100 * r['gap'][0]:.0f}% (target ≥ {100 * want:.0f}%) "
                       f"{'met' if ok else 'MISSED'}")
        if r["method"] in TIME_TARGET:
            ok = r["time"] <= TIME_TARGET[r["method"]]
            out.append(f"{r['method']}: {r['time']:.2f}× baseline time per epoch (target ≤ "
                       f"{TIME_TARGET[r['method']]}×) {'met' if ok else 'MISSED'}")
    return out


def init_scale(dataset: str, n: int = 256, seeds: int = 5) -> str:
    """λ=1 penalty of every λ-method at initialisation next to CE, on `n` training images."""
    import torch
    import torch.nn.functional as F

    from focusml.config import RunConfig
    from focusml.experiment import load_data
    from focusml.methods import METHODS, Batch
    from focusml.models import build_model

    data = load_data(RunConfig(dataset=dataset))
    x, m, y = data.split("train").batch(torch.arange(min(n, len(data.split("train")))))
    lines = ["| method | λ=1 penalty at init (mean over seeds) | CE at init |", "|---|---|---|"]
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
        lines.append(f"| {name} | {statistics.fmean(pens):.3f} (range {min(pens):.3f}–{max(pens):.3f}) | "
                     f"{statistics.fmean(ces):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from focusml.config import RunConfig
    from focusml.methods import METHODS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="3", help="number of seeds (0..N−1) or a comma list (default 3)")
    ap.add_argument("--epochs", type=int, default=RunConfig().epochs, help="epochs per run (default: RunConfig's)")
    ap.add_argument("--methods", default="", help="comma list (default: every registered method)")
    ap.add_argument("--dataset", default="decoy-digits")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
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
        import multiprocessing as mp

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
    rows = summarise(results, methods, {m: METHODS[m].family for m in methods})
    options = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in METHODS[m]({k: v for k, v in sets.get(m, {}).items()}).options.items())
                        for m in methods if METHODS[m].params)
    header = (f"{args.dataset}, {len(seeds)} seeds ({', '.join(map(str, seeds))}), {args.epochs} epochs, "
              f"lr {RunConfig().lr}, batch {RunConfig().batch_size}, device {args.device}, jobs {args.jobs}; "
              f"{time.perf_counter() - start:.0f} s in all\n\noptions: {options}\n"
              f"mask augmentation: {', '.join(f'{k}={v}' for k, v in augment.items()) or 'none (defaults)'}\n")
    table = markdown(rows)
    text = header + "\n" + table + "\n\n" + "\n".join(f"- {v}" for v in verdicts(rows)) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
