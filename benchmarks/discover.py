"""Masks without drawing (issue 23): discover → a simulated user's yes/no answers → `focusml refine`.

For each dataset and seed, from the trained baseline of `benchmarks/refine.py`'s runs (`--refs`, its
JSON lines: the baseline, the upper bound and the refinement with the dataset's true masks, i.e.
hand-drawn ones, are read from there):

1. `focusml.tracking.discover` on the baseline: a tracked `discover` run with the proposals, their
   figures and the proposals file (into `--proposals-dir`);
2. a simulated user (`focusml.core.discover.simulated_answer`, who sees the true masks) answers the
   proposals in rank order, at most `--answers` of them;
3. the accepted proposals' member masks (`masks_from`) replace the dataset's masks in `train` and `val`
   (no true mask is left there, so every choice, the head refit's L2 and `auto`'s stage, is made on
   validation with discovered masks; `test` keeps its true masks for `acc/test_cf` only);
4. `focusml.tracking.refine` of the baseline on that data (head refit, then the full stage; `auto` keeps
   the full stage when its `acc/val_cf` is higher), tracked like `focusml refine`.

Reported per dataset (mean ± std over seeds): answers given, proposals accepted, annotated training
images, the produced masks' IoU with the true masks, and gap closed by the head refit and by `auto`,
next to the same refinement with the true masks. Every finished (dataset, seed) is appended to
`--out` and reused, so an interrupted benchmark resumes.

    MLFLOW_TRACKING_URI=sqlite:///discover.db python benchmarks/refine.py stages --methods "" \\
        --datasets decoy-digits,symbols,xray-tokens,sketches,decoy-fashion --seeds 3 --budgets all \\
        --full-budgets all --experiment discover --out refs.jsonl
    MLFLOW_TRACKING_URI=sqlite:///discover.db python benchmarks/discover.py --refs refs.jsonl \\
        --datasets decoy-digits,symbols,xray-tokens,sketches,decoy-fashion --seeds 0,1,2 --report discover.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd

from focusml.analysis.summary import fmt_mean_std, markdown_table

TRAIN_SIZE = {"decoy-fashion": 10000}  # as benchmarks/refine.py trains it (the README's training size)


def load_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def references(rows: list[dict]) -> dict:
    """(dataset, seed) → {baseline, upper_bound, head, full}: the refs' runs with every (true) mask."""
    out: dict = {}
    for r in rows:
        if r.get("budget") is not None or r.get("corruption", "none") != "none":
            continue
        key = {"baseline": "baseline", "upper_bound": "upper_bound", "head_refit": "head"}.get(r["method"])
        if r.get("init") == "head":
            key = "full"
        if key:
            out.setdefault((r["dataset"], r["seed"]), {})[key] = r
    return out


def score(metrics: dict) -> float:
    value = metrics.get("selected/acc/val_cf", math.nan)
    return value if value == value else -math.inf


def one(dataset: str, seed: int, refs: dict, args) -> dict:
    """Discover, answer, refine one baseline; the row of its numbers."""
    import torch

    from focusml import FocusmlError
    from focusml.core.data.base import Dataset, Split
    from focusml.core.discover import mask_iou, masks_from, simulated_answer
    from focusml.tracking import refine
    from focusml.tracking.discover import discover
    from focusml.tracking.runs import load_run_data

    torch.set_num_threads(1)
    baseline = refs["baseline"]["run_id"]
    start = time.perf_counter()
    found = discover(baseline, seed=seed, out=Path(args.proposals_dir) / f"{dataset}-s{seed}.json",
                     experiment=args.experiment)
    discover_s = time.perf_counter() - start
    data = load_run_data({"dataset": dataset, "data_seed": 0, "train_size": TRAIN_SIZE.get(dataset)})
    answers = [(q.id, simulated_answer(q, data)) for q in found.proposals[: args.answers]]
    accepted = {i for i, a in answers if a == "yes"}
    produced = masks_from(found.proposals, accepted, data)
    splits = dict(data.splits)
    for name in ("train", "val"):
        old = splits[name]
        splits[name] = Split(old.images, produced.get(name, torch.zeros_like(old.masks)), old.labels)
    mine = Dataset(data.name, data.classes, splits, data.description, dict(data.params))
    row = {"dataset": dataset, "seed": seed, "discover_run": found.run_id, "proposals": len(found.proposals),
           "answers": len(answers), "accepted": len(accepted),
           "annotated_train": int(mine.split("train").annotated.sum()), "train": len(mine.split("train")),
           "iou": mask_iou({k: produced[k] for k in produced if k in ("train", "val")}, data), "discover_s": discover_s}
    base = refs["baseline"]["metrics"]["acc/test"]
    if not accepted:  # nothing to refine from: the model stays the baseline
        return {**row, "head": base, "full": base, "auto": base, "kept": "none (no proposal accepted)"}
    start = time.perf_counter()
    try:
        done = refine(baseline, {"experiment": args.experiment}, stages="auto", data=mine)
    except FocusmlError as e:  # refused before any run (every annotated image of one class): the baseline stays
        return {**row, "head": base, "full": base, "auto": base, "kept": f"none (refused: {e})"}
    head, full = done.stages["head"], done.stages["full"]
    return {**row, "head": head.metrics["acc/test"], "full": full.metrics["acc/test"],
            "auto": done.result.metrics["acc/test"], "kept": done.chosen, "head_run": head.run_id,
            "full_run": full.run_id, "refine_s": time.perf_counter() - start}


