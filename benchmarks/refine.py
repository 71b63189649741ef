"""Refine the model you have: how many masks, how good, and refining a trained model vs retraining (issue 11).

Three studies; every run is a tracked focusml run (`focusml.tracking.run` without the per-epoch CAM
grid image: MLflow at `MLFLOW_TRACKING_URI`, else ./mlflow.db, experiment `--experiment`), one
single-threaded spawned worker per `--jobs`:

- `budget`: gap closed against the number of annotated training images (`--mask-budget`,
  `--budgets 10,30,100,300,all`): the curve (PNG) and a table;
- `corrupt`: gap closed with imperfect masks (`--mask-corruption`, `--corruptions
  partial:0.5,shifted:0.25,dilated:0.1`), next to the perfect masks;
- `retrain`: per method, fine-tuning the seed's trained baseline (`--init-from` its run) for
  `--refine-epochs` (default 5 = 25% of 20) against training from scratch for `--epochs`:
  accuracy, gap closed and time;
- `stages`: the model you have, refined (`focusml refine`): per dataset and seed, the trained
  baseline's head refit (`head_refit`, seconds), then full refinement (`--full-method`, default
  random_crop, for `--refine-epochs` at `--refine-lr`) from the refitted model, and what `auto` keeps
  (the full stage only when its `acc/val_cf` is higher), against the `--methods` trained from scratch:
  acc/test, gap closed, training and CPU seconds, the time each needs to reach 90% of the gap (on the
  clean validation split, epoch by epoch), and refinement's gap closed with `--budgets` annotated images;
- `all`: the first three.

The references (baseline, upper bound for each dataset and seed) and each method's from-scratch
run with every mask are shared by the studies, and every finished run is appended to `--out`
(JSON lines) and reused, so an interrupted study resumes and a later study reuses earlier runs.
Gap closed pairs each run with its seed's baseline and upper bound through
`focusml.analysis.summary.gap_closed`. `--report` writes the tables (Markdown), `--figure` the
budget curve, and `--log-to EXPERIMENT` logs both as a comparison run to MLflow.

Jobs run in the order: references, then setting by setting (in the order given), method by
method, dataset by dataset, seed by seed, so a partial run leaves complete cells.

Examples:
    MLFLOW_TRACKING_URI=sqlite:///refine.db python benchmarks/refine.py all --jobs 1 --report refine.md \\
        --figure budget.png --log-to refine-report                   # 9 methods × 2 datasets × 3 seeds
    python benchmarks/refine.py budget --methods pas,rrr --budgets 10,100,all --seeds 3
    python benchmarks/refine.py retrain --methods pas,random_crop --refine-epochs 5
    python benchmarks/refine.py stages --methods pas --datasets decoy-digits,symbols,xray-tokens,sketches,decoy-fashion \
        --seeds 3 --seeds-per-dataset decoy-fashion:1 --budgets all,10,30,100 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark (spawned workers import this file)
from matrix import run_pool, warm_caches  # noqa: E402

from focusml.analysis.summary import fmt_mean_std, gap_closed, markdown_table  # noqa: E402
from focusml.core.config import RunConfig  # noqa: E402
from focusml.core.data.masks import CORRUPTION_STRENGTH, parse_budget  # noqa: E402
from focusml.core.methods import METHODS  # noqa: E402
from focusml.core.run import load_data  # noqa: E402

STUDIES = ("budget", "corrupt", "retrain", "stages")
REFERENCES = ("baseline", "upper_bound")
THESIS = ("pas", "pasa", "random_crop", "generative", "selective_dropout")
PEERS = ("rrr", "rrr_gradcam", "counterexamples", "cdep")
KEY = ("dataset", "method", "seed", "epochs", "budget", "corruption", "strength", "init", "lr")
TRAIN_SIZE = {"decoy-fashion": 10000, "decoy-mnist": 10000}  # real data sets: the README's training size


def job(dataset, method, seed, epochs, budget=None, corruption="none", strength=None, init=None, device="auto",
        lr=None) -> dict:
    return {"dataset": dataset, "method": method, "seed": seed, "epochs": epochs, "budget": budget,
            "corruption": corruption, "strength": strength, "init": init, "device": device, "lr": lr}


def job_key(j: dict) -> str:
    return json.dumps({k: j.get(k) for k in KEY}, sort_keys=True)


def one_run(j: dict) -> dict:
    """One tracked run (single-threaded): the job, its run id, its test metrics and its wall time.

    It is `focusml.tracking.run` (same params, tags, lineage, metrics, figures and checkpoints) except
    that the per-epoch CAM grid image is not logged: on a CPU that image costs more than an epoch
    of the small CNN, and hundreds of runs pay it.
    """
    import torch

    from focusml.core.run import run as run_untracked
    from focusml.tracking import RunLogger, resolve_source, setup
    from focusml.tracking.log import log_metrics

    class MetricsPerEpoch(RunLogger):
        def on_epoch_end(self, epoch, metrics, model):
            log_metrics(metrics, step=epoch)

    torch.set_num_threads(1)
    config = RunConfig(method=j["method"], dataset=j["dataset"], seed=j["seed"], epochs=j["epochs"], device=j["device"],
                       log_model=False, experiment=j["experiment"], mask_budget=j["budget"],
                       mask_corruption=j["corruption"], corruption_strength=j["strength"],
                       train_size=TRAIN_SIZE.get(j["dataset"]), lr=j.get("lr") or RunConfig.lr,
                       init_from=j.get("init_from"), run_name=j.get("run_name")).validate()
    start, cpu = time.perf_counter(), time.process_time()
    setup()
    source = resolve_source(config.init_from) if config.init_from else None
    logger = MetricsPerEpoch(tags={"focusml.benchmark": "refine"}, lineage=source)
    result = run_untracked(config, logger, init=source.weights if source else None)
    history = [{k: h[k] for k in ("time/epoch_s", "time/cpu_s", "acc/val_clean", "acc/val_cf")
                if k in h} for h in result.history]
    return {**j, "run_id": result.run_id, "metrics": result.metrics, "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu, "history": history}


def parse_corruptions(text: str) -> list[tuple[str, float]]:
    out = []
    for item in filter(None, text.split(",")):
        kind, _, value = item.partition(":")
        if kind not in CORRUPTION_STRENGTH:
            raise SystemExit(f"--corruptions {item!r}: KIND[:STRENGTH] with KIND one of {', '.join(CORRUPTION_STRENGTH)}")
        out.append((kind, float(value) if value else CORRUPTION_STRENGTH[kind][0]))
    return out


def plan(args) -> tuple[list[dict], list[dict]]:
    """(references, the other jobs in running order) for the chosen studies."""
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS or m in REFERENCES]
    if unknown:
        raise SystemExit(f"--methods: {', '.join(unknown)} (choose among {', '.join(m for m in METHODS if m not in REFERENCES)})")
    seeds = [int(s) for s in args.seeds.split(",") if s] if "," in args.seeds else list(range(int(args.seeds)))
    studies = STUDIES[:3] if args.study == "all" else (args.study,)
    per = dict(item.split(":") for item in filter(None, args.seeds_per_dataset.split(",")))
    seeds_of = {d: seeds[: int(per[d])] if d in per else seeds for d in datasets}
    refs = [job(d, m, s, args.epochs, device=args.device) for m in REFERENCES for d in datasets for s in seeds_of[d]]
    settings: list[dict] = [{}]  # from scratch with every mask: in every study
    if "retrain" in studies:
        settings.append({"init": "baseline", "epochs": args.refine_epochs})
    if "budget" in studies:
        settings += [{"budget": b} for b in map(parse_budget, args.budgets.split(",")) if b is not None]
    if "corrupt" in studies:
        settings += [{"corruption": k, "strength": s} for k, s in parse_corruptions(args.corruptions)]
    jobs = [job(d, m, s, **{"epochs": args.epochs, **setting, "device": args.device})
            for setting in settings for m in methods for d in datasets for s in seeds_of[d]]
    if "stages" in studies:  # each budget: the head refit of the baseline, then the full stage from it
        full_budgets = {parse_budget(b) for b in (args.full_budgets or args.budgets).split(",")}
        for b in [parse_budget(b) for b in args.budgets.split(",")]:
            for stage in ("head", "full") if b in full_budgets else ("head",):
                jobs += [job(d, "head_refit", s, 1, budget=b, init="baseline", device=args.device) if stage == "head"
                         else job(d, args.full_method, s, args.refine_epochs, budget=b, init="head",
                                  device=args.device, lr=args.refine_lr) for d in datasets for s in seeds_of[d]]
    return refs, jobs


def execute(jobs: list[dict], done: dict, args) -> None:
    """Run the jobs not in `done` (appending each to --out as it finishes)."""
    todo = [j for j in jobs if job_key(j) not in done]
    if not todo:
        return
    baselines = {(r["dataset"], r["seed"]): r["run_id"] for r in done.values()
                 if r["method"] == "baseline" and r["init"] is None and r["budget"] is None and r["corruption"] == "none"}
    heads = {(r["dataset"], r["seed"], r["budget"]): r["run_id"] for r in done.values() if r["method"] == "head_refit"}
    for j in todo:
        j["experiment"] = args.experiment
        j["run_name"] = f"{j['method']}-{j['dataset']}-s{j['seed']}-{label(j).replace(' ', '')}"
        if j["init"] == "baseline":
            j["init_from"] = baselines[(j["dataset"], j["seed"])]
        elif j["init"] == "head":
            j["init_from"] = heads[(j["dataset"], j["seed"], j["budget"])]
    warm_caches([{**j, "train_size": TRAIN_SIZE.get(j["dataset"])} for j in todo
                 if j["budget"] is None and j["corruption"] == "none"])
    run_pool(todo, one_run, args.jobs, args.out, done, job_key,
             lambda row: f"{label(row)} acc/test {row['metrics']['acc/test']:.3f} ({row['wall_s']:.0f}s)")


# -- the tables -------------------------------------------------------------------------------------


def label(row: dict) -> str:
    if row["method"] == "head_refit":
        return "head refit" + (f" budget {row['budget']}" if row["budget"] is not None else "")
    if row["init"] == "head":
        return f"full {row['epochs']} ep" + (f" budget {row['budget']}" if row["budget"] is not None else "")
    if row["init"]:
        return f"refined {row['epochs']} ep"
    if row["budget"] is not None:
        return f"budget {row['budget']}"
    if row["corruption"] != "none":
        return f"{row['corruption']} {row['strength']:g}"
    return f"scratch {row['epochs']} ep"


def annotated_count(budget, total: int) -> int:
    """Annotated training images under a budget (as `data.masks.budget_rows` keeps them)."""
    if budget is None:
        return total
    return min(total, max(1, round(budget * total)) if isinstance(budget, float) else int(budget))


def tidy(rows: list[dict], annotated: dict[str, int]) -> pd.DataFrame:
    """One row per run with its gap closed, paired with the baseline and upper bound of its dataset and seed."""
    frame = pd.DataFrame([{
        "dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "epochs": r["epochs"], "init": bool(r["init"]),
        "budget": r["budget"], "corruption": r["corruption"], "strength": r["strength"], "label": label(r),
        "annotated": annotated_count(r["budget"], annotated[r["dataset"]]),
        "acc": r["metrics"]["acc/test"], "wr": r["metrics"].get("wr/test", np.nan),
        "train_s": r["metrics"]["time/epoch_s_mean"] * r["epochs"], "wall_s": r["wall_s"], "run_id": r["run_id"],
        "cpu_s": r.get("cpu_s", np.nan), "val_cf": r["metrics"].get("selected/acc/val_cf", np.nan),
        "val_clean": r["metrics"].get("selected/acc/val_clean", np.nan), "history": r.get("history", []),
        "stage": "head" if r["method"] == "head_refit" else "full" if r["init"] == "head" else "",
    } for r in rows])
    refs = frame[frame["method"].isin(REFERENCES)].pivot_table(index=["dataset", "seed"], columns="method", values="acc")
    idx = pd.MultiIndex.from_frame(frame[["dataset", "seed"]])
    frame["gap"] = gap_closed(frame["acc"], refs["baseline"].reindex(idx).to_numpy(),
                              refs["upper_bound"].reindex(idx).to_numpy())
    return frame


def pct(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    std = values.std() if len(values) > 1 else np.nan
    return fmt_mean_std(values.mean(), std, digits=0, scale=100, unit="%") + ("" if len(values) == 3 else f" ({len(values)})")


def references_table(frame: pd.DataFrame) -> str:
    refs = frame[frame["method"].isin(REFERENCES)]
    rows = [{"dataset": d, "method": m, "runs": str(len(g)), "acc/test": fmt_mean_std(g["acc"].mean(), g["acc"].std())}
            for (d, m), g in refs.groupby(["dataset", "method"], sort=False)]
    return markdown_table(rows)


def budget_table(frame: pd.DataFrame, dataset: str) -> str:
    g = frame[(frame["dataset"] == dataset) & ~frame["init"] & (frame["corruption"] == "none")
              & ~frame["method"].isin(REFERENCES)]
    columns = sorted(g["annotated"].unique())
    rows = []
    for method, m in g.groupby("method", sort=False):
        rows.append({"method": method, **{f"{n} images": pct(m[m["annotated"] == n]["gap"]) for n in columns}})
    return markdown_table(rows)


def corruption_table(frame: pd.DataFrame, dataset: str) -> str:
    g = frame[(frame["dataset"] == dataset) & ~frame["init"] & frame["budget"].isna() & ~frame["method"].isin(REFERENCES)]
    labels = ["scratch" if c == "none" else f"{c} {s:g}" for c, s in zip(g["corruption"], g["strength"])]
    g = g.assign(col=labels)
    order = ["scratch"] + [c for c in dict.fromkeys(labels) if c != "scratch"]
    rows = []
    for method, m in g.groupby("method", sort=False):
        rows.append({"method": method, **{("perfect masks" if c == "scratch" else c): pct(m[m["col"] == c]["gap"])
                                           for c in order}})
    return markdown_table(rows)


def retrain_table(frame: pd.DataFrame, dataset: str) -> str:
    g = frame[(frame["dataset"] == dataset) & frame["budget"].isna() & (frame["corruption"] == "none")]
    base = g[(g["method"] == "baseline") & ~g["init"]]
    rows = []
    for method, m in g[~g["method"].isin(REFERENCES)].groupby("method", sort=False):
        scratch, refined = m[~m["init"]], m[m["init"]]
        if refined.empty:
            continue
        rows.append({
            "method": method,
            "scratch: epochs": str(scratch["epochs"].max()) if len(scratch) else "",
            "scratch: acc/test": fmt_mean_std(scratch["acc"].mean(), scratch["acc"].std()),
            "scratch: gap closed": pct(scratch["gap"]),
            "scratch: train s": f"{scratch['train_s'].mean():.0f}" if len(scratch) else "",
            "refined: epochs": str(refined["epochs"].max()),
            "refined: acc/test": fmt_mean_std(refined["acc"].mean(), refined["acc"].std()),
            "refined: gap closed": pct(refined["gap"]),
            "refined: train s (+ baseline's)": f"{refined['train_s'].mean():.0f} (+{base['train_s'].mean():.0f})",
        })
    return markdown_table(rows)


def auto_choice(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, seed and budget, the stage `focusml refine --stages auto` keeps: the full stage only when its
    selected acc/val_cf is higher than the head refit's (validation only), with the time both stages took."""
    rows = []
    stages = frame[frame["stage"] != ""].assign(every=lambda f: f["budget"].fillna(-1))  # -1: every mask
    for _, g in stages.groupby(["dataset", "seed", "every"], sort=False):
        head, full = g[g["stage"] == "head"], g[g["stage"] == "full"]
        if head.empty:
            continue
        keep = full.iloc[0] if len(full) and full.iloc[0]["val_cf"] > head.iloc[0]["val_cf"] else head.iloc[0]
        both = g["train_s"].sum()
        rows.append({**keep.drop("every").to_dict(), "stage": "auto", "train_s": both, "cpu_s": g["cpu_s"].sum(),
                     "wall_s": g["wall_s"].sum(), "kept": keep["stage"]})
    return pd.DataFrame(rows)


