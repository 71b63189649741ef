"""Streaming a folder dataset from disk (issue 14, part 3): bounded memory, and what it costs in speed.

Two measurements, each job in its own process (so one job's memory never counts for another):

- `big`: a folder dataset whose decoded tensors (images and masks, every split) need ≥ `--big-gib`
  GiB: small PNG files on disk, upscaled by `--image-size` (default 256). One epoch streamed
  (`--data-loading stream`), then the test metrics, with `focusml.core.train.fit` and a deliberately tiny
  CAM network (strided convolutions), so that the epoch takes minutes on a CPU, not hours: memory is
  the point here. Peak memory, sampled every 50 ms: the process's resident set plus what its
  DataLoader workers hold of their own (USS), so a page a forked worker shares with its parent counts
  once; the plain sum of resident sets, which counts those pages twice, is given beside it.
- `speed`: a dataset that fits (`--fit-images` training images at `--fit-size`), loaded both ways in
  one process and trained one epoch at a time (`focusml.core.train.fit`, the default `small` model), in
  memory and streamed, `--repeats` pairs, so each pair shares the machine's load; images/s over the
  training loop (`time/epoch_s`, files in the page cache) and the ratio pair by pair.

Prints one table; `--json FILE` also writes the numbers. The datasets are written under `--out`
(kept and reused when their parameters match; `--clean` removes them afterwards).

Examples:
    nice -n 10 python benchmarks/stream.py --out /tmp/stream-bench            # the numbers in docs/benchmarks.md
    python benchmarks/stream.py --big-gib 0.02 --image-size 64 --fit-images 64 --repeats 1   # toy size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = ("a", "b")
EVAL_IMAGES = 32  # per evaluation split (val, test): kept small, the training split is what grows
FILE_SIZE = 32  # side of the PNG files on disk


# -- datasets --------------------------------------------------------------------------------------

def write_dataset(root: Path, n_train: int, seed: int = 0) -> Path:
    """A two-class folder dataset of FILE_SIZE² RGB PNGs: class = colour of a blob, shortcut = a corner patch
    (marked by the mask). Written once: a `params.json` naming the size marks a finished tree."""
    marker = root / "params.json"
    want = {"n_train": n_train, "eval": EVAL_IMAGES, "file_size": FILE_SIZE, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    s = FILE_SIZE
    for split, n in (("train", n_train), ("val", EVAL_IMAGES), ("test", EVAL_IMAGES)):
        for cls in CLASSES:
            (root / "images" / split / cls).mkdir(parents=True)
            (root / "masks" / split / cls).mkdir(parents=True)
        for i in range(n):
            k = i % 2
            img = rng.integers(0, 60, (s, s, 3), dtype=np.uint8)
            y, x = rng.integers(4, s - 12, 2)
            img[y:y + 8, x:x + 8, k] = 220  # the object: a red or green blob
            mask = np.zeros((s, s), np.uint8)
            if split != "test" or rng.random() < 0.5:
                img[:5, :5, 2] = 255 if k else 0  # the shortcut (broken on half of test)
            mask[:5, :5] = 255
            name = f"{i:06d}.png"
            Image.fromarray(img).save(root / "images" / split / CLASSES[k] / name, compress_level=1)
            Image.fromarray(mask).save(root / "masks" / split / CLASSES[k] / name, compress_level=1)
    marker.write_text(json.dumps(want))
    return root


def decoded_gib(n_images: int, size: int) -> float:
    """GiB of the decoded uint8 tensors: RGB images and their masks."""
    return n_images * 4 * size * size / 2**30


# -- measuring ---------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory of this process and its children (the DataLoader workers), sampled in a thread.

    `peak`: the process's RSS plus each child's USS (the pages only that child holds): every page
    counted once, shared libraries included in full. `peak_rss_sum`: RSS summed over the processes,
    which counts the pages a forked worker shares with its parent twice (an overstatement)."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.proc, self.every, self.peak, self.peak_rss_sum = psutil.Process(), every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            total, rss_sum = rss, rss
            for child in self.proc.children(recursive=True):
                try:
                    info = child.memory_full_info()
                except psutil.Error:
                    continue
                total, rss_sum = total + info.uss, rss_sum + info.rss
            self.peak, self.peak_rss_sum = max(self.peak, total), max(self.peak_rss_sum, rss_sum)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def tiny_model(channels: int, classes: int):
    """A CAM network with almost no compute per pixel (the `big` job measures memory, not a model)."""
    from torch import nn

    from focusml.core.models import CamNet

    features = nn.Sequential(nn.Conv2d(channels, 8, 4, stride=4), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    return CamNet(features, 16, classes)


def job_big(root: str, image_size: int, batch_size: int) -> dict:
    import torch

    from focusml.core import methods
    from focusml.core.config import RunConfig
    from focusml.core.data.stream import workers
    from focusml.core.evaluate import test_metrics
    from focusml.core.run import load_data
    from focusml.core.train import fit

    import psutil

    config = RunConfig(dataset="folder", data_root=root, image_size=image_size, data_loading="stream", epochs=1,
                       batch_size=batch_size, device="cpu").validate()
    baseline = psutil.Process().memory_info().rss  # torch and focusml imported, nothing loaded
    with PeakMemory() as peak:
        start = time.perf_counter()
        data = load_data(config)
        load_s = time.perf_counter() - start
        torch.manual_seed(0)
        model = tiny_model(data.image_shape[0], data.num_classes)
        method = methods.get("baseline")(config.method_params)
        fitted = fit(model, data, method, config, torch.device("cpu"))
        metrics, _, _ = test_metrics(model, data, torch.device("cpu"))
    n = len(data.split("train"))
    epoch_s = fitted.history[0]["time/epoch_s"]
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"train_images": n, "rows": sum(len(s) for s in data.splits.values()), "load_s": load_s,
            "epoch_s": epoch_s, "images_per_s": n / epoch_s, "peak": peak.peak, "peak_rss_sum": peak.peak_rss_sum,
            "baseline_rss": baseline,
            "maxrss_self": self_kib * 1024, "maxrss_children": child_kib * 1024, "workers": workers(),
            "acc_test": metrics["acc/test"], "streamed": data.splits["train"].streamed}


def job_speed(root: str, image_size: int, batch_size: int, repeats: int) -> dict:
    """Training throughput in memory and streamed, epoch by epoch in pairs, in this one process.

    Both loadings of the dataset are held; every epoch trains a fresh `small` model (seed 0) with
    `focusml.core.train.fit`, so each measurement does the same work. One untimed epoch per loading
    first (kernels, page cache); then `repeats` pairs, the first of each pair alternating, so the
    two epochs of a pair run seconds apart and share the machine's load."""
    import torch

    from focusml.core import methods
    from focusml.core.config import RunConfig
    from focusml.core.models import build_model
    from focusml.core.run import load_data
    from focusml.core.train import fit

    configs = {mode: RunConfig(dataset="folder", data_root=root, image_size=image_size, data_loading=mode, epochs=1,
                               batch_size=batch_size, device="cpu", select="last").validate()
               for mode in ("memory", "stream")}
    data = {mode: load_data(config) for mode, config in configs.items()}
    assert data["stream"].splits["train"].streamed and not data["memory"].splits["train"].streamed

    def epoch(mode: str) -> float:
        d = data[mode]
        c, h, w = d.image_shape
        torch.manual_seed(0)
        model = build_model("small", c, d.num_classes, max(h, w))
        fitted = fit(model, d, methods.get("baseline")({}), configs[mode], torch.device("cpu"))
        return len(d.split("train")) / fitted.history[0]["time/epoch_s"]

    epoch("memory"), epoch("stream")
    out: dict[str, list[float]] = {"memory": [], "stream": []}
    for i in range(repeats):
        for mode in (("memory", "stream") if i % 2 == 0 else ("stream", "memory")):
            out[mode].append(epoch(mode))
    return out


