"""What tracking costs: a bare PyTorch loop, `focusml.core.train.fit` alone and a tracked `focusml train`,
side by side in one run; and Optuna trials per hour with 1 and 2 worker processes.

Cases, interleaved (every repeat runs each case once, in turn), for each `--epochs` value:

- `bare loop`: the same model (`focusml.core.models.build_model`), training tensors, batch size, Adam,
  learning rate, cosine schedule and epochs, in this process: the loop only (no validation, no
  start-up);
- `bare script`: that loop as a fresh `python` process (interpreter, `import torch`, the tensors
  from a file, the loop): what a user waits for with a plain script;
- `fit alone`: `focusml.core.train.fit` in this process (the loop with per-epoch validation, no tracking);
- `focusml train`: a tracked `focusml train --no-log-model --device cpu` subprocess against a
  local SQLite store (`MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db`, created by an untimed
  warm-up run), wall time including interpreter start-up and imports; with `--server`, also
  against a local `mlflow server` (same machine, SQLite backend).

Ratios are medians over medians: each case's median wall time divided by the bare loop's (and
the bare script's). `--tune-trials N` also runs `focusml tune` with `--workers 1` and `--workers
2` on the same small study (decoy-digits, random sampler, no pruner, no model logging), each
call with its own journal storage, and prints trials per hour (subprocess wall time, start-up
included). `--phases` prints where the time of one tracked run goes (timers around each part).

Examples:
    python benchmarks/overhead.py                                   # 5 and 20 epochs, 3 repeats, tune 6 trials
    python benchmarks/overhead.py --epochs 5 --repeats 5 --tune-trials 0 --phases
    python benchmarks/overhead.py --epochs 1 --repeats 1 --tune-trials 2 --tune-epochs 1   # toy size
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the bare loop, shared by this process and the `bare script` subprocess (argv: tensors file, epochs)
BARE = '''
import sys, time
import torch
import torch.nn.functional as F
from focusml.core.models import build_model


def bare_loop(x, y, classes, epochs, batch_size=32, lr=3e-3, seed=0, model_name="small"):
    torch.manual_seed(seed)
    model = build_model(model_name, x.shape[1], classes, max(x.shape[-2:]), None)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        schedule.step()
    return time.perf_counter() - start


if __name__ == "__main__":
    saved = torch.load(sys.argv[1])
    bare_loop(saved["x"], saved["y"], saved["classes"], int(sys.argv[2]))
'''

STUDY = """method: pas
dataset: decoy-digits
fixed: {{epochs: {epochs}, batch_size: 32, seed: 0, device: cpu, log_model: false}}
search:
  lam: {{type: float, low: 0.01, high: 10, log: true}}
objectives:
  - {{metric: acc/val_cf, direction: maximize}}
