"""Measure the shortcut of every built-in dataset: baseline, upper bound and `pas` at its default λ.

For each dataset and seed, trains `baseline`, `upper_bound` and `pas` with the RunConfig
defaults (20 epochs, lr 3e-3, batch 32, small CNN, device auto), tracking disabled, and prints a
Markdown table of acc/test, acc/test_clean, wr/test and cam_in_mask/test (mean ± std over seeds)
plus the shortcut gap (upper − baseline acc/test). With `--cam-dir`, writes the final test CAM
grid of each method's first seed there (`DATASET-METHOD.png`).

A run here is the core `focusml.run.run(RunConfig(...))`, which imports no MLflow (so this also
runs on a machine that has only PyTorch): validate → load → build → prepare → fit → test metrics.

`--set MODULE.NAME=JSON` overrides a generator constant before loading, for tuning, e.g.
`--set xray_tokens.FOLLOW=0.97 --set sketches.SKETCH_INK=[120,180]`.

Examples:
    python benchmarks/datasets.py                               # 4 datasets × 3 methods × 3 seeds
    python benchmarks/datasets.py --datasets symbols --methods baseline,upper_bound --jobs 2
    python benchmarks/datasets.py --cam-dir docs/images --out results.jsonl
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from focusml.analysis.summary import fmt_mean_std, markdown_table, mean_std
from focusml.callbacks import Callbacks
from focusml.config import RunConfig
from focusml.figures import close, sample_indices, split_cam_grid
from focusml.run import run

DATASETS = ("decoy-digits", "symbols", "xray-tokens", "sketches")
METHODS = ("baseline", "upper_bound", "pas")


def apply_overrides(overrides: dict[str, object]) -> None:
    for key, value in overrides.items():
        module, _, name = key.partition(".")
        mod = importlib.import_module(f"focusml.data.{module}")
        if not hasattr(mod, name):
            raise SystemExit(f"--set {key}: focusml.data.{module} has no {name}")
        setattr(mod, name, tuple(value) if isinstance(value, list) else value)


class _KeepContext(Callbacks):
    """Keeps the run's context (its data and device) for what this script reports after the run."""

    ctx = None

    def on_run_end(self, ctx, result):
        self.ctx = ctx


def one_run(job: dict) -> dict:
    """Train and evaluate one (dataset, method, seed); returns its metrics (and CAM grid path)."""
    torch.set_num_threads(1)
    apply_overrides(job["overrides"])
    start = time.perf_counter()
    config = RunConfig(method=job["method"], dataset=job["dataset"], seed=job["seed"], epochs=job["epochs"],
                       device=job["device"], log_model=False)
    keep = _KeepContext()
    result = run(config, keep)
    data, device = keep.ctx.data, keep.ctx.device
    out = {**{k: job[k] for k in ("dataset", "method", "seed")}, **result.metrics,
           "acc/val_last": result.history[-1]["acc/val"], "seconds": time.perf_counter() - start,
           "device": str(device), "fingerprint": data.fingerprint}
    if job.get("cam_dir"):
        test = data.split("test")
        idx = sample_indices(test.labels, data.num_classes, per_class=5)
        fig = split_cam_grid(result.model, data, "test", idx, device, cols=10,
                             title=f"{config.method} on {config.dataset}, seed {config.seed} (test: shortcut broken)")
        path = Path(job["cam_dir"]) / f"{config.dataset}-{config.method}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        close(fig)
        out["cam_grid"] = str(path)
    return out


METRICS = ["acc/test", "acc/test_clean", "wr/test", "cam_in_mask/test"]


def summarise(rows: list[dict]) -> str:
    """Mean ± std over seeds per dataset and method, then the shortcut gap (upper − baseline acc/test)."""
    runs = pd.DataFrame(rows)
    runs["method"] = pd.Categorical(runs["method"], [m for m in METHODS if m in set(runs["method"])]
                                    + sorted(set(runs["method"]) - set(METHODS)))
    runs["dataset"] = pd.Categorical(runs["dataset"], list(dict.fromkeys(runs["dataset"])))
    runs = runs.sort_values(["dataset", "method"], kind="stable")
    stats = mean_std(runs, ["dataset", "method"], METRICS).fillna({f"{m} std": 0.0 for m in METRICS})
    stats = stats[stats["n"] > 0]
    cells = pd.DataFrame({"dataset": stats.index.get_level_values(0).astype(str),
                          "method": stats.index.get_level_values(1).astype(str)})
    for m in METRICS:
        cells[m] = [fmt_mean_std(a, b) or "—" for a, b in zip(stats[f"{m} mean"], stats[f"{m} std"])]
    cells["seeds"] = stats["n"].astype(str).to_numpy()
    gaps = []
    acc = stats["acc/test mean"]
    for ds in runs["dataset"].cat.categories:
        if (ds, "baseline") in acc.index and (ds, "upper_bound") in acc.index:
            gaps.append(f"{ds}: upper − baseline acc/test = {100 * (acc[ds, 'upper_bound'] - acc[ds, 'baseline']):.1f} points")
    return "\n".join([markdown_table(cells), "", *gaps])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    ap.add_argument("--cam-dir", default=None, help="write the seed-0 test CAM grid of each run here")
    ap.add_argument("--out", default=None, help="also write one JSON line per run to this file")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="MODULE.NAME=JSON")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: write MODULE.NAME=JSON")
        overrides[key] = json.loads(value)
    jobs = [{"dataset": ds, "method": m, "seed": s, "epochs": args.epochs, "device": args.device,
             "overrides": overrides, "cam_dir": args.cam_dir if s == 0 else None}
            for s in range(args.seeds) for ds in args.datasets.split(",") for m in args.methods.split(",")]
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(one_run, jobs):
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                  file=sys.stderr, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(summarise(rows))


if __name__ == "__main__":
    main()