def seconds_to_gap(row, refs: pd.DataFrame, share: float = 0.9, before: float = 0.0) -> float:
    """Training seconds until the gap closed on the clean validation split reaches `share` (NaN: never)."""
    base, upper = refs.loc[(row["dataset"], row["seed"])]
    elapsed = before
    for h in row["history"]:
        elapsed += h["time/epoch_s"]
        if (h.get("acc/val_clean", np.nan) - base) / (upper - base) >= share:
            return elapsed
    return np.nan


def stages_table(frame: pd.DataFrame, dataset: str) -> str:
    """From scratch vs head refit vs full refinement vs auto, every annotated image."""
    g = frame[(frame["dataset"] == dataset) & frame["budget"].isna() & (frame["corruption"] == "none")]
    refs = g[g["method"].isin(REFERENCES)].pivot_table(index=["dataset", "seed"], columns="method", values="val_clean")
    refs = refs[["baseline", "upper_bound"]]
    scratch = g[~g["init"] & ~g["method"].isin(REFERENCES)]
    head, full = g[g["stage"] == "head"], g[g["stage"] == "full"]
    auto = auto_choice(g)
    head_s = dict(zip(head["seed"], head["train_s"]))
    rows = []
    for name, part in [*((f"{m} from scratch", p) for m, p in scratch.groupby("method", sort=False)),
                       ("head refit", head), ("head refit + full", full), ("auto (kept by acc/val_cf)", auto)]:
        if part.empty:
            continue
        if name == "head refit + full":  # its time includes the head refit it starts from
            to90 = [seconds_to_gap(r, refs, before=head_s.get(r["seed"], 0.0)) for _, r in part.iterrows()]
            train = part["train_s"] + part["seed"].map(head_s)
        elif name.startswith("auto"):
            to90 = [np.nan] * len(part)
            train = part["train_s"]
        else:
            to90 = [seconds_to_gap(r, refs) for _, r in part.iterrows()]
            train = part["train_s"]
        reached = [t for t in to90 if np.isfinite(t)]
        rows.append({
            "model": name, "runs": str(len(part)),
            "acc/test": fmt_mean_std(part["acc"].mean(), part["acc"].std()), "gap closed": pct(part["gap"]),
            "train s": fmt_mean_std(train.mean(), train.std(), digits=1),
            "CPU s (whole run)": fmt_mean_std(part["cpu_s"].mean(), part["cpu_s"].std(), digits=1),
            "s to 90% of gap (val_clean)": "" if name.startswith("auto") else
            (f"{np.mean(reached):.1f}" + ("" if len(reached) == len(to90) else f" ({len(reached)}/{len(to90)} reach it)")
             if reached else "never"),
            "kept": ", ".join(f"{k} {n}" for k, n in part["kept"].value_counts().items()) if "kept" in part else "",
        })
    return markdown_table(rows)