n_trials: {trials}
sampler: {{name: random}}
pruner: {{name: none}}
seed: 0
"""


def _bare_namespace() -> dict:
    ns: dict = {"__name__": "focusml_bare"}
    exec(compile(BARE, "<bare loop>", "exec"), ns)
    return ns


def timed_subprocess(args: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    res = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args[:6])} … failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall


class Bench:
    """The cases of one benchmark run, sharing a scratch folder, the data tensors and an environment."""

    def __init__(self, tmp: Path, server: str | None = None):
        import torch

        from focusml.core.config import RunConfig
        from focusml.core.run import load_data

        self.tmp, self.server = tmp, server
        self.config = RunConfig(device="cpu", log_model=False)
        self.data = load_data(self.config)
        x, _, y = self.data.split("train").batch(torch.arange(len(self.data.split("train"))))
        self.tensors = tmp / "train.pt"
        torch.save({"x": x, "y": y, "classes": self.data.num_classes}, self.tensors)
        self.x, self.y = x, y
        self.bare = _bare_namespace()["bare_loop"]
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
        self.env.update(PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                        FOCUSML_CACHE=str(tmp / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}")

    def bare_loop(self, epochs: int) -> float:
        return self.bare(self.x, self.y, self.data.num_classes, epochs)

    def bare_script(self, epochs: int) -> float:
        return timed_subprocess([sys.executable, "-c", BARE, str(self.tensors), str(epochs)], self.env, self.tmp)

    def fit_alone(self, epochs: int) -> float:
        import torch

        from focusml.core import methods
        from focusml.core.models import build_model
        from focusml.core.train import fit

        config = with_epochs(self.config, epochs)
        method = methods.get(config.method)(config.method_params)
        torch.manual_seed(config.seed)
        c, h, w = self.data.image_shape
        model = build_model(config.model, c, self.data.num_classes, max(h, w), None)
        start = time.perf_counter()
        fit(model, self.data, method, config, torch.device("cpu"))
        return time.perf_counter() - start

    def tracked(self, epochs: int, server: bool = False, tree: Path | None = None) -> float:
        env = dict(self.env, MLFLOW_TRACKING_URI=self.server) if server else self.env
        if tree is not None:  # another checkout of focusml (e.g. before a change), same store
            env = dict(env, PYTHONPATH=str(tree))
        return timed_subprocess([sys.executable, "-m", "focusml", "train", "--no-log-model", "--device", "cpu",
                                 "--epochs", str(epochs), "--experiment", "overhead"], env, self.tmp)

    def tune(self, workers: int, trials: int, epochs: int, tag: str) -> float:
        study = self.tmp / "study.yaml"
        study.write_text(STUDY.format(epochs=epochs, trials=trials))
        return timed_subprocess([sys.executable, "-m", "focusml", "tune", str(study), "--workers", str(workers),
                                 "--study-name", tag, "--storage", str(self.tmp / f"{tag}.journal")],
                                dict(self.env, MLFLOW_EXPERIMENT_NAME="overhead-tune"), self.tmp)


def with_epochs(config, epochs: int):
    """`config` with another epoch count, validated."""
    import dataclasses

    return dataclasses.replace(config, epochs=epochs).validate()


# ---- where the time of one tracked run goes ------------------------------------------------------------

#: (module, attribute, label): the parts of a tracked run, each timed where the run calls it
PHASES = [
    ("focusml.core.run", "load_data", "data: load/generate"),
    ("focusml.tracking.logger", "start_run", "MLflow: start run"),
    ("focusml.tracking.logger", "log_params", "MLflow: params"),
    ("focusml.tracking.logger", "log_datasets", "MLflow: datasets"),
    ("focusml.core.train", "train_step", "epoch: training steps"),
    ("focusml.core.evaluate.Evaluator", "validation", "epoch: validation"),
    ("focusml.tracking.logger", "log_metrics", "epoch: log metrics"),
    ("focusml.core.figures.CamSeries", "image", "epoch: CAM grid (cam_grid_val, step 0 too)"),
    ("focusml.tracking.logger", "split_cam_grid", "CAM grid figure (before: every step; now: test)"),
    ("focusml.tracking.logger", "to_pil", "CAM grid to image (before)"),
    ("focusml.tracking.logger", "log_image_step", "epoch: CAM grid log_image"),
    ("focusml.tracking.keeper.RunKeeper", "on_checkpoint", "epoch: resume.pt checkpoint"),
    ("focusml.core.run", "test_metrics", "end: test metrics"),
    ("focusml.tracking.logger", "log_final_metrics", "end: final metrics"),
    ("focusml.tracking.logger", "log_figure", "end: figures (log)"),
    ("focusml.tracking.logger", "confusion_figure", "end: confusion figure"),
    ("focusml.tracking.logger", "log_table", "end: predictions table"),
    ("focusml.tracking.logger", "log_state_dict", "end: checkpoints"),
]


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        return obj
    return None


def phases(epochs: int, env: dict[str, str]) -> "pd.DataFrame":  # noqa: F821
    """Time each part of one tracked run in this process (its imports timed in a fresh one), against
    the store and cache of `env` (a store that exists already: its creation is not counted)."""
    import pandas as pd

    code = ("import time; s = time.perf_counter(); import focusml.cli.train, focusml.tracking; "
            "print(time.perf_counter() - s)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    imports = float(out.stdout.split()[-1])
    rows = [("start: interpreter", time.perf_counter() - start - imports, 1), ("start: imports", imports, 1)]
    from focusml import tracking
    from focusml.core.config import RunConfig

    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    patched = []
    for path, attr, label in PHASES:
        owner = _resolve(path)
        if owner is None or not hasattr(owner, attr):
            continue
        original = getattr(owner, attr)

        def timed(*a, _f=original, _label=label, **k):
            s = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                totals[_label] += time.perf_counter() - s
                counts[_label] += 1

        setattr(owner, attr, functools.wraps(original)(timed))
        patched.append((owner, attr, original))
    saved = {k: os.environ.get(k) for k in ("FOCUSML_CACHE", "MLFLOW_TRACKING_URI")}
    os.environ.update({k: env[k] for k in saved})
    try:
        start = time.perf_counter()
        tracking.run(RunConfig(epochs=epochs, device="cpu", log_model=False, experiment="phases"))
        run_s = time.perf_counter() - start
    finally:
        for owner, attr, original in patched:
            setattr(owner, attr, original)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    rows += [(label, totals[label], counts[label]) for _, _, label in PHASES if counts.get(label)]
    rows.append(("other (in the run)", run_s - sum(s for _, s, _ in rows[2:]), 1))  # the timed parts do not nest
    frame = pd.DataFrame(rows, columns=["part", "seconds", "calls"])
    frame["share"] = frame["seconds"] / frame["seconds"].sum()
    return frame


# ---- the report --------------------------------------------------------------------------------------


def stats(rows: list[dict]) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    frame = pd.DataFrame(rows)
    g = frame.groupby(["epochs", "case"], sort=False)["seconds"]
    out = g.agg(median="median", mean="mean", std="std", n="count").reset_index()
    for ref in ("bare loop", "bare script"):
        base = out[out["case"] == ref].set_index("epochs")["median"]
        out[f"÷ {ref}"] = out["median"] / out["epochs"].map(base)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", default="5,20", help="comma list of epoch counts (default 5,20)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each case (default 3)")
    ap.add_argument("--server", action="store_true", help="also time `focusml train` against a local mlflow server")
    ap.add_argument("--compare-tree", type=Path, default=None, metavar="DIR",
                    help="also time `focusml train` from another checkout (e.g. before a change), side by side")
    ap.add_argument("--tune-trials", type=int, default=6,
                    help="trials per `focusml tune` call (0: skip; default 6: even, so 2 workers share them evenly)")
    ap.add_argument("--tune-epochs", type=int, default=5, help="epochs per trial (default 5)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="skip the untimed first run that creates the SQLite store (toy runs only: the first timed run pays it)")
    ap.add_argument("--phases", action="store_true", help="also print where one tracked run's time goes")
    ap.add_argument("--phase-epochs", type=int, default=5, help="epochs of that run (default 5)")
    args = ap.parse_args(argv)
    epochs = [int(e) for e in args.epochs.split(",") if e]
    import pandas as pd

    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="focusml-overhead-") as tmpname:
        tmp = Path(tmpname)
        os.chdir(tmp)  # MLflow puts a SQLite store's artifacts under ./mlruns
        server = _start_server(tmp) if args.server else None
        try:
            bench = Bench(tmp, server[0] if server else None)
            if not args.no_warm_up:
                print(f"warm-up: first tracked run on a new SQLite store {bench.tracked(1):.1f} s (not counted)",
                      file=sys.stderr)
                if server:
                    bench.tracked(1, server=True)
            cases = [("bare loop", bench.bare_loop), ("bare script", bench.bare_script), ("fit alone", bench.fit_alone),
                     ("focusml train", bench.tracked)]
            if server:
                cases.append(("focusml train (server)", functools.partial(bench.tracked, server=True)))
            if args.compare_tree:
                cases.append((f"focusml train ({args.compare_tree.name})",
                              functools.partial(bench.tracked, tree=args.compare_tree.resolve())))
            rows = []
            for r in range(args.repeats):
                for n in epochs:
                    for name, fn in cases:
                        rows.append({"epochs": n, "case": name, "repeat": r, "seconds": fn(n)})
                        print(f"repeat {r + 1}/{args.repeats}, {n} epochs, {name}: {rows[-1]['seconds']:.2f} s",
                              file=sys.stderr)
            table = stats(rows) if rows else None
            tune_rows = []
            if args.tune_trials:
                for r in range(args.repeats):
                    for k in (1, 2):
                        wall = bench.tune(k, args.tune_trials, args.tune_epochs, f"w{k}-r{r}")
                        tune_rows.append({"workers": k, "repeat": r, "seconds": wall,
                                          "trials/hour": args.tune_trials / wall * 3600})
                        print(f"repeat {r + 1}/{args.repeats}, tune --workers {k}: {wall:.1f} s", file=sys.stderr)
            phase_table = phases(args.phase_epochs, bench.env) if args.phases else None
        finally:
            os.chdir(here)
            if server:
                _stop_server(server[1])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"## Overhead of tracking ({cores} cores, load average {load:.1f} at the end; "
          f"medians of {args.repeats} interleaved repeats; `focusml train` against sqlite:///<tmp>/mlflow.db)\n")
    if table is not None:
        print(table.to_markdown(index=False, floatfmt=".2f"))
    if tune_rows:
        frame = pd.DataFrame(tune_rows)
        per = frame.groupby("workers")["trials/hour"].agg(median="median", mean="mean", std="std").reset_index()
        per["seconds (median)"] = frame.groupby("workers")["seconds"].median().values
        ratio = per.set_index("workers")["median"]
        print(f"\n### Trials per hour ({args.tune_trials} trials of {args.tune_epochs} epochs per call)\n")
        print(per.to_markdown(index=False, floatfmt=".1f"))
        print(f"\n2 workers ÷ 1 worker: {ratio[2] / ratio[1]:.2f}× the trials per hour")
    if phase_table is not None:
        print(f"\n### Where one tracked run's time goes ({args.phase_epochs} epochs, in-process timers)\n")
        print(phase_table.to_markdown(index=False, floatfmt=".2f"))
    return 0


def _start_server(tmp: Path) -> tuple[str, subprocess.Popen]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                             "--artifacts-destination", str(tmp / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return url, proc
        except OSError:
            time.sleep(0.5)
    _stop_server(proc)
    raise SystemExit("mlflow server did not start in 180 s")


def _stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
