"""Screenshot of the mask tool's Proposals panel for docs/images/: `focusml masks serve ROOT --proposals FILE`
(the real CLI, on a free loopback port), then headless Chromium (Playwright, Debian's /usr/bin/chromium, a fresh
profile) opening the page, which starts on the panel, showing one proposal: its members with the region outlined.

    python benchmarks/proposal_screenshot.py ROOT ROOT/proposals/RUN_ID.json          # a `focusml discover` file
    python benchmarks/proposal_screenshot.py ROOT FILE --proposal p03 --out docs/images/mask-tool-proposal.png

Without a discover output at hand, `--demo WORK` makes one to look at: it exports decoy-digits to WORK/data,
moves its true masks to WORK/true-masks (so that no member counts as drawn by hand), and writes
WORK/data/proposals/demo.json with one "all classes" proposal per corner whose members are the train images
whose true mask (the decoy patch) sits in that corner (classes interleaved), on a 7×7 grid (one cell = the
4×4 patch). Its flip rates are null (no model was run), shown as "—"; replace the file by a real
`focusml discover` output for docs.

    python benchmarks/proposal_screenshot.py --demo /tmp/proposal-demo
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]


def shrink(path: Path, colours: int = 192) -> None:
    """Quantize to a palette PNG: small files, same look (ui_screenshots.py's, more colours for the images)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this checkout's focusml
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_demo(work: Path, dataset: str = "decoy-digits", grid: int = 7) -> tuple[Path, Path]:
    """Export `dataset` to WORK/data and write a corner-per-proposal file from its true masks; (root, file)."""
    import numpy as np
    from PIL import Image

    from focusml.core.proposals import FORMAT, cells_to_text

    root, true = work / "data", work / "true-masks"
    if not root.exists():
        subprocess.run([sys.executable, "-m", "focusml", "datasets", "export", dataset, str(root)], env=_env(),
                       check=True)
    if (root / "masks").exists():
        shutil.rmtree(true, ignore_errors=True)
        (root / "masks").rename(true)
    corners = {"top-left": (0, 0), "top-right": (0, grid - 1), "bottom-left": (grid - 1, 0),
               "bottom-right": (grid - 1, grid - 1)}
    groups: dict[str, list[dict]] = {name: [] for name in corners}
    for cls_dir in sorted((true / "train").iterdir(), key=lambda p: p.name):
        for mask_file in sorted(cls_dir.iterdir()):
            m = np.asarray(Image.open(mask_file).convert("L")) > 0
            if not m.any():
                continue
            h, w = m.shape
            cells = np.zeros((grid, grid), bool)
            for i in range(grid):
                for j in range(grid):
                    block = m[-(-i * h // grid):-(-(i + 1) * h // grid), -(-j * w // grid):-(-(j + 1) * w // grid)]
                    cells[i, j] = block.size > 0 and block.mean() > 0.5
            ys, xs = np.nonzero(m)
            name = ("top" if ys.mean() < h / 2 else "bottom") + "-" + ("left" if xs.mean() < w / 2 else "right")
            image = next(p for p in (root / "images" / "train" / cls_dir.name).iterdir() if p.stem == mask_file.stem)
            groups[name].append({"path": f"train/{cls_dir.name}/{image.name}", "cells": cells_to_text(cells)})
    proposals = []
    for rank, (name, members) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1])), start=1):
        by_class: dict[str, list[dict]] = {}
        for m in members:
            by_class.setdefault(m["path"].split("/")[1], []).append(m)
        rows = max(map(len, by_class.values()), default=0)  # classes interleaved: the first page shows them all
        members = [group[k] for k in range(rows) for group in by_class.values() if k < len(group)]
        region = np.zeros((grid, grid), bool)
        region[corners[name]] = True
        proposals.append({"id": f"p{rank:02d}", "rank": rank, "scope": "all classes", "region": cells_to_text(region),
                          "size": float(region.mean()), "flip_rate": None, "members": members})
    path = root / "proposals" / "demo.json"
    path.parent.mkdir(exist_ok=True)
    for old in path.parent.glob("demo.answers.json"):
        old.unlink()
    path.write_text(json.dumps({"format": FORMAT, "run_id": "demo", "grid": [grid, grid],
                                "classes": sorted(p.name for p in (root / "images" / "train").iterdir()),
                                "proposals": proposals}))
    return root, path


def screenshot(root: Path, proposals: Path, out: Path, proposal: str | None = None,
               width: int = 1400, height: int = 1100) -> Path:
    """Serve ROOT with PROPOSALS through the CLI and save the Proposals panel (one proposal) to `out`."""
    from playwright.sync_api import sync_playwright

    proc = subprocess.Popen([sys.executable, "-m", "focusml", "masks", "serve", str(root), "--proposals",
                             str(proposals), "--port", "0"], env=_env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        url, lines, deadline = None, [], time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            url = found.group(0) if found else None
        if url is None:
            raise SystemExit("the mask tool did not start:\n" + "".join(lines))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.goto(url + "/")
                page.wait_for_selector("#proposals-view[data-ready='1'] #p-grid[data-ready='1']", timeout=60_000)
                if proposal:
                    page.click(f"#p-list li[data-id='{proposal}']")
                    page.wait_for_selector(f"#proposals-view[data-id='{proposal}'] #p-grid[data-ready='1']")
                page.mouse.move(2, 2)  # no hover marks
                time.sleep(0.5)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stderr.close()
    shrink(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", help="the folder dataset (ROOT/images/<split>/<class>/<file>)")
    ap.add_argument("proposals", nargs="?", help="the proposals file, inside ROOT")
    ap.add_argument("--proposal", default=None, help="id of the proposal to show (default: the first unanswered)")
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "mask-tool-proposal.png"))
    ap.add_argument("--demo", metavar="WORK", default=None,
                    help="export decoy-digits to WORK and make a corner proposals file from its true masks")
    args = ap.parse_args()
    if args.demo:
        root, proposals = make_demo(Path(args.demo).resolve())
    elif args.root and args.proposals:
        root, proposals = Path(args.root), Path(args.proposals)
    else:
        ap.error("give ROOT and PROPOSALS, or --demo WORK")
    print(screenshot(root, proposals, Path(args.out), args.proposal))


if __name__ == "__main__":
    main()
