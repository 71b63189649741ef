"""The mask tool: safe paths, the JSON API over HTTP, and the page driven in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from focusml.masktool import CamModel, DatasetTree, MaskToolApp, UnsafePath, make_server
from focusml.masktool.paths import split_rel
from focusml.core.models import CamNet
from helpers import write_png

W, H = 12, 10  # not square, so a swapped axis shows


@pytest.fixture
def dataset(tmp_path):
    """ROOT with 2 classes × 3 images per split, one pre-existing mask, and a secret outside ROOT."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            for i in range(3):
                img = (rng.random((H, W)) * 120).astype(np.uint8)
                img[2:5, 3:7] = 250  # a bright block: the CAM test's model lights up there
                write_png(root / "images" / split / cls / f"img{i}.png", img)
    old = np.zeros((H, W), np.uint8)
    old[0, 0] = 255
    write_png(root / "masks" / "train" / "a" / "img0.png", old)
    outside = tmp_path / "outside"
    outside.mkdir()
    write_png(outside / "secret.png", np.full((H, W), 7, np.uint8))
    return root


def _serve(root, cam=None):
    server = make_server(MaskToolApp(root, cam), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def served(dataset):
    server, url = _serve(dataset)
    yield dataset, url
    server.shutdown()
    server.server_close()


def _req(url, body=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=hdrs, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _mask_on_disk(root: Path, rel: str) -> np.ndarray:
    split, cls, name = rel.split("/")
    with Image.open(root / "masks" / split / cls / (Path(name).stem + ".png")) as m:
        assert m.mode == "L"
        return np.asarray(m).copy()


# ---- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "train/../../x.png", "train/a/..",
                                 "train/a", "train/a/b/c.png", "train\\a\\img0.png", "train/a/.hidden.png",
                                 "", "C:/x/y.png", "train/a/img\0.png"])
def test_split_rel_refuses_malformed_paths(rel):
    with pytest.raises(UnsafePath):
        split_rel(rel)


def test_tree_refuses_symlinks_that_leave_the_root(dataset, tmp_path):
    os.symlink(tmp_path / "outside" / "secret.png", dataset / "images" / "train" / "a" / "link.png")
    os.symlink(tmp_path / "outside", dataset / "images" / "train" / "evil")
    os.symlink(dataset / "images" / "train" / "a" / "img1.png", dataset / "images" / "train" / "a" / "inner.png")
    tree = DatasetTree(dataset)
    assert tree.classes("train") == ["a", "b"]
    assert tree.images("train", "a") == ["train/a/img0.png", "train/a/img1.png", "train/a/img2.png", "train/a/inner.png"]
    with pytest.raises(UnsafePath):
        tree.image_file("train/a/link.png")
    with pytest.raises(UnsafePath):
        tree.image_file("train/evil/secret.png")
    assert tree.image_file("train/a/inner.png").name == "img1.png"  # a link inside the root is fine


# ---- HTTP API ----------------------------------------------------------------------------------


def test_path_traversal_requests_are_refused(served, tmp_path):
    root, url = served
    os.symlink(tmp_path / "outside" / "secret.png", root / "images" / "train" / "a" / "link.png")
    os.symlink(tmp_path / "outside", root / "images" / "train" / "evil")
    refused = [
        "/api/image?path=..%2F..%2Fetc%2Fpasswd",
        "/api/mask?path=..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/image?path=%2Fetc%2Fpasswd",
        "/api/image?path=train%2F..%2F..%2Foutside%2Fsecret.png",
        "/api/image?path=train%2Fa%2Flink.png",
        "/api/image?path=train%2Fevil%2Fsecret.png",
        "/api/mask?path=train%2Fevil%2Fsecret.png",
        "/api/list?split=..&class=outside",
        "/api/list?split=train&class=evil",
    ]
    for q in refused:
        status, body = _req(url + q)
        assert status == 403, (q, status, body)
        assert b"\x89PNG" not in body
    assert _req(url + "/../../etc/passwd")[0] == 404
    assert _req(url + "/static/..%2F..%2Fpaths.py")[0] == 404
    listing = json.loads(_req(url + "/api/list?split=train&class=a")[1])
    assert [im["name"] for im in listing["images"]] == ["img0.png", "img1.png", "img2.png"]  # link skipped
    assert json.loads(_req(url + "/api/info")[1])["splits"]["train"] == ["a", "b"]  # evil skipped

    mask = base64.b64encode(np.ones(W * H, np.uint8).tobytes()).decode()
    for path in ["../../outside/new.png", "/tmp/new.png", "train/evil/secret.png"]:
        status, _ = _req(url + "/api/mask", {"path": path, "width": W, "height": H, "data": mask})
        assert status == 403, path
    assert _req(url + "/api/apply_rect", {"split": "..", "class": "outside", "rect": {"x": 0, "y": 0, "w": 2, "h": 2}})[0] == 403
    # the masks folder of a class is a link out of the root: writing through it is refused
    (root / "masks" / "train" / "b").parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path / "outside", root / "masks" / "train" / "b")
    assert _req(url + "/api/mask", {"path": "train/b/img0.png", "width": W, "height": H, "data": mask})[0] == 403
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.png"]
    assert np.asarray(Image.open(tmp_path / "outside" / "secret.png")).max() == 7


