"""The mask tool under hostile input: links inside the root, malformed Content-Length, bad numbers.

Every test talks HTTP to the real server (raw sockets where the headers themselves are the input)
and checks the files on disk afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focusml.masktool import MaskToolApp, make_server
from helpers import write_png

W, H = 12, 10


@pytest.fixture
def root(tmp_path):
    """ROOT with classes a, b × 3 images in train and val, and one existing mask (train/a/img0)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(3):
                write_png(root / "images" / split / cls / f"img{i}.png", (rng.random((H, W)) * 200).astype(np.uint8))
    old = np.zeros((H, W), np.uint8)
    old[0, 0] = 255
    write_png(root / "masks" / "train" / "a" / "img0.png", old)
    return root


def _start(root, **kw):
    server = make_server(MaskToolApp(root), "127.0.0.1", 0, **kw)
    # a short poll: `shutdown` waits up to one poll interval, and every test of this file stops a server
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server


@pytest.fixture
def server(root):
    srv = _start(root)
    yield srv
    srv.shutdown()
    srv.server_close()


def _snapshot(root: Path) -> dict[str, bytes]:
    """Bytes of every regular file under images/ and masks/ (links are reported as such)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = b"link->" + os.fsencode(os.readlink(p))
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def _http(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
          *, content_length: bool = True, timeout: float = 20) -> tuple[int, dict, bytes]:
    """One request over a raw socket; returns (status, headers, body) of the answer."""
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        if content_length:
            hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return _exchange(port, head.encode() + (body or b""), timeout)


def _exchange(port: int, data: bytes, timeout: float = 20) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _read_answer(s)


def _read_answer(s: socket.socket) -> tuple[int, dict, bytes]:
    buf = b""
    while True:
        chunk = s.recv(65536)  # a reset or a hang fails the test here (timeout)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def _json_error(answer, status: int, *needles: str) -> str:
    got_status, headers, body = answer
    assert got_status == status, (got_status, body)
    assert headers["content-type"] == "application/json"
    msg = json.loads(body)["error"]
    for n in needles:
        assert n in msg, msg
    return msg


def _port(server) -> int:
    return server.server_address[1]


def _post(server, path: str, obj=None, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(obj).encode()
    return _http(_port(server), "POST", path, body)


def _mask_body(rel: str, value: int = 1) -> dict:
    return {"path": rel, "width": W, "height": H,
            "data": base64.b64encode(np.full(W * H, value, np.uint8).tobytes()).decode()}


# ---- symbolic links inside the root ------------------------------------------------------------


def test_mask_file_linked_to_a_training_image_is_refused_and_the_image_kept(root, server):
    image = root / "images" / "train" / "b" / "img1.png"
    link = root / "masks" / "train" / "b" / "img1.png"
    link.parent.mkdir(parents=True)
    os.symlink(image, link)
    rel_link = root / "masks" / "train" / "b" / "img2.png"
    os.symlink("../../../images/train/b/img2.png", rel_link)  # a relative link, also inside the root
    before = _snapshot(root)
    for rel, name in (("train/b/img1.png", "img1.png"), ("train/b/img2.png", "img2.png")):
        msg = _json_error(_post(server, "/api/mask", _mask_body(rel)), 403, f"masks/train/b/{name}",
                          "symbolic link")
        assert "never writes through links" in msg
    assert _snapshot(root) == before  # the images, the links and nothing else: no temp file left
    assert link.is_symlink() and rel_link.is_symlink()


@pytest.mark.parametrize("linked", ["masks", "masks/train", "masks/train/b"])
def test_mask_folder_linked_inside_the_root_is_refused(root, server, linked):
    """A link on masks/, masks/<split>/ or masks/<split>/<class>/ pointing at images/ would put
    masks over the training images; every such write is refused."""
    target = root / "images" / Path(linked).relative_to("masks")
    link = root / linked
    shutil.rmtree(root / "masks")
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    before = _snapshot(root)
    _json_error(_post(server, "/api/mask", _mask_body("train/b/img0.png")), 403, f"{linked} is a symbolic link")
    _json_error(_post(server, "/api/apply_rect", {"split": "train", "class": "b", "rect": {"x": 0, "y": 0, "w": 3, "h": 3}}),
                403, "symbolic link")
    assert _snapshot(root) == before


def test_hard_linked_mask_is_replaced_not_written_into(root, server, tmp_path):
    """The atomic write renames a new file onto the mask's name, so a hard link's other name keeps its bytes."""
    image = root / "images" / "train" / "b" / "img0.png"
    mask = root / "masks" / "train" / "b" / "img0.png"
    mask.parent.mkdir(parents=True)
    os.link(image, mask)
    before = image.read_bytes()
    assert _post(server, "/api/mask", _mask_body("train/b/img0.png"))[0] == 200
    assert image.read_bytes() == before
    assert not os.path.samefile(image, mask)
    with Image.open(mask) as m:
        assert m.mode == "L" and np.asarray(m).min() == 255
    assert sorted(p.name for p in mask.parent.iterdir()) == ["img0.png"]
    ref = tmp_path / "ref"
    ref.write_bytes(b"")  # a file made the ordinary way: the umask decides its mode, as for masks
    assert mask.stat().st_mode & 0o777 == ref.stat().st_mode & 0o777


def test_apply_to_class_with_one_linked_mask_writes_nothing(root, server):
    os.symlink(root / "images" / "train" / "a" / "img2.png", root / "masks" / "train" / "a" / "img2.png")
    before = _snapshot(root)
    for cls in ("a", None):
        _json_error(_post(server, "/api/apply_rect", {"split": "train", "class": cls,
                                                      "rect": {"x": 1, "y": 1, "w": 4, "h": 4}}),
                    403, "masks/train/a/img2.png is a symbolic link")
        assert _snapshot(root) == before  # refused before the first write: no half-applied class
    assert _http(_port(server), "POST", "/api/undo_apply", b"{}")[0] == 409  # nothing was applied


def test_undo_apply_refuses_a_mask_that_became_a_link(root, server):
    assert _post(server, "/api/apply_rect", {"split": "val", "class": "a", "rect": {"x": 0, "y": 0, "w": 2, "h": 2}})[0] == 200
    created = root / "masks" / "val" / "a" / "img1.png"
    created.unlink()
    os.symlink(root / "images" / "val" / "a" / "img1.png", created)  # undo would delete/overwrite through it
    before = _snapshot(root)
    _json_error(_post(server, "/api/undo_apply", {}), 403, "masks/val/a/img1.png is a symbolic link")
    assert _snapshot(root) == before
    created.unlink()
    assert _post(server, "/api/undo_apply", {})[0] == 200  # the link gone, undo goes through
    assert not (root / "masks" / "val" / "a").exists() or not any((root / "masks" / "val" / "a").iterdir())


# ---- Content-Length ----------------------------------------------------------------------------


BODY = json.dumps({}).encode()


@pytest.mark.parametrize("value,status,needle", [
    (None, 411, "Content-Length header missing"),
    ("-1", 400, "is not a whole number of bytes"),
    ("-0", 400, "is not a whole number of bytes"),
    ("abc", 400, "is not a whole number of bytes"),
    ("1.5", 400, "is not a whole number of bytes"),
    ("+2", 400, "is not a whole number of bytes"),
    ("0x10", 400, "is not a whole number of bytes"),
    ("", 400, "is not a whole number of bytes"),
    (str(64 * 1024 * 1024 + 1), 413, "over the limit"),
    ("9" * 40, 413, "over the limit"),
])
def test_bad_content_length_gets_a_json_error(server, value, status, needle):
    head = {} if value is None else {"Content-Length": value}
    answer = _http(_port(server), "POST", "/api/undo_apply", BODY, head, content_length=False)
    _json_error(answer, status, needle)
    assert _http(_port(server), "GET", "/api/info")[0] == 200  # the server is still there


def test_conflicting_content_lengths_and_chunked_bodies_are_refused(server):
    port = _port(server)
    head = (f"POST /api/undo_apply HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{}")
    _json_error(_exchange(port, head.encode()), 400, "conflicting Content-Length")
    chunked = (f"POST /api/undo_apply HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    _json_error(_exchange(port, chunked.encode()), 411, "Content-Length")


def test_oversized_body_already_on_the_wire_still_gets_its_answer(server):
    """The client sends 4 MiB of a body announced as 100 MB before reading: it gets the 413, not a reset."""
    port = _port(server)
    head = (f"POST /api/mask HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100_000_000}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head)
        chunk = b" " * 65536
        for _ in range(64):
            try:
                s.sendall(chunk)
            except OSError:
                break  # the server half-closed and drains; our data need not all go through
        _json_error(_read_answer(s), 413, "over the limit")


def test_body_shorter_than_its_content_length_times_out_with_408(root):
    srv = _start(root, request_timeout=1.0)
    try:
        port = _port(srv)
        head = (f"POST /api/undo_apply HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\nConnection: close\r\n\r\n{").encode()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(head)  # 1 byte of 100, then silence
            _json_error(_read_answer(s), 408, "did not arrive within 1 s")
        assert time.monotonic() - t0 < 10
        # the same with the client closing its side early: 400, the body ended
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(head)
            s.shutdown(socket.SHUT_WR)
            _json_error(_read_answer(s), 400, "body ended after 1 of 100 bytes")
    finally:
        srv.shutdown()
        srv.server_close()


# ---- numbers and types in JSON bodies ----------------------------------------------------------


def _apply_raw(x: str = "0", y: str = "0", w: str = "2", h: str = "2", erase: str = "false", cls: str = '"a"') -> bytes:
    return (f'{{"split": "train", "class": {cls}, "rect": {{"x": {x}, "y": {y}, "w": {w}, "h": {h}}}, '
            f'"erase": {erase}}}').encode()


@pytest.mark.parametrize("field,value", [
    ("x", "1e400"), ("x", "-1e400"), ("y", "1e400"), ("w", "1e400"), ("h", "1e999"),
    ("x", "true"), ("w", "false"), ("x", '"3"'), ("x", "null"), ("x", "[1]"), ("x", "{}"),
    ("x", "-1"), ("y", "-5"), ("w", "0"), ("h", "-3"), ("x", "2.5"), ("w", "0.5"),
    ("x", "1" + "0" * 30), ("w", "2147483648"), ("x", "1e300"),
])
def test_bad_rect_numbers_get_400_naming_the_field(root, server, field, value):
    before = _snapshot(root)
    answer = _post(server, "/api/apply_rect", raw=_apply_raw(**{field: value}))
    _json_error(answer, 400, f"rect.{field} must be a whole number from")
    assert _snapshot(root) == before


@pytest.mark.parametrize("raw,needle", [
    (_apply_raw(x="NaN"), "NaN is not a JSON number"),
    (_apply_raw(w="Infinity"), "Infinity is not a JSON number"),
    (_apply_raw(h="-Infinity"), "-Infinity is not a JSON number"),
    (_apply_raw(x="1" * 5000), "body is not JSON"),  # beyond Python's int-parsing limit
    (b"[" * 100_000 + b"]" * 100_000, "body is not JSON"),  # nested too deeply for the parser
    (b'{"split": "train"', "body is not JSON"),
    (b"\xff\xfe{", "body is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (_apply_raw(erase='"false"'), "erase must be true or false"),
    (_apply_raw(erase="0"), "erase must be true or false"),
    (_apply_raw(cls="7"), "class must be a string or null"),
    (b'{"split": 3, "class": null, "rect": {"x": 0, "y": 0, "w": 1, "h": 1}}', "split must be a string"),
    (b'{"split": "train", "class": "a", "rect": [0, 0, 1, 1]}', "rect must be an object"),
    (b'{"split": "train", "class": "a"}', "rect must be an object"),
], ids=["nan", "infinity", "minus-infinity", "5000-digit-int", "deep-nesting", "truncated", "not-utf8",
        "list-body", "erase-string", "erase-int", "class-int", "split-int", "rect-list", "rect-missing"])
def test_malformed_apply_bodies_get_400(root, server, raw, needle):
    before = _snapshot(root)
    _json_error(_post(server, "/api/apply_rect", raw=raw), 400, needle)
    assert _snapshot(root) == before


@pytest.mark.parametrize("change,needle", [
    ({"width": True}, "width must be a whole number"),
    ({"width": "12"}, "width must be a whole number"),
    ({"height": float("inf")}, "height must be a whole number"),  # sent as Infinity: refused by the parser
    ({"height": -10}, "height must be a whole number"),
    ({"width": 12.5}, "width must be a whole number"),
    ({"width": 10**40}, "width must be a whole number"),
    ({"width": None}, "width must be a whole number"),
    ({"path": 7}, "path must be a string"),
    ({"path": ["train", "a", "img1.png"]}, "path must be a string"),
    ({"data": 123}, "data must be a string"),
    ({"data": "%%%"}, "data is not base64"),
])
def test_malformed_save_bodies_get_400(root, server, change, needle):
    body = {**_mask_body("train/a/img1.png"), **change}
    raw = json.dumps(body).encode()
    if change.get("height") == float("inf"):
        raw = raw.replace(b"Infinity", b"1e400")
    before = _snapshot(root)
    _json_error(_post(server, "/api/mask", raw=raw), 400, needle)
    assert _snapshot(root) == before


def test_valid_requests_still_work_including_integral_floats(root, server):
    assert _post(server, "/api/apply_rect", raw=_apply_raw(x="2.0", y="1", w="3", h="2e0"))[0] == 200
    with Image.open(root / "masks" / "train" / "a" / "img1.png") as m:
        got = np.asarray(m)
    want = np.zeros((H, W), np.uint8)
    want[1:3, 2:5] = 255
    np.testing.assert_array_equal(got, want)
    # a rectangle larger than the image is clipped to it
    assert _post(server, "/api/apply_rect", raw=_apply_raw(x="0", y="0", w="2147483647", h="2147483647",
                                                           erase="true"))[0] == 200
    with Image.open(root / "masks" / "train" / "a" / "img1.png") as m:
        assert np.asarray(m).max() == 0
    assert _post(server, "/api/mask", {**_mask_body("train/a/img1.png"), "width": float(W)})[0] == 200
