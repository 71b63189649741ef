"""Screenshots of the MLflow UI for docs/images/: a real `mlflow server` on 127.0.0.1, a few short
runs logged through `focusml`, then headless Chromium (Playwright, Debian's /usr/bin/chromium).

    python benchmarks/ui_screenshots.py --epochs 4 --out docs/images

Writes mlflow-run-page.png (a training run's overview), mlflow-cam-series.png (the run's `cam_grid_val`
image series: the card's expanded view at the last epoch, the step slider below, the image opened at full
size), mlflow-logged-model.png (the LoggedModel page: metrics and datasets) and mlflow-comparison.png (the
comparison run's chart), each a palette PNG under 300 KB.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def focusml(args: list[str], env: dict) -> str:
    res = subprocess.run([sys.executable, "-m", "focusml", *args], env=env, capture_output=True, text=True, check=True)
    return res.stdout


def shrink(path: Path, colours: int = 128) -> None:
    """Quantize to a palette PNG (screenshots of a UI have few colours): small files, same look."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def classic_view(page) -> None:
    """Switch the UI to its classic ML side ("Model training"); the choice lasts for the browser session."""
    switch = page.get_by_text("Model training", exact=True)
    if switch.count():
        switch.first.click()
        time.sleep(3)


def close_assistant(page) -> None:
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()
        time.sleep(1)


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
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--work", default=None, help="folder for the store (kept: a second call reuses its runs)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="focusml-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    fresh = not (work / "mlflow.db").exists()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                               "--artifacts-destination", str(work / "artifacts"), "--workers", "1"],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        wait(url)
        env = dict(os.environ, MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="demo", PYTHONUNBUFFERED="1")
        env.pop("MLFLOW_RUN_ID", None)
        if fresh:
            for method in ("baseline", "upper_bound"):
                for seed in (0, 1):
                    focusml(["train", "--method", method, "--epochs", str(args.epochs), "--seed", str(seed)], env)
        focusml(["compare", "--out", str(work / "comparison")], env)  # a fresh comparison run each call

        import mlflow
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright

        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("demo").experiment_id
        found = client.search_runs([exp], order_by=["attributes.start_time ASC"])
        run = next(r for r in found if r.data.tags.get("focusml.method") == "baseline")
        compare_id = [r.info.run_id for r in found if r.data.tags.get("focusml.kind") == "comparison"][-1]  # newest
        model_id = run.outputs.model_outputs[0].model_id
        shots = {
            "mlflow-run-page.png": (f"{url}/#/experiments/{exp}/runs/{run.info.run_id}", 1400, 1300),
            # tall enough for the 920x820 grid at its own size above the slider
            "mlflow-cam-series.png": (f"{url}/#/experiments/{exp}/runs/{run.info.run_id}/model-metrics", 1400, 1300),
            "mlflow-logged-model.png": (f"{url}/#/experiments/{exp}/models/{model_id}", 1400, 1100),
            "mlflow-comparison.png": (f"{url}/#/experiments/{exp}/runs/{compare_id}/artifacts/comparison/comparison.png",
                                      1400, 1150),
        }
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/#/experiments/{exp}/runs")
            time.sleep(6)
            classic_view(page)
            for name, (page_url, width, height) in shots.items():
                page.set_viewport_size({"width": width, "height": height})
                page.goto(page_url)
                try:  # the UI keeps polling, so "network idle" may never come
                    page.wait_for_load_state("networkidle", timeout=15_000)
                except PlaywrightTimeout:
                    pass
                time.sleep(6)  # charts and images render after the data arrives
                close_assistant(page)
                if name == "mlflow-logged-model.png":  # the final test metrics, with their dataset
                    page.get_by_placeholder("Search metrics").first.fill("/test")
                    time.sleep(3)
                clip = cam_series(page) if name == "mlflow-cam-series.png" else None
                page.screenshot(path=str(out / name), clip=clip)
                shrink(out / name, 256 if clip else 128)  # 256 colours: the CAM heat maps' gradients
                print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