def stages_budget_table(frame: pd.DataFrame) -> str:
    """Gap closed by the head refit and by auto refinement with N annotated training images, per dataset."""
    g = frame[frame["stage"] != ""]
    auto = auto_choice(g)
    rows = []
    for dataset in dict.fromkeys(g["dataset"]):
        for name, part in (("head refit", g[g["stage"] == "head"]), ("auto", auto)):
            part = part[part["dataset"] == dataset]
            every = part["budget"].isna()
            cols = sorted(part[~every]["annotated"].unique())
            rows.append({"dataset": dataset, "refinement": name,
                         **{f"{n} images": pct(part[~every & (part["annotated"] == n)]["gap"]) for n in cols},
                         "every mask": pct(part[every]["gap"])})
    return markdown_table(rows)


def budget_figure(frame: pd.DataFrame, path: Path) -> None:
    from focusml.core.figures import close, plt

    datasets = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        g = frame[(frame["dataset"] == dataset) & ~frame["init"] & (frame["corruption"] == "none")
                  & ~frame["method"].isin(REFERENCES)]
        for method, m in g.groupby("method", sort=False):
            stats = m.groupby("annotated")["gap"].agg(["mean", "std"]).sort_index()
            style = "-" if method in THESIS else "--"
            ax.errorbar(stats.index, 100 * stats["mean"], yerr=100 * stats["std"].fillna(0), fmt=f"o{style}", capsize=3,
                        label=method, alpha=0.85)
        ax.axhline(100, color="#55a868", linewidth=1, linestyle=":", label="upper bound")
        ax.axhline(0, color="#c44e52", linewidth=1, linestyle=":", label="baseline")
        ax.set_xscale("log")
        ax.set_xlabel("annotated training images (--mask-budget)")
        ax.set_ylabel("gap closed (%), mean ± std over seeds")
        ax.set_title(dataset)
        ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    close(fig)


