"""Training throughput of every method with mixed precision off and on: images/s, one epoch each.

What `benchmarks/gpu_check.sh` runs on a machine with a GPU (docs/benchmarks.md); it runs on CPU
too (`--device cpu`, `--toy` for a seconds-long check). No MLflow: each cell is one core run
(`focusml.core.run.run`) of a built-in dataset loaded once, optionally cut down (`--images`) and
upscaled (`--image-size`, so the torchvision backbones have pixels to work on). A warm-up run
per precision goes first (CUDA context, cuDNN's kernel choice) and is not shown.

images/s = training images of the split ÷ the epoch's training time (`time/epoch_s`: forward,
loss, backward and step; not the method's `prepare`, not validation or the test metrics).
Counterexamples trains on extra copies, which this count leaves out. `--repeats N` keeps the
fastest of N runs per cell (off and on alternate), for a machine that other jobs share. A cell that fails (e.g. a
loss that diverged) shows the error and the script exits 1 after the table.

    python benchmarks/gpu_check.py                                  # every method, small net, 28×28
    python benchmarks/gpu_check.py --model resnet18 --image-size 64 --methods baseline,pas,rrr
    python benchmarks/gpu_check.py --device cpu --toy               # a seconds-long check on CPU
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's focusml, venv installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import focusml.core.run as core  # noqa: E402
from focusml import FocusmlError  # noqa: E402
from focusml.core.config import RunConfig  # noqa: E402
from focusml.core.data import Dataset, Split  # noqa: E402
from focusml.core.methods import METHODS  # noqa: E402
from focusml.core.methods.generative import Generative, inpainter  # noqa: E402
from focusml.core.precision import Precision  # noqa: E402
from focusml.core.train import resolve_device  # noqa: E402

TOY = {"images": 48, "batch_size": 16, "inpainter_steps": 2}


def describe(device: torch.device) -> str:
    """One line naming the device (GPU model, memory, bf16 support) and the torch build."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        what = (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
                f"bf16 {'native' if torch.cuda.is_bf16_supported(including_emulation=False) else 'emulated'}")
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"device {device} ({what}); torch {torch.__version__}, CUDA {torch.version.cuda}"


def shrink(data: Dataset, images: int | None, size: int | None) -> Dataset:
    """The first `images` rows of every split, upscaled to size×size (masks nearest-neighbour)."""
    splits = {}
    for name, s in data.splits.items():
        x, m, y = (s.images, s.masks, s.labels) if images is None else (s.images[:images], s.masks[:images], s.labels[:images])
        if size is not None and size != x.shape[-1]:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
            m = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
        splits[name] = Split(x.contiguous(), m.contiguous(), y)
    return Dataset(data.name, data.classes, splits, data.description, dict(data.params))


def one_run(config: RunConfig, data: Dataset) -> dict:
    """One core run on the preloaded `data`: images/s of its (last) epoch and its training loss."""
    loaded = core.load_data
    core.load_data = lambda _config: data  # the run's own path, minus loading the dataset again
    try:
        result = core.run(config)
    finally:
        core.load_data = loaded
    last = result.history[-1]
    n = len(data.split(METHODS[config.method].train_split))
    return {"img_s": n / last["time/epoch_s"], "loss": last["loss/train"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    ap.add_argument("--amp", default="auto", help="the precision compared with off: auto, bf16 or fp16 (default auto)")
    ap.add_argument("--methods", default="all", help="comma-separated methods (default all that train: `focusml methods`)")
    ap.add_argument("--dataset", default="decoy-digits", help="a built-in dataset (default decoy-digits)")
    ap.add_argument("--model", default="small", help="network (default small)")
    ap.add_argument("--image-size", type=int, default=None, help="upscale the images to N×N (default: as built)")
    ap.add_argument("--images", type=int, default=None, help="keep the first N images of every split (default all)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run; the last one is timed (default 1)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every cell N times, off and on alternating, and keep the fastest (a busy machine)")
    ap.add_argument("--channels-last", default="auto", help="auto, on or off (default auto)")
    ap.add_argument("--toy", action="store_true",
                    help=f"a seconds-long check: {TOY['images']} images per split, batch {TOY['batch_size']}, "
                         "a 2-step inpainter")
    args = ap.parse_args(argv)
    images, batch = (TOY["images"], TOY["batch_size"]) if args.toy else (args.images, args.batch_size)
    if args.toy:  # the built-in inpainter of `generative`: a few steps, not 600
        Generative.settings = inpainter.InpainterSettings(steps=TOY["inpainter_steps"], batch_size=8, width=8)
    trained = [m for m, cls in METHODS.items() if not cls.replaces_training]  # head_refit has no training step
    names = trained if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    base = dict(dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=batch, device=args.device,
                channels_last=args.channels_last, log_model=False, select="last")
    try:
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise FocusmlError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}.")
        configs = {(m, amp): RunConfig(method=m, amp=amp, **base).validate() for m in names for amp in ("off", args.amp)}
        data = shrink(core.load_data(configs[names[0], "off"]), images, args.image_size)
    except FocusmlError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    label = Precision.for_run(args.amp, "off", args.model, device).params["amp_dtype"]
    layout = Precision.for_run("off", args.channels_last, args.model, device).params["memory_format"]
    c, h, w = data.image_shape
    print(describe(device))
    print(f"{args.dataset} {c}×{h}×{w}, {len(data.split('train'))} training images, model {args.model} ({layout}), "
          f"batch {batch}, {args.epochs} epoch(s) per run; AMP = --amp {args.amp} → {label}", flush=True)
    started = time.perf_counter()
    for amp in ("off", args.amp):  # warm-up, not shown
        one_run(RunConfig(method="baseline", amp=amp, **{**base, "epochs": 1}).validate(), data)
    rows, failed = [], 0
    for m in names:
        cells = {}
        for _ in range(max(args.repeats, 1)):
            for amp in ("off", args.amp):
                if "error" in cells.get(amp, {}):
                    continue
                try:
                    got = one_run(configs[m, amp], data)
                except Exception as e:  # noqa: BLE001 — one failed cell must not hide the others
                    failed += 1
                    cells[amp] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"}
                    continue
                if amp not in cells or got["img_s"] > cells[amp]["img_s"]:
                    cells[amp] = got
        rows.append((m, cells["off"], cells[args.amp]))
        print(f"  {m}: done", file=sys.stderr, flush=True)
    print(f"\n{'method':<18} {'fp32 img/s':>11} {label + ' img/s':>11} {'speedup':>8} {'loss fp32':>10} {label + ' loss':>10}")
    for m, off, on in rows:
        if "error" in off or "error" in on:
            print(f"{m:<18} FAILED: {off.get('error') or on.get('error')}")
            continue
        finite = math.isfinite(on["loss"]) and math.isfinite(off["loss"])
        print(f"{m:<18} {off['img_s']:>11.0f} {on['img_s']:>11.0f} {on['img_s'] / off['img_s']:>7.2f}× "
              f"{off['loss']:>10.4f} {on['loss']:>10.4f}{'' if finite else '  NON-FINITE'}")
    print(f"\n{len(rows)} methods × 2 precisions in {time.perf_counter() - started:.0f} s"
          + (f"; {failed} run(s) FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