def test_writes_need_json_and_this_host(served):
    root, url = served
    mask = base64.b64encode(np.ones(W * H, np.uint8).tobytes()).decode()
    body = json.dumps({"path": "train/a/img1.png", "width": W, "height": H, "data": mask}).encode()
    assert _req(url + "/api/mask", raw=body, headers={"Content-Type": "text/plain"})[0] == 415
    assert _req(url + "/api/mask", raw=body, headers={"Host": "evil.example:80"})[0] == 403
    assert not (root / "masks" / "train" / "a" / "img1.png").exists()
    assert _req(url + "/api/mask", {"path": "train/a/img1.png", "width": W + 1, "height": H, "data": mask})[0] == 400


def test_save_mask_writes_png_atomically(served):
    root, url = served
    m = np.zeros((H, W), np.uint8)
    m[1:4, 2:9] = 1
    status, body = _req(url + "/api/mask", {"path": "val/b/img2.png", "width": W, "height": H,
                                           "data": base64.b64encode(m.tobytes()).decode()})
    assert status == 200 and json.loads(body)["annotated"] is True
    np.testing.assert_array_equal(_mask_on_disk(root, "val/b/img2.png"), m * 255)
    assert [p.name for p in (root / "masks" / "val" / "b").iterdir()] == ["img2.png"]  # no temp file left
    got = json.loads(_req(url + "/api/mask?path=val%2Fb%2Fimg2.png")[1])
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(got["data"]), np.uint8).reshape(H, W), m)


def test_one_broken_image_or_mask_is_marked_and_the_class_still_lists(served):
    root, url = served
    (root / "images" / "train" / "a" / "img1.png").write_bytes(b"not a png at all")
    (root / "masks" / "train" / "a" / "img2.png").write_bytes(b"\x89PNG junk")
    status, body = _req(url + "/api/list?split=train&class=a")
    assert status == 200, body
    images = {im["name"]: im for im in json.loads(body)["images"]}
    assert sorted(images) == ["img0.png", "img1.png", "img2.png"]
    assert "broken" not in images["img0.png"] and images["img0.png"]["annotated"] is True
    assert "the image of train/a/img1.png is not a readable image" in images["img1.png"]["broken"]
    assert "the mask of train/a/img2.png is not a readable image" in images["img2.png"]["broken"]
    status, body = _req(url + "/api/image?path=train%2Fa%2Fimg1.png")  # that file alone: one clear error
    assert status == 422 and "not a readable image" in json.loads(body)["error"]
    # a rectangle on the class skips the unreadable image and masks the rest
    status, body = _req(url + "/api/apply_rect", {"split": "train", "class": "a", "rect": {"x": 0, "y": 0, "w": 2, "h": 2}})
    assert status == 422  # img2's mask cannot be read to add to: refused, nothing written
    (root / "masks" / "train" / "a" / "img2.png").unlink()
    status, body = _req(url + "/api/apply_rect", {"split": "train", "class": "a", "rect": {"x": 0, "y": 0, "w": 2, "h": 2}})
    assert status == 200 and json.loads(body)["skipped"] == ["train/a/img1.png"], body
    assert sorted(p.name for p in (root / "masks" / "train" / "a").iterdir()) == ["img0.png", "img2.png"]