def gap(value: float, base: float, upper: float) -> float:
    return (value - base) / (upper - base) if upper != base else math.nan


def report(rows: list[dict], refs: dict) -> str:
    """Per dataset: answers, accepted, annotated, IoU and gap closed (discovered vs true masks)."""
    table = []
    for r in rows:
        ref = refs[(r["dataset"], r["seed"])]
        base, upper = ref["baseline"]["metrics"]["acc/test"], ref["upper_bound"]["metrics"]["acc/test"]
        true_auto = ref["full"] if score(ref["full"]["metrics"]) > score(ref["head"]["metrics"]) else ref["head"]
        table.append({"dataset": r["dataset"], "seed": r["seed"], "answers": r["answers"], "accepted": r["accepted"],
                      "annotated": r["annotated_train"] / r["train"], "iou": r["iou"],
                      "gap_head": gap(r["head"], base, upper), "gap_auto": gap(r["auto"], base, upper),
                      "true_head": gap(ref["head"]["metrics"]["acc/test"], base, upper),
                      "true_auto": gap(true_auto["metrics"]["acc/test"], base, upper), "acc_auto": r["auto"]})
    frame = pd.DataFrame(table)

    def ms(digits, scale=1.0, unit=""):
        return lambda s: fmt_mean_std(s.mean(), s.std(), digits=digits, scale=scale, unit=unit)

    pct = ms(0, 100.0, "%")
    out = frame.groupby("dataset", sort=False).agg(
        seeds=("seed", "count"), answers=("answers", ms(1)), accepted=("accepted", ms(1)),
        annotated=("annotated", pct), mask_iou=("iou", ms(2)), acc_test=("acc_auto", ms(3)),
        gap_head=("gap_head", pct), gap_auto=("gap_auto", pct), hand_head=("true_head", pct),
        hand_auto=("true_auto", pct)).reset_index()
    out.columns = ["dataset", "seeds", "answers", "accepted", "annotated train images", "mask IoU",
                   "acc/test (auto)", "gap closed: head refit", "gap closed: auto",
                   "hand-drawn: head refit", "hand-drawn: auto"]
    return markdown_table(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", default="refs.jsonl", help="benchmarks/refine.py's JSON lines (stages, budget all)")
    ap.add_argument("--datasets", default="decoy-digits,symbols,xray-tokens,sketches,decoy-fashion")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--answers", type=int, default=20, help="most proposals the simulated user answers")
    ap.add_argument("--experiment", default="discover")
    ap.add_argument("--proposals-dir", default="proposals")
    ap.add_argument("--out", default="discover.jsonl")
    ap.add_argument("--report", default=None, help="write the Markdown table here")
    ap.add_argument("--no-run", action="store_true", help="report from --out; run nothing")
    args = ap.parse_args(argv)
    refs = references(load_lines(Path(args.refs)))
    out = Path(args.out)
    done = {(r["dataset"], r["seed"]): r for r in load_lines(out)}
    for dataset in filter(None, args.datasets.split(",")):
        for seed in (int(s) for s in args.seeds.split(",") if s):
            ref = refs.get((dataset, seed), {})
            if (dataset, seed) in done or args.no_run:
                continue
            if "baseline" not in ref:
                print(f"{dataset} s{seed}: no baseline in {args.refs} yet; skipped", file=sys.stderr)
                continue
            row = one(dataset, seed, ref, args)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[(dataset, seed)] = row
            print(f"{dataset} s{seed}: {row['answers']} answers, {row['accepted']} yes, IoU {row['iou']:.2f}, "
                  f"acc/test head {row['head']:.3f} auto {row['auto']:.3f} ({row['kept']})", flush=True)
    rows = [r for r in done.values() if {"baseline", "upper_bound", "head", "full"} <= set(refs.get((r["dataset"], r["seed"]), {}))]
    if rows:
        text = report(rows, refs)
        print(text)
        if args.report:
            Path(args.report).write_text(text + "\n")


if __name__ == "__main__":
    main()
