"""The mask tool's web server: a JSON API over a folder dataset plus the static page.

Standard library only (`http.server.ThreadingHTTPServer`), bound to 127.0.0.1 by default. Every
path in a request goes through `DatasetTree` (see paths.py): a malformed path is answered 400,
one that would leave the dataset root 403, so nothing outside the root is read or written.
Writes must be `Content-Type: application/json` (a cross-site page cannot send that without a
CORS preflight, which this server never grants) and, on a loopback address, the Host header
must name this server (defeats DNS rebinding).

API (paths are '<split>/<class>/<file>' relative to ROOT/images):
  GET  /api/info                          splits, their classes, whether a model gives CAMs
  GET  /api/list?split=S&class=C          the class's images with `annotated` flags
  GET  /api/image?path=P                  the image as PNG
  GET  /api/mask?path=P                   {width, height, data}: base64 of H·W bytes in {0, 1}
  GET  /api/cam?path=P                    {width, height, data, pred, prob}: the predicted
                                          class's positive CAM, min-max scaled to 0..255
  POST /api/mask        {path, width, height, data}           save one mask
  POST /api/apply_rect  {split, class|null, rect:{x,y,w,h}, erase}  one rectangle on every
                                          image of a class (or of the split); clipped per image
  POST /api/undo_apply                    restore the masks the last apply_rect changed
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np
from PIL import Image

from focusml import FocusmlError
from focusml.masktool.paths import DatasetTree, UnsafePath, split_rel

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8")}
MAX_BODY = 64 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class CamModel:
    """A CAM-capable model and how to feed it images (greyscale or RGB, optional resize)."""

    model: object
    classes: list[str] | None = None
    image_size: int | None = None
    run_id: str | None = None

    @property
    def in_channels(self) -> int:
        import torch.nn as nn

        return next(m for m in self.model.features.modules() if isinstance(m, nn.Conv2d)).in_channels


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()).decode("ascii")


class MaskToolApp:
    """The API's behaviour, independent of HTTP (the handler only routes and encodes)."""

    def __init__(self, root, cam: CamModel | None = None):
        self.tree = DatasetTree(root)
        self.cam_model = cam
        self._write_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._last_apply: dict[str, bytes | None] | None = None

    # -- reading ----------------------------------------------------------------------------
    def info(self) -> dict:
        splits = {s: self.tree.classes(s) for s in self.tree.splits()}
        cam = self.cam_model
        return {"root": self.tree.root.name, "splits": splits, "has_cam": cam is not None,
                "run_id": cam.run_id if cam else None, "model_classes": cam.classes if cam else None}

    def list_images(self, split: str, cls: str) -> dict:
        images = []
        for rel in self.tree.images(split, cls):
            mask_file = self.tree.mask_file(rel)
            annotated = False
            if mask_file.is_file():
                with Image.open(mask_file) as m:
                    annotated = m.convert("L").getbbox() is not None
            images.append({"path": rel, "name": rel.rsplit("/", 1)[1], "has_mask": mask_file.is_file(),
                           "annotated": annotated})
        return {"split": split, "class": cls, "images": images}

    def image_png(self, rel: str) -> bytes:
        with Image.open(self.tree.image_file(rel)) as img:
            img = img.convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        return buf.getvalue()

    def mask(self, rel: str) -> dict:
        m = self.tree.read_mask(rel)
        return {"path": rel, "width": m.shape[1], "height": m.shape[0], "data": _b64(m)}

    def cam(self, rel: str) -> dict:
        import torch

        from focusml.cam import class_cam, minmax, upsample

        if self.cam_model is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "no model: start the tool with --run RUN_ID to see CAMs")
        cm = self.cam_model
        with Image.open(self.tree.image_file(rel)) as img:
            size = img.size
            img = img.convert("L" if cm.in_channels == 1 else "RGB")
            if cm.image_size and img.size != (cm.image_size, cm.image_size):
                img = img.resize((cm.image_size, cm.image_size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())[None]
        with self._model_lock, torch.no_grad():
            cam, logits = class_cam(cm.model, x)
        prob = torch.softmax(logits, 1)[0]
        pred = int(prob.argmax())
        pos = upsample(cam.clamp_min(0).float(), (size[1], size[0]))
        scaled = (minmax(pos)[0] * 255).round().to(torch.uint8).numpy()
        name = cm.classes[pred] if cm.classes and pred < len(cm.classes) else str(pred)
        return {"path": rel, "width": size[0], "height": size[1], "data": _b64(scaled), "pred": name,
                "prob": float(prob[pred])}

    # -- writing ----------------------------------------------------------------------------
    def save_mask(self, body: dict) -> dict:
        rel = body.get("path")
        w, h = self.tree.image_size(rel)
        if (body.get("width"), body.get("height")) != (w, h):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"mask is {body.get('width')}×{body.get('height')}, image is {w}×{h}")
        try:
            raw = base64.b64decode(body.get("data", ""), validate=True)
        except (ValueError, TypeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "data is not base64") from None
        if len(raw) != w * h:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"data holds {len(raw)} bytes, expected {w * h}")
        mask = np.frombuffer(raw, dtype=np.uint8).reshape(h, w)
        with self._write_lock:
            self.tree.write_mask(rel, mask)
        return {"path": rel, "saved": True, "annotated": bool(mask.any())}

    def apply_rect(self, body: dict) -> dict:
        split, cls = body.get("split"), body.get("class")
        rect = body.get("rect") or {}
        try:
            x, y, w, h = (int(rect[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "rect must be {x, y, w, h} in image pixels") from None
        if w <= 0 or h <= 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, "rect must have a positive width and height")
        erase = bool(body.get("erase", False))
        classes = [cls] if cls is not None else self.tree.classes(split)
        if cls is not None and cls not in self.tree.classes(split):
            raise ApiError(HTTPStatus.NOT_FOUND, f"no class {cls!r} in split {split!r}")
        paths = [p for c in classes for p in self.tree.images(split, c)]
        backup: dict[str, bytes | None] = {}
        with self._write_lock:
            for rel in paths:
                m = self.tree.read_mask(rel)
                backup[rel] = self.tree.backup(rel)
                m[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = 0 if erase else 1
                self.tree.write_mask(rel, m)
            self._last_apply = backup
        return {"written": len(paths), "erase": erase}

    def undo_apply(self) -> dict:
        with self._write_lock:
            if not self._last_apply:
                raise ApiError(HTTPStatus.CONFLICT, "nothing to undo: no rectangle was applied to a class or split")
            for rel, data in self._last_apply.items():
                self.tree.restore(rel, data)
            n, self._last_apply = len(self._last_apply), None
        return {"restored": n}


def _handler(app: MaskToolApp, allowed_hosts: set[str] | None):
    class Handler(BaseHTTPRequestHandler):
        server_version = "focusml-masktool"

        def log_message(self, format, *args):  # the library never prints
            pass

        def _send(self, status, body: bytes, ctype: str):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status, obj):
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _dispatch(self, fn):
            if allowed_hosts is not None and self.headers.get("Host", "") not in allowed_hosts:
                return self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            try:
                fn()
            except UnsafePath as e:
                self._json(HTTPStatus.FORBIDDEN, {"error": str(e)})
            except ApiError as e:
                self._json(e.status, {"error": str(e)})
            except FileNotFoundError as e:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {e}"})
            except (FocusmlError, ValueError, TypeError) as e:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})

        def do_GET(self):
            self._dispatch(self._get)

        def do_POST(self):
            self._dispatch(self._post)

        def _get(self):
            url = urllib.parse.urlsplit(self.path)
            q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
            if url.path in STATIC:
                name, ctype = STATIC[url.path]
                return self._send(HTTPStatus.OK, resources.files("focusml.masktool").joinpath("static", name).read_bytes(), ctype)
            if url.path == "/api/info":
                return self._json(HTTPStatus.OK, app.info())
            if url.path == "/api/list":
                return self._json(HTTPStatus.OK, app.list_images(q.get("split", ""), q.get("class", "")))
            if url.path in ("/api/image", "/api/mask", "/api/cam"):
                rel = q.get("path", "")
                split_rel(rel)
                if url.path == "/api/image":
                    return self._send(HTTPStatus.OK, app.image_png(rel), "image/png")
                return self._json(HTTPStatus.OK, app.mask(rel) if url.path == "/api/mask" else app.cam(rel))
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")

        def _post(self):
            if self.headers.get_content_type() != "application/json":
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                raise ApiError(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
            if not isinstance(body, dict):
                raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            path = urllib.parse.urlsplit(self.path).path
            routes = {"/api/mask": app.save_mask, "/api/apply_rect": app.apply_rect,
                      "/api/undo_apply": lambda b: app.undo_apply()}
            if path not in routes:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
            self._json(HTTPStatus.OK, routes[path](body))

    return Handler


def make_server(app: MaskToolApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Bind the tool (port 0 = any free port); call `serve_forever()` on the result."""
    try:
        server = ThreadingHTTPServer((host, port), _handler(app, set()))
    except OSError as e:
        raise FocusmlError(f"cannot listen on {host}:{port} ({e.strerror}). Pick another --port.") from None
    bound = server.server_address[1]
    allowed = None  # bound to a shared interface on purpose: any Host name may reach it
    if host in LOOPBACK:
        allowed = {f"{n}:{bound}" for n in ("127.0.0.1", "localhost", "[::1]")}
    server.RequestHandlerClass = _handler(app, allowed)
    server.daemon_threads = True
    return server


def load_cam_model(run_id: str, tree: DatasetTree) -> CamModel:
    """The model of MLflow run `run_id` with the classes and image size it was trained with."""
    from focusml.tracking import load_run_model, run_info

    params = run_info(run_id).data.params
    image_size = int(params["image_size"]) if params.get("image_size") not in (None, "", "None") else None
    model = load_run_model(run_id, image_size=image_size or _first_image_size(tree))
    n = model.classifier.weight.shape[0]
    classes = tree.classes("train") if "train" in tree.splits() else None
    if classes is not None and len(classes) != n:
        classes = None  # the run used another dataset: show class indices
    return CamModel(model, classes, image_size, run_id)


def _first_image_size(tree: DatasetTree) -> int | None:
    for split in tree.splits():
        for cls in tree.classes(split):
            for rel in tree.images(split, cls):
                return max(tree.image_size(rel))
    return None
