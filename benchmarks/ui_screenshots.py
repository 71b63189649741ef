"""Screenshots of the MLflow UI for docs/images/, as a user first sees it: a real `mlflow server` on 127.0.0.1,
the demo's three runs (baseline, upper bound, pas on decoy-digits, seed 0) and a comparison logged through the
`focusml` CLI, then headless Chromium (Playwright, Debian's /usr/bin/chromium) with a fresh profile per page,
opening the links those commands print. No click before a screenshot (not even "Model training": the links
open the ML view), except on the CAM series page, whose point is the step slider.

    python benchmarks/ui_screenshots.py --epochs 8 --out docs/images   # fewer epochs leave every run at chance

Writes mlflow-runs-view.png (the experiment's runs as `focusml train`'s second link and the demo's last line
open them: focusml's saved view, headline metrics, best acc/test first), mlflow-run-page.png (the run, from
the link `focusml train` prints), mlflow-comparison.png (the experiment after `focusml compare`, from the
link it prints: the runs and the description's table), mlflow-cam-series.png (the run's `cam_grid_val`
series: the card's expanded view at the last epoch, the image opened at full size) and
mlflow-logged-model.png (the LoggedModel page, in the ML view), each a palette PNG under 300 KB.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local_server import free_port, wait_healthy

CHROMIUM = "/usr/bin/chromium"


def focusml(args: list[str], env: dict) -> str:
    """Run the CLI; its stdout and stderr (where the links are) together."""
    res = subprocess.run([sys.executable, "-m", "focusml", *args], env=env, capture_output=True, text=True, check=True)
    return res.stdout + res.stderr


def shrink(path: Path, colours: int = 128) -> None:
    """Quantize to a palette PNG (screenshots of a UI have few colours): small files, same look."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def printed(out: str, label: str) -> str:
    """The URL a focusml command printed after `label` (`label: open URL`, the tracking URI being a server)."""
    return re.search(re.escape(label) + r": open (\S+)", out).group(1)


def cam_series(page) -> dict:
    """On the run's Model metrics tab: expand the `cam_grid_val` card, move its step slider to the last
    epoch and open the image. The card (and its expanded view) shows a 256-pixel thumbnail; clicking it
    previews the logged PNG at full size over the expanded view, the slider still showing below it.
    Returns the expanded view's box, to crop the screenshot to."""
    page.get_by_placeholder("Search metric charts").first.fill("cam_grid_val")
    time.sleep(3)
    page.locator('[data-component-id="fullscreen_button_chartcard"]').first.click()
    time.sleep(3)
    modal = page.locator(".du-bois-light-modal-content").last
    track = modal.locator("span[dir=ltr][data-orientation=horizontal]").last.bounding_box()
    page.mouse.click(track["x"] + track["width"] - 3, track["y"] + track["height"] / 2)  # the last step
    time.sleep(3)
    modal.locator("img").first.click()
    time.sleep(4)
    page.mouse.move(2, 2)  # no hover marks
    time.sleep(1)
    return modal.bounding_box()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--work", default=None, help="folder for the store (kept, to look at afterwards)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="focusml-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                               "--artifacts-destination", str(work / "artifacts"), "--workers", "1"],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        wait_healthy(url)
        env = dict(os.environ, MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="demo", PYTHONUNBUFFERED="1")
        env.pop("MLFLOW_RUN_ID", None)
        links = {}
        for method in ("baseline", "upper_bound", "pas"):  # what `make demo` trains, shorter
            said = focusml(["train", "--method", method, "--epochs", str(args.epochs), "--seed", "0"], env)
            if method == "baseline":
                links["run"] = printed(said, "See it in the UI")
                links["runs"] = printed(said, "Its experiment's runs, headline metrics first")
        links["compare"] = printed(focusml(["compare", "--out", str(work / "comparison")], env),
                                   "The table is in the experiment's description")

        import mlflow
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright

        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("demo").experiment_id
        run = next(r for r in client.search_runs([exp]) if r.data.tags.get("focusml.method") == "baseline")
        model_id = run.outputs.model_outputs[0].model_id
        run_page = links["run"].split("?")[0]
        shots = {  # name: (url, viewport width, height)
            "mlflow-runs-view.png": (links["runs"], 1400, 760),
            "mlflow-run-page.png": (links["run"], 1400, 1300),
            "mlflow-comparison.png": (links["compare"], 1400, 900),
            # tall enough for the 920x820 grid at its own size above the slider
            "mlflow-cam-series.png": (f"{run_page}/model-metrics?workflowType=machine_learning", 1400, 1300),
            "mlflow-logged-model.png": (f"{url}/#/experiments/{exp}/models/{model_id}?workflowType=machine_learning",
                                        1400, 1300),
        }
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for name, (page_url, width, height) in shots.items():
                context = browser.new_context(viewport={"width": width, "height": height})  # a fresh profile
                page = context.new_page()
                page.goto(page_url)
                try:  # the UI keeps polling, so "network idle" may never come
                    page.wait_for_load_state("networkidle", timeout=15_000)
                except PlaywrightTimeout:
                    pass
                time.sleep(8)  # charts and images render after the data arrives
                page.mouse.move(2, 2)  # no hover marks
                clip = cam_series(page) if name == "mlflow-cam-series.png" else None
                if name == "mlflow-comparison.png":  # the description's first line and the runs, not the empty rest
                    clip = {"x": 0, "y": 0, "width": width, "height": 570}
                page.screenshot(path=str(out / name), clip=clip)
                shrink(out / name, 256 if name == "mlflow-cam-series.png" else 128)  # 256: the CAM heat maps' gradients
                print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")
                context.close()
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