def report(frame: pd.DataFrame, studies: tuple[str, ...], args) -> str:
    parts = [f"{len(frame)} tracked runs; datasets {', '.join(dict.fromkeys(frame['dataset']))}; "
             f"seeds {', '.join(map(str, sorted(frame['seed'].unique())))}; from scratch {args.epochs} epochs; "
             "gap closed = mean ± std over seeds of (acc − baseline) / (upper − baseline), acc = acc/test; "
             "(n) = seeds when fewer than 3.", "### References (acc/test)", references_table(frame)]
    for dataset in dict.fromkeys(frame["dataset"]):
        if "budget" in studies:
            parts += [f"### Gap closed vs annotated training images: {dataset}", budget_table(frame, dataset)]
        if "corrupt" in studies:
            parts += [f"### Gap closed with imperfect masks: {dataset}", corruption_table(frame, dataset)]
        if "retrain" in studies:
            parts += [f"### Refine the trained baseline vs train from scratch: {dataset}", retrain_table(frame, dataset)]
        if "stages" in studies:
            parts += [f"### Head refit and full refinement vs from scratch: {dataset}", stages_table(frame, dataset)]
    if "stages" in studies:
        parts += ["### Refinement with N annotated training images (gap closed)", stages_budget_table(frame)]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", choices=(*STUDIES, "all"))
    ap.add_argument("--datasets", default="decoy-digits,symbols")
    ap.add_argument("--methods", default=",".join(THESIS + PEERS))
    ap.add_argument("--seeds", default="3", help="number of seeds (0..N−1) or a comma list")
    ap.add_argument("--epochs", type=int, default=RunConfig().epochs, help="from-scratch epochs (default 20)")
    ap.add_argument("--refine-epochs", type=int, default=5, help="epochs of refining the baseline (default 5)")
    ap.add_argument("--refine-lr", type=float, default=3e-4, help="stages: the full stage's learning rate")
    ap.add_argument("--full-method", default="random_crop", help="stages: the full stage's method")
    ap.add_argument("--full-budgets", default=None, help="stages: the budgets the full stage runs at (default --budgets)")
    ap.add_argument("--seeds-per-dataset", default="", help="DATASET:N,... fewer seeds for a (large) dataset")
    ap.add_argument("--budgets", default="all,10,100,30,300", help="annotated training images (all = every mask)")
    ap.add_argument("--corruptions", default="partial:0.5,shifted:0.25,dilated:0.1", help="KIND[:STRENGTH],...")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="single-threaded worker processes")
    ap.add_argument("--experiment", default="refine", help="MLflow experiment of the runs")
    ap.add_argument("--out", default="refine.jsonl", help="JSON lines of finished runs, reused on the next call")
    ap.add_argument("--report", default=None, help="write the Markdown tables here")
    ap.add_argument("--figure", default=None, help="write the budget curve (PNG) here")
    ap.add_argument("--log-to", default=None, metavar="EXPERIMENT", help="log tables and figure as a comparison run")
    ap.add_argument("--dry-run", action="store_true", help="only list the jobs still to run")
    ap.add_argument("--no-run", action="store_true", help="report from the finished runs in --out; run nothing")
    args = ap.parse_args(argv)
    if args.refine_epochs > args.epochs:
        raise SystemExit("--refine-epochs must not exceed --epochs")

    refs, jobs = plan(args)
    done = {}
    if Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            row = json.loads(line)
            done[job_key(row)] = row
    todo = [j for j in refs + jobs if job_key(j) not in done]
    print(f"{len(refs) + len(jobs)} runs, {len(refs) + len(jobs) - len(todo)} already in {args.out}", file=sys.stderr)
    if args.dry_run:
        for j in todo:
            print(f"{j['dataset']:<13} {j['method']:<17} s{j['seed']} {label(j)}")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.no_run:
        execute(refs, done, args)  # the refined runs start from these baselines
        heads, fulls = ([j for j in jobs if j["method"] == "head_refit"], [j for j in jobs if j["init"] == "head"])
        execute(heads, done, args)
        execute(fulls, done, args)  # full refinement starts from the head refit
        execute([j for j in jobs if j not in heads and j not in fulls], done, args)

    studies = STUDIES[:3] if args.study == "all" else (args.study,)
    annotated = {d: int((load_data(RunConfig(dataset=d, train_size=TRAIN_SIZE.get(d))).split("train").masks
                         .flatten(1).amax(1) > 0).sum()) for d in args.datasets.split(",") if d}
    frame = tidy([done[job_key(j)] for j in refs + jobs if job_key(j) in done], annotated)
    text = report(frame, studies, args)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    figure = Path(args.figure) if args.figure else None
    if "budget" in studies and figure is None and args.log_to:
        figure = Path(args.out).with_suffix(".png")
    if figure is not None and "budget" in studies:
        budget_figure(frame, figure)
    if args.log_to:
        log(frame, text, figure, args)
    return 0


def log(frame: pd.DataFrame, text: str, figure: Path | None, args) -> None:
    """The tables, the per-run CSV and the budget curve as artifacts of a comparison run."""
    import tempfile

    from focusml import tracking
    from focusml.analysis.summary import COMPARISON_TAG

    tracking.setup()
    with tempfile.TemporaryDirectory() as tmp:
        md, csv = Path(tmp) / "refine.md", Path(tmp) / "refine-runs.csv"
        md.write_text(text)
        frame.to_csv(csv, index=False)
        tags = {COMPARISON_TAG: "true", "focusml.kind": "comparison", "focusml.benchmark": "refine"}
        with tracking.start_run(args.log_to, f"refine-{args.study}", tags=tags) as active:
            tracking.log_params({"study": args.study, "runs": len(frame), "datasets": args.datasets,
                                 "epochs": args.epochs, "refine_epochs": args.refine_epochs})
            for path in (md, csv, figure):
                if path is not None:
                    tracking.log_artifact(path, artifact_path="comparison")
            print(f"logged as comparison run {active.info.run_id} in experiment {args.log_to}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