def in_child(job: str, **kw) -> dict:
    """Run a job in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--job", job, "--job-args", json.dumps(kw)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"job {job} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- the report ----------------------------------------------------------------------------------------

def mean_std(values: list[float]) -> str:
    m = float(np.mean(values))
    return f"{m:.1f} ± {float(np.std(values, ddof=1)):.1f}" if len(values) > 1 else f"{m:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="stream-bench", help="where the datasets are written (reused)")
    ap.add_argument("--big-gib", type=float, default=4.0, help="decoded size of the big dataset, GiB")
    ap.add_argument("--image-size", type=int, default=256, help="side the big dataset's files are resized to")
    ap.add_argument("--big-batch-size", type=int, default=64)
    ap.add_argument("--fit-images", type=int, default=1000, help="training images of the dataset that fits")
    ap.add_argument("--fit-size", type=int, default=64, help="side the fitting dataset's files are resized to")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of the speed runs")
    ap.add_argument("--repeats", type=int, default=6, help="pairs of timed epochs (memory, streamed)")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--clean", action="store_true", help="remove the datasets afterwards")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--job-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.job:
        fn = {"big": job_big, "speed": job_speed}[args.job]
        print(json.dumps(fn(**json.loads(args.job_args))))
        return 0

    out = Path(args.out)
    rows: list[dict] = []
    report: dict = {"args": vars(args)}
    if not args.skip_big:
        total = math.ceil(args.big_gib * 2**30 / (4 * args.image_size**2))
        n_train = max(2, total - 2 * EVAL_IMAGES)
        start = time.perf_counter()
        root = write_dataset(out / "big", n_train)
        written = time.perf_counter() - start
        big = in_child("big", root=str(root), image_size=args.image_size, batch_size=args.big_batch_size)
        big.update(decoded_gib=decoded_gib(big["rows"], args.image_size), write_s=written)
        report["big"] = big
        rows.append({
            "measurement": f"one epoch streamed, {big['train_images']} images {FILE_SIZE}² → {args.image_size}²",
            "decoded size": f"{big['decoded_gib']:.2f} GiB",
            "peak memory": f"{big['peak'] / 2**30:.2f} GiB",
            "images/s": f"{big['images_per_s']:.0f}",
            "note": f"{big['workers']} worker(s); epoch {big['epoch_s']:.0f} s, load {big['load_s']:.1f} s; RSS summed "
                    f"over processes {big['peak_rss_sum'] / 2**30:.2f} GiB; after the imports alone "
                    f"{big['baseline_rss'] / 2**30:.2f} GiB",
        })
    root = write_dataset(out / "fit", args.fit_images, seed=1)
    speed = in_child("speed", root=str(root), image_size=args.fit_size, batch_size=args.batch_size,
                     repeats=args.repeats)
    ratios = [s / m for s, m in zip(speed["stream"], speed["memory"])]
    report["speed"] = {**speed, "ratio": ratios}
    fit_gib = decoded_gib(args.fit_images + 2 * EVAL_IMAGES, args.fit_size)
    fits = f"{args.fit_images} images {FILE_SIZE}² → {args.fit_size}², {fit_gib:.3f} GiB"
    for mode in ("memory", "stream"):
        rows.append({"measurement": f"training, {mode} ({fits})", "decoded size": "",
                     "peak memory": "", "images/s": mean_std(speed[mode]),
                     "note": f"{args.repeats} epochs, model small, batch {args.batch_size}"})
    spread = np.std(ratios, ddof=1) if len(ratios) > 1 else 0.0
    rows.append({"measurement": "streamed ÷ in memory, run by run", "decoded size": "", "peak memory": "",
                 "images/s": f"{np.mean(ratios):.2f} ± {spread:.2f}×",
                 "note": f"median {np.median(ratios):.2f}, ratio of the means "
                         f"{np.mean(speed['stream']) / np.mean(speed['memory']):.2f}; "
                         + ", ".join(f"{r:.2f}" for r in ratios)})
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.clean:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