def test_only_drawn_masks_are_written(served):
    root, url = served
    empty = base64.b64encode(np.zeros(W * H, np.uint8).tobytes()).decode()
    status, body = _req(url + "/api/mask", {"path": "val/a/img0.png", "width": W, "height": H, "data": empty})
    assert status == 200 and json.loads(body)["annotated"] is False
    assert not (root / "masks" / "val").exists()  # an untouched image gets no (empty) mask file
    # erasing a rectangle on a class writes nothing where there was no mask
    assert _req(url + "/api/apply_rect", {"split": "test", "class": None, "rect": {"x": 0, "y": 0, "w": 3, "h": 3},
                                          "erase": True})[0] == 200
    assert not (root / "masks" / "test").exists()
    # an existing mask erased to nothing is kept as the all-zero mask it now is
    status, _ = _req(url + "/api/mask", {"path": "train/a/img0.png", "width": W, "height": H, "data": empty})
    assert status == 200 and _mask_on_disk(root, "train/a/img0.png").max() == 0


def _bright_model() -> CamNet:
    """CAM of class 0 = the image itself (1×1 conv of weight 1), and class 0 always wins."""
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0), conv.bias.zero_()
    model = CamNet(nn.Sequential(conv, nn.ReLU()), 1, 2)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0], [-1.0]])), model.classifier.bias.zero_()
    return model.eval()


def test_cam_endpoint_returns_min_max_scaled_cam(dataset):
    server, url = _serve(dataset, CamModel(_bright_model(), ["a", "b"]))
    try:
        got = json.loads(_req(url + "/api/cam?path=train%2Fb%2Fimg1.png")[1])
    finally:
        server.shutdown(), server.server_close()
    img = np.asarray(Image.open(dataset / "images" / "train" / "b" / "img1.png")).astype(np.float64)
    want = np.round((img - img.min()) / (img.max() - img.min()) * 255)
    cam = np.frombuffer(base64.b64decode(got["data"]), np.uint8).reshape(H, W)
    assert got["pred"] == "a" and (got["width"], got["height"]) == (W, H)
    assert np.abs(cam.astype(int) - want).max() <= 1


