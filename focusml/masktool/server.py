"""The mask tool's web server: a JSON API over a folder dataset plus the static page.

Standard library only (`http.server.ThreadingHTTPServer`), bound to 127.0.0.1 by default. Every
path in a request goes through `DatasetTree` (see paths.py): a malformed path is answered 400,
one that would leave the dataset root 403, so nothing outside the root is read or written.
Writes must be `Content-Type: application/json` (a cross-site page cannot send that without a
CORS preflight, which this server never grants) and, on a loopback address, the Host header
must name this server (defeats DNS rebinding).

Bad requests get a JSON `{"error": ...}` answer, never a dropped connection: a missing,
negative, non-numeric or conflicting `Content-Length` (411/400), a body over 64 MiB (413) or one
that does not arrive in time (408), a body that is not a JSON object (NaN/Infinity refused), and
any field of the wrong type or range (400: numbers must be finite whole numbers in range, not
booleans or strings). A body left unread is drained before the socket closes, so the client
still reads the answer.

API (paths are '<split>/<class>/<file>' relative to ROOT/images):
  GET  /api/info                          splits, their classes, whether a model gives CAMs
  GET  /api/list?split=S&class=C          the class's images with `annotated` flags; a file that is
                                          no image (or whose mask is not) is listed with `broken`:
                                          the reason (its header is read, not its pixels)
  GET  /api/image?path=P                  the image as PNG
  GET  /api/mask?path=P                   {width, height, data}: base64 of H·W bytes in {0, 1}
  GET  /api/cam?path=P                    {width, height, data, pred, prob}: the predicted
                                          class's positive CAM, min-max scaled to 0..255
  POST /api/mask        {path, width, height, data}           save one mask
  POST /api/apply_rect  {split, class|null, rect:{x,y,w,h}, erase}  one rectangle on every
                                          image of a class (or of the split); clipped per image
  POST /api/undo_apply                    restore the masks the last apply_rect changed

With a proposals file (`focusml masks serve ROOT --proposals FILE`, see proposals.py):
  GET  /api/proposals                     {file, run_id, grid, summary, next, proposals: [{id, rank,
                                          scope, size, flip_rate, members (count), answer}]}
  GET  /api/proposal?id=ID                {id, rank, scope, size, flip_rate, grid, region, answer,
                                          picked, members: [{path, cells, state: none|book|drawn}]}
  POST /api/answer      {id, answer: "yes"|"no"|"mixed", members?: [paths]}  members only with
                                          "mixed"; writes the masks; {written, kept_drawn, removed,
                                          skipped, summary, next}
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np

from focusml import FocusmlError
from focusml.core.data.folder import eight_bit, image_array
from focusml.core.proposals import cells_to_text
from focusml.masktool.paths import BrokenImage, DatasetTree, UnsafePath, open_image, split_rel
from focusml.masktool.proposals import ANSWERS, ProposalBook

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8")}
MAX_BODY = 64 * 1024 * 1024
MAX_COORD = 2**31 - 1  # largest pixel coordinate or size a request may name
REQUEST_TIMEOUT = 30.0  # seconds a client may take to send a request line, headers or body
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


def _show(value) -> str:
    """A short JSON-ish rendering of a request value for error messages."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return "a number too large to use"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def whole_number(value, name: str, minimum: int) -> int:
    """`value` as an int in [minimum, MAX_COORD]; ApiError 400 for booleans, strings, NaN, ±inf, fractions."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value, ok = int(value), True
    if not ok or not minimum <= value <= MAX_COORD:
        raise ApiError(HTTPStatus.BAD_REQUEST,
                       f"{name} must be a whole number from {minimum} to {MAX_COORD}, got {_show(value)}")
    return value


def text_field(body: dict, name: str, *, optional: bool = False) -> str | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be a string{' or null' if optional else ''}, "
                                               f"got {_show(value)}")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()).decode("ascii")


class MaskToolApp:
    """The API's behaviour, independent of HTTP (the handler only routes and encodes)."""

    def __init__(self, root, cam: CamModel | None = None, proposals=None):
        """`proposals`: path of a proposals file inside `root` (opened and validated here: FocusmlError if bad)."""
        self.tree = DatasetTree(root)
        self.cam_model = cam
        self.book = ProposalBook.open(self.tree, proposals) if proposals is not None else None
        self._write_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._last_apply: dict[str, bytes | None] | None = None

    # -- reading ----------------------------------------------------------------------------
    def info(self) -> dict:
        splits = {s: self.tree.classes(s) for s in self.tree.splits()}
        cam = self.cam_model
        return {"root": self.tree.root.name, "splits": splits, "has_cam": cam is not None,
                "run_id": cam.run_id if cam else None, "model_classes": cam.classes if cam else None,
                "proposals": self.book.path.name if self.book else None}

    def list_images(self, split: str, cls: str) -> dict:
        images = []
        for rel in self.tree.images(split, cls):
            mask_file = self.tree.mask_file(rel)
            item = {"path": rel, "name": rel.rsplit("/", 1)[1], "has_mask": mask_file.is_file(), "annotated": False}
            try:  # one unreadable file is marked, the rest of the class still lists
                self.tree.image_size(rel)
                if mask_file.is_file():
                    with open_image(mask_file, rel, "mask") as m:
                        item["annotated"] = m.convert("L").getbbox() is not None
            except BrokenImage as e:
                item["broken"] = str(e)
            images.append(item)
        return {"split": split, "class": cls, "images": images}

    def image_png(self, rel: str) -> bytes:
        with open_image(self.tree.image_file(rel), rel) as img:
            img = eight_bit(img, "RGB")  # the loader's decoding: a 16-bit or float image shows as the model sees it
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        return buf.getvalue()

    def mask(self, rel: str) -> dict:
        m = self.tree.read_mask(rel)
        return {"path": rel, "width": m.shape[1], "height": m.shape[0], "data": _b64(m)}

    def cam(self, rel: str) -> dict:
        import torch

        from focusml.core.cam import class_cam, minmax, upsample

        if self.cam_model is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "no model: start the tool with --run RUN_ID to see CAMs")
        cm = self.cam_model
        with open_image(self.tree.image_file(rel), rel) as img:
            size = img.size
            arr = image_array(img, "L" if cm.in_channels == 1 else "RGB",  # as the loader decodes and resizes it
                              (cm.image_size, cm.image_size) if cm.image_size else size)
        x = torch.from_numpy(arr.astype(np.float32) / 255.0)[None]
        with self._model_lock, torch.no_grad():
            cam, logits = class_cam(cm.model, x)
        prob = torch.softmax(logits, 1)[0]
        pred = int(prob.argmax())
        pos = upsample(cam.clamp_min(0).float(), (size[1], size[0]))
        scaled = (minmax(pos)[0] * 255).round().to(torch.uint8).numpy()
        name = cm.classes[pred] if cm.classes and pred < len(cm.classes) else str(pred)
        return {"path": rel, "width": size[0], "height": size[1], "data": _b64(scaled), "pred": name,
                "prob": float(prob[pred])}

    # -- proposals --------------------------------------------------------------------------
    def _book(self) -> ProposalBook:
        if self.book is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "no proposals: start the tool with --proposals FILE "
                                                 "(the file `focusml discover RUN_ID` writes)")
        return self.book

    def _proposal(self, pid):
        book = self._book()
        try:
            return book.proposal(pid)
        except KeyError:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no proposal {_show(pid)} in {book.path.name}") from None

    def proposals(self) -> dict:
        book = self._book()
        nxt = book.next()
        items = [{"id": p.id, "rank": p.rank, "scope": p.scope, "size": p.size, "flip_rate": p.flip_rate,
                  "members": len(p.members), "answer": book.answers.get(p.id)} for p in book.proposals]
        return {"file": book.path.name, **book.header, "summary": book.summary(),
                "next": nxt.id if nxt else None, "proposals": items}

    def proposal(self, pid: str) -> dict:
        p = self._proposal(pid)
        book = self.book
        with self._write_lock:
            members = [{"path": m.path, "cells": cells_to_text(m.cells), "state": book.member_state(m.path)}
                       for m in p.members]
        return {"id": p.id, "rank": p.rank, "scope": p.scope, "size": p.size, "flip_rate": p.flip_rate,
                "grid": book.header["grid"], "region": cells_to_text(p.region), "answer": book.answers.get(p.id),
                "picked": book.picked.get(p.id, []), "members": members}

    def answer(self, body: dict) -> dict:
        pid = text_field(body, "id")
        answer = text_field(body, "answer")
        if answer not in ANSWERS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"answer must be one of {', '.join(ANSWERS)}, got {_show(answer)}")
        members = body.get("members")
        if members is not None and not (isinstance(members, list) and all(isinstance(m, str) for m in members)):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"members must be a list of image paths, got {_show(members)}")
        if members is not None and answer != "mixed":
            raise ApiError(HTTPStatus.BAD_REQUEST, 'members are sent with the answer "mixed" only')
        self._proposal(pid)
        book = self.book
        with self._write_lock:
            res = book.answer(pid, answer, members)
        nxt = book.next()
        return {**res, "summary": book.summary(), "next": nxt.id if nxt else None}

    # -- writing ----------------------------------------------------------------------------
    def save_mask(self, body: dict) -> dict:
        rel = text_field(body, "path")
        width, height = whole_number(body.get("width"), "width", 1), whole_number(body.get("height"), "height", 1)
        data = text_field(body, "data")
        w, h = self.tree.image_size(rel)
        if (width, height) != (w, h):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"mask is {width}×{height}, image is {w}×{h}")
        try:
            raw = base64.b64decode(data, validate=True)
        except (ValueError, TypeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "data is not base64") from None
        if len(raw) != w * h:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"data holds {len(raw)} bytes, expected {w * h}")
        mask = np.frombuffer(raw, dtype=np.uint8).reshape(h, w)
        with self._write_lock:
            self.tree.write_mask(rel, mask)
        return {"path": rel, "saved": True, "annotated": bool(mask.any())}

    def apply_rect(self, body: dict) -> dict:
        split, cls = text_field(body, "split"), text_field(body, "class", optional=True)
        rect = body.get("rect")
        if not isinstance(rect, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"rect must be an object {{x, y, w, h}} in image pixels, got {_show(rect)}")
        x, y = (whole_number(rect.get(k), f"rect.{k}", 0) for k in ("x", "y"))
        w, h = (whole_number(rect.get(k), f"rect.{k}", 1) for k in ("w", "h"))
        erase = body.get("erase", False)
        if not isinstance(erase, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"erase must be true or false, got {_show(erase)}")
        classes = [cls] if cls is not None else self.tree.classes(split)
        if cls is not None and cls not in self.tree.classes(split):
            raise ApiError(HTTPStatus.NOT_FOUND, f"no class {cls!r} in split {split!r}")
        paths, skipped = [], []
        for rel in (p for c in classes for p in self.tree.images(split, c)):
            try:  # an unreadable image gets no mask; the others still do
                self.tree.image_size(rel)
                paths.append(rel)
            except BrokenImage:
                skipped.append(rel)
        backup: dict[str, bytes | None] = {}
        with self._write_lock:
            for rel in paths:  # refuse before the first write, not half way through the class
                self.tree.check_writable(rel)
            try:
                for rel in paths:
                    m = self.tree.read_mask(rel)
                    old = self.tree.backup(rel)
                    m[y:y + h, x:x + w] = 0 if erase else 1
                    self.tree.write_mask(rel, m)
                    backup[rel] = old
            except BaseException:
                for rel, data in backup.items():  # all or nothing: put back what was written
                    try:
                        self.tree.restore(rel, data)
                    except (OSError, FocusmlError):
                        pass
                raise
            self._last_apply = backup
        return {"written": len(paths), "erase": erase, "skipped": skipped}

    def undo_apply(self) -> dict:
        with self._write_lock:
            if not self._last_apply:
                raise ApiError(HTTPStatus.CONFLICT, "nothing to undo: no rectangle was applied to a class or split")
            for rel in self._last_apply:  # refuse before the first write
                self.tree.check_writable(rel)
            for rel, data in self._last_apply.items():
                self.tree.restore(rel, data)
            n, self._last_apply = len(self._last_apply), None
        return {"restored": n}


