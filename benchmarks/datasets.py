"""Measure the shortcut of every built-in dataset: baseline, upper bound and `pas` at its default λ.

For each dataset and seed, trains `baseline`, `upper_bound` and `pas` with the RunConfig
defaults (20 epochs, lr 3e-3, batch 32, small CNN, device auto), tracking disabled, and prints a
Markdown table of acc/test, acc/test_clean, wr/test and cam_in_mask/test (mean ± std over seeds)
plus the shortcut gap (upper − baseline acc/test). With `--cam-dir`, writes the final test CAM
grid of each method's first seed there (`DATASET-METHOD.png`).

A run here is `focusml.experiment.run(RunConfig(...), tracking_enabled=False)` without
importing MLflow (so it also runs on a machine that has only PyTorch): validate → load →
build → prepare → fit → test metrics.

`--set MODULE.NAME=JSON` overrides a generator constant before loading, for tuning, e.g.
`--set xray_tokens.FOLLOW=0.97 --set sketches.SKETCH_INK=[120,180]`.

Examples:
    python benchmarks/datasets.py                               # 4 datasets × 3 methods × 3 seeds
    python benchmarks/datasets.py --datasets symbols --methods baseline,upper_bound --jobs 2
    python benchmarks/datasets.py --cam-dir docs/images --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DATASETS = ("decoy-digits", "symbols", "xray-tokens", "sketches")
METHODS = ("baseline", "upper_bound", "pas")


def apply_overrides(overrides: dict[str, object]) -> None:
    import importlib

    for key, value in overrides.items():
        module, _, name = key.partition(".")
        mod = importlib.import_module(f"focusml.data.{module}")
        if not hasattr(mod, name):
            raise SystemExit(f"--set {key}: focusml.data.{module} has no {name}")
        setattr(mod, name, tuple(value) if isinstance(value, list) else value)


def one_run(job: dict) -> dict:
    """Train and evaluate one (dataset, method, seed); returns its metrics (and CAM grid path)."""
    import torch

    torch.set_num_threads(1)
    apply_overrides(job["overrides"])
    from focusml import methods
    from focusml.config import RunConfig
    from focusml.data import DataOptions, Split, load
    from focusml.evaluate import predict, test_metrics
    from focusml.methods import PrepareContext
    from focusml.models import build_model
    from focusml.train import fit, resolve_device

    start = time.perf_counter()
    config = RunConfig(method=job["method"], dataset=job["dataset"], seed=job["seed"], epochs=job["epochs"],
                       device=job["device"], log_model=False).validate()
    method_cls = methods.get(config.method)
    data = load(config.dataset, DataOptions(seed=config.data_seed))
    method = method_cls(config.method_params)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    c, h, w = data.image_shape
    model = build_model(config.model, c, data.num_classes, max(h, w)).to(device)
    cache = Path(os.environ.get("FOCUSML_CACHE", Path.home() / ".cache" / "focusml"))
    method.prepare(PrepareContext(data=data, config=config, model=model, cache_dir=cache, device=device,
                                  log_artifact=lambda path, artifact_path: None, progress=lambda *a: None))
    fitted = fit(model, data, method, config, device)
    metrics, _, _ = test_metrics(model, data, device)
    out = {**{k: job[k] for k in ("dataset", "method", "seed")}, **metrics,
           "acc/val_last": fitted.history[-1]["acc/val"], "seconds": time.perf_counter() - start,
           "device": str(device), "fingerprint": data.fingerprint}
    if job.get("cam_dir"):
        from focusml.figures import cam_grid, close, sample_indices

        test = data.split("test")
        idx = sample_indices(test.labels, data.num_classes, per_class=5)
        sub = Split(test.images[idx], test.masks[idx], test.labels[idx])
        p = predict(model, sub, device)
        fig = cam_grid(sub.images, sub.masks, p.pos_cams, p.labels, p.preds, data.classes, cols=10,
                       title=f"{config.method} on {config.dataset}, seed {config.seed} (test: shortcut broken)")
        path = Path(job["cam_dir"]) / f"{config.dataset}-{config.method}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        close(fig)
        out["cam_grid"] = str(path)
    return out


def summarise(rows: list[dict]) -> str:
    def ms(values):
        values = [v for v in values if v == v]
        if not values:
            return "—"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    lines = ["| dataset | method | acc/test | acc/test_clean | wr/test | cam_in_mask/test | seeds |",
             "|---|---|---|---|---|---|---|"]
    gaps = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        by = {m: [r for r in rows if r["dataset"] == ds and r["method"] == m] for m in METHODS}
        for m, rs in by.items():
            if rs:
                lines.append(f"| {ds} | {m} | {ms([r['acc/test'] for r in rs])} | "
                             f"{ms([r['acc/test_clean'] for r in rs])} | {ms([r['wr/test'] for r in rs])} | "
                             f"{ms([r['cam_in_mask/test'] for r in rs])} | {len(rs)} |")
        if by["baseline"] and by["upper_bound"]:
            base = statistics.mean(r["acc/test"] for r in by["baseline"])
            up = statistics.mean(r["acc/test"] for r in by["upper_bound"])
            gaps.append(f"{ds}: upper − baseline acc/test = {100 * (up - base):.1f} points")
    return "\n".join(lines + [""] + gaps)


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