# ---- the page in headless Chromium (the `browser` fixture: conftest.py) ---------------------------


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(10_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def _open(page, url, path="train/a/img0.png"):
    """Load the page, pick the image's split and class from the menus and click it in the list."""
    split, cls, _ = path.split("/")
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    if page.input_value("#split") != split:
        page.select_option("#split", split)
        page.wait_for_selector(f"#canvas[data-path^='{split}/']")
    if page.input_value("#class") != cls:
        page.select_option("#class", cls)
        page.wait_for_selector(f"#canvas[data-path^='{split}/{cls}/']")
    page.click(f"#list li[data-path='{path}']")
    page.wait_for_selector(f"#canvas[data-path='{path}']")


def _drag(page, x0, y0, x1, y1):
    """Drag from pixel (x0, y0) to pixel (x1, y1) of the image on the canvas."""
    box = page.locator("#canvas").bounding_box()
    at = lambda x, y: (box["x"] + (x + 0.5) * box["width"] / W, box["y"] + (y + 0.5) * box["height"] / H)  # noqa: E731
    page.mouse.move(*at(x0, y0))
    page.mouse.down()
    page.mouse.move(*at((x0 + x1) / 2, (y0 + y1) / 2), steps=3)
    page.mouse.move(*at(x1, y1), steps=3)
    page.mouse.up()


def _save(page, path):
    page.click("#save")
    page.wait_for_function("p => document.getElementById('status').textContent === 'saved ' + p", arg=path)


@pytest.mark.browser
def test_browser_draw_rectangle_and_save(served, page):
    root, url = served
    _open(page, url, "train/b/img1.png")
    _drag(page, 2, 3, 6, 7)
    _save(page, "train/b/img1.png")
    want = np.zeros((H, W), np.uint8)
    want[3:8, 2:7] = 255
    np.testing.assert_array_equal(_mask_on_disk(root, "train/b/img1.png"), want)

    # erase a part with the brush, undo it, erase a rectangle instead
    page.check("#tool-brush")
    page.check("#erase")
    page.fill("#brush", "0")
    _drag(page, 2, 3, 2, 7)
    page.keyboard.press("Control+z")
    page.check("#tool-rect")
    _drag(page, 5, 3, 6, 7)
    _save(page, "train/b/img1.png")
    want[3:8, 5:7] = 0
    np.testing.assert_array_equal(_mask_on_disk(root, "train/b/img1.png"), want)
    assert page.locator("#list li.annotated").count() == 1


@pytest.mark.browser
def test_browser_apply_rectangle_to_class_and_undo(served, page):
    root, url = served
    _open(page, url, "train/a/img1.png")
    _drag(page, 8, 0, 11, 2)  # a "watermark" in the top-right corner
    page.click("#apply-class")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('applied the rectangle on 3 masks')")
    for i in range(3):
        m = _mask_on_disk(root, f"train/a/img{i}.png")
        assert (m[0:3, 8:12] == 255).all(), i
        assert m.sum() == 255 * (12 + (1 if i == 0 else 0)), i  # img0 keeps its old pixel
    assert not (root / "masks" / "train" / "b").exists()  # the other class is untouched
    assert page.locator("#list li.annotated").count() == 3

    page.click("#undo-apply")
    page.wait_for_function("document.getElementById('status').textContent === 'restored 3 masks'")
    old = _mask_on_disk(root, "train/a/img0.png")
    assert old.sum() == 255 and old[0, 0] == 255
    # img1 was saved with its own rectangle before the apply (unsaved edits are saved first): kept
    assert _mask_on_disk(root, "train/a/img1.png").sum() == 12 * 255
    assert sorted(p.name for p in (root / "masks" / "train" / "a").iterdir()) == ["img0.png", "img1.png"]

    page.select_option("#split", "val")
    page.wait_for_selector("#canvas[data-path='val/a/img0.png']")
    _drag(page, 0, 9, 1, 9)
    page.click("#apply-split")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('applied the rectangle on 6 masks')")
    for cls in ("a", "b"):
        for i in range(3):
            m = _mask_on_disk(root, f"val/{cls}/img{i}.png")
            assert m[9, 0:2].tolist() == [255, 255] and m.sum() == 2 * 255


@pytest.mark.browser
def test_browser_accepts_cam_suggestion(dataset, page):
    server, url = _serve(dataset, CamModel(_bright_model(), ["a", "b"]))
    try:
        _open(page, url, "test/a/img2.png")
        assert "predicted: a" in page.text_content("#pred")
        page.evaluate("() => { const t = document.getElementById('threshold'); t.value = '0.9';"
                      " t.dispatchEvent(new Event('input')); }")
        page.click("#accept")
        _save(page, "test/a/img2.png")
    finally:
        server.shutdown(), server.server_close()
    want = np.zeros((H, W), np.uint8)
    want[2:5, 3:7] = 255  # only the bright block reaches 0.9 of the min-max scaled CAM
    np.testing.assert_array_equal(_mask_on_disk(dataset, "test/a/img2.png"), want)


# ---- `focusml masks serve --run` end to end ---------------------------------------------------------


def test_cli_serves_with_a_runs_cam(dataset, tracking_env, cli_env, tiny_config):
    import re
    import subprocess
    import sys
    import time

    from focusml.tracking import run

    rid = run(tiny_config(dataset="folder", data_root=str(dataset), experiment="masktool-test")).run_id
    proc = subprocess.Popen([str(Path(sys.executable).parent / "focusml"), "masks", "serve", str(dataset),
                             "--run", rid, "--port", "0"], env=cli_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, url, lines = time.time() + 120, None, []
        while url is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            url = found.group(0) if found else None
        assert url, "".join(lines)
        info = json.loads(_req(url + "/api/info")[1])
        assert info["has_cam"] and info["run_id"] == rid and info["model_classes"] == ["a", "b"]
        status, body = _req(url + "/api/cam?path=val%2Fb%2Fimg0.png")
        cam = json.loads(body)
        assert status == 200 and cam["pred"] in ("a", "b") and 0 <= cam["prob"] <= 1
        values = np.frombuffer(base64.b64decode(cam["data"]), np.uint8)
        assert values.size == W * H and values.max() == 255  # min-max scaled at the image's size
        assert _req(url + "/api/image?path=..%2F..%2Fetc%2Fpasswd")[0] == 403
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stderr.close()