def _handler(app: MaskToolApp, allowed_hosts: set[str] | None, request_timeout: float = REQUEST_TIMEOUT):
    class Handler(BaseHTTPRequestHandler):
        server_version = "focusml-masktool"
        timeout = request_timeout  # socket timeout: a stalled client cannot hold a thread forever
        _unread_body = False  # a POST answered before its body was read: drain it before closing

        def log_message(self, format, *args):  # the library never prints
            pass

        def finish(self):
            super().finish()
            if self._unread_body:
                self._linger()

        def _linger(self, limit: int = MAX_BODY + (1 << 20), seconds: float = 2.0) -> None:
            """Half-close, then read and drop what the client still sends, so that closing the socket
            does not reset the connection (which can discard the answer before the client reads it)."""
            conn = self.connection
            try:
                conn.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + seconds
                while limit > 0 and (left := deadline - time.monotonic()) > 0:
                    conn.settimeout(left)
                    chunk = conn.recv(min(limit, 1 << 16))
                    if not chunk:
                        break
                    limit -= len(chunk)
            except OSError:
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
            self._unread_body = self.command == "POST"
            if allowed_hosts is not None and self.headers.get("Host", "") not in allowed_hosts:
                return self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            try:
                fn()
            except UnsafePath as e:
                self._json(HTTPStatus.FORBIDDEN, {"error": str(e)})
            except BrokenImage as e:
                self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(e)})
            except ApiError as e:
                self._json(e.status, {"error": str(e)})
            except FileNotFoundError as e:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {e}"})
            except TimeoutError:
                self._json(HTTPStatus.REQUEST_TIMEOUT,
                           {"error": f"the request body did not arrive within {request_timeout:g} s"})
            except (FocusmlError, ValueError, TypeError) as e:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away: nobody to answer
            except Exception as e:  # a bug must still answer, not drop the connection
                try:
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(e).__name__}): {e}"})
                except OSError:
                    pass

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
            if url.path == "/api/proposals":
                return self._json(HTTPStatus.OK, app.proposals())
            if url.path == "/api/proposal":
                return self._json(HTTPStatus.OK, app.proposal(q.get("id", "")))
            if url.path in ("/api/image", "/api/mask", "/api/cam"):
                rel = q.get("path", "")
                split_rel(rel)
                if url.path == "/api/image":
                    return self._send(HTTPStatus.OK, app.image_png(rel), "image/png")
                return self._json(HTTPStatus.OK, app.mask(rel) if url.path == "/api/mask" else app.cam(rel))
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")

        def _content_length(self) -> int:
            """The body's length from its headers; ApiError 411/400/413 when missing, malformed or too large."""
            if self.headers.get("Transfer-Encoding") is not None:
                raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not supported: send the body "
                                                           "with a Content-Length header")
            values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
            if not values:
                raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header missing: send the JSON body "
                                                           "with its length in bytes")
            if len(set(values)) > 1:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"conflicting Content-Length headers: {', '.join(values)[:60]}")
            value = values[0]
            if not (value.isascii() and value.isdigit()):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length {value[:40]!r} is not a whole number of bytes ≥ 0")
            if len(value) > 12 or int(value) > MAX_BODY:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"request body of {value[:40]} bytes is over the limit of {MAX_BODY} bytes")
            return int(value)

        def _post(self):
            if self.headers.get_content_type() != "application/json":
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            length = self._content_length()
            raw = self.rfile.read(length) if length else b""
            if len(raw) < length:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"body ended after {len(raw)} of {length} bytes")
            self._unread_body = False
            try:
                body = json.loads(raw or b"{}", parse_constant=_reject_constant)
            except (ValueError, RecursionError) as e:
                reason = str(e) if isinstance(e, ValueError) else "nested too deeply"
                raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {reason[:200]}") from None
            if not isinstance(body, dict):
                raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            path = urllib.parse.urlsplit(self.path).path
            routes = {"/api/mask": app.save_mask, "/api/apply_rect": app.apply_rect,
                      "/api/undo_apply": lambda b: app.undo_apply(), "/api/answer": app.answer}
            if path not in routes:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
            self._json(HTTPStatus.OK, routes[path](body))

    return Handler


def make_server(app: MaskToolApp, host: str = "127.0.0.1", port: int = 0,
                request_timeout: float = REQUEST_TIMEOUT) -> ThreadingHTTPServer:
    """Bind the tool (port 0 = any free port); call `serve_forever()` on the result.

    `request_timeout`: seconds a client may stall while sending a request before it is answered 408.
    """
    try:
        server = ThreadingHTTPServer((host, port), _handler(app, set(), request_timeout))
    except OSError as e:
        raise FocusmlError(f"cannot listen on {host}:{port} ({e.strerror}). Pick another --port.") from None
    bound = server.server_address[1]
    allowed = None  # bound to a shared interface on purpose: any Host name may reach it
    if host in LOOPBACK:
        allowed = {f"{n}:{bound}" for n in ("127.0.0.1", "localhost", "[::1]")}
    server.RequestHandlerClass = _handler(app, allowed, request_timeout)
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
