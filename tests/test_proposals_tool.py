"""Answering proposals in the mask tool: the ProposalBook (masks on disk, never over drawn ones, exact undo),
the HTTP API, and the page driven in headless Chromium."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focusml import FocusmlError
from focusml.core.proposals import FORMAT, cells_to_pixels, text_to_cells
from focusml.masktool import DatasetTree, MaskToolApp, make_server
from focusml.masktool.proposals import ProposalBook
from helpers import write_png

W, H = 12, 10  # not square and not a multiple of the grid: cells_to_pixels' rounding shows
GRID = (4, 4)
TL = ["1100", "1100", "0000", "0000"]  # top-left corner
TR = ["0011", "0011", "0000", "0000"]  # top-right corner
BOT = ["0000", "0000", "0000", "1111"]  # bottom row


@pytest.fixture
def root(tmp_path):
    """ROOT: classes a, b × 4 train images; a person drew the mask of train/a/img3 (one pixel)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        for i in range(4):
            img = (rng.random((H, W)) * 120).astype(np.uint8)
            img[:3, :3] = 250 if cls == "a" else 0
            write_png(root / "images" / "train" / cls / f"img{i}.png", img)
    write_png(root / "images" / "val" / "a" / "v0.png", np.zeros((H, W), np.uint8))
    drawn = np.zeros((H, W), np.uint8)
    drawn[5, 5] = 255
    write_png(root / "masks" / "train" / "a" / "img3.png", drawn)
    return root


def _proposal(pid, rank, region, members, scope="all classes", flip=0.5):
    return {"id": pid, "rank": rank, "scope": scope, "region": region, "size": 0.25, "flip_rate": flip,
            "members": [{"path": p, "cells": c} for p, c in members]}


def _write_file(root: Path, proposals: list[dict], name="run1") -> Path:
    path = root / "proposals" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "run_id": name, "grid": list(GRID), "classes": ["a", "b"],
                                "proposals": proposals}))
    return path


@pytest.fixture
def pfile(root):
    """p01 (rank 1): top-left on all of class a; p02: top-right on b0, b1; p03: bottom row on a0, a1, b2."""
    a = [f"train/a/img{i}.png" for i in range(4)]
    return _write_file(root, [
        _proposal("p02", 2, TR, [("train/b/img0.png", TR), ("train/b/img1.png", TR)], scope="class b", flip=None),
        _proposal("p01", 1, TL, [(p, TL) for p in a], scope="class a", flip=0.73),
        _proposal("p03", 3, BOT, [("train/a/img0.png", BOT), ("train/a/img1.png", BOT), ("train/b/img2.png", BOT)]),
    ])


def _disk(root: Path, rel: str) -> np.ndarray | None:
    split, cls, name = rel.split("/")
    path = root / "masks" / split / cls / (Path(name).stem + ".png")
    if not path.exists():
        return None
    with Image.open(path) as m:
        assert m.mode == "L"
        return np.asarray(m).copy()


def _want(*regions) -> np.ndarray:
    out = np.zeros((H, W), bool)
    for r in regions:
        out |= cells_to_pixels(text_to_cells(r), H, W)
    return out.astype(np.uint8) * 255


# ---- the book ---------------------------------------------------------------------------------


def test_yes_writes_every_member_but_never_over_a_drawn_mask(root, pfile):
    book = ProposalBook.open(DatasetTree(root), pfile)
    assert [p.id for p in book.proposals] == ["p01", "p02", "p03"] and book.next().id == "p01"
    drawn_before = (root / "masks" / "train" / "a" / "img3.png").read_bytes()
    got = book.answer("p01", "yes")
    assert (got["written"], got["kept_drawn"]) == (3, 1)
    for i in range(3):
        np.testing.assert_array_equal(_disk(root, f"train/a/img{i}.png"), _want(TL))
    assert (root / "masks" / "train" / "a" / "img3.png").read_bytes() == drawn_before
    assert _want(TL)[:3, :6].all() and _want(TL)[:, 6:].sum() == 0  # cells_to_pixels at 12×10
    assert book.next().id == "p02"
    assert book.summary() == {"answers": 1, "yes": 1, "no": 0, "mixed": 0, "annotated": 3, "proposals": 3}
    state = json.loads(book.state_path.read_text())
    assert book.state_path.name == "run1.answers.json"
    assert state["answers"] == {"p01": "yes"}
    assert state["written"] == [f"train/a/img{i}.png" for i in range(3)]
    assert not [p for p in book.state_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_no_writes_nothing_and_mixed_writes_only_the_picked(root, pfile):
    book = ProposalBook.open(DatasetTree(root), pfile)
    assert book.answer("p02", "no") == {"id": "p02", "answer": "no", "written": 0, "kept_drawn": 0, "removed": 0,
                                        "skipped": 0}
    assert not (root / "masks" / "train" / "b").exists()
    assert book.answer("p03", "mixed")["written"] == 0  # recorded, nothing picked yet
    got = book.answer("p03", "mixed", members=["train/b/img2.png"])
    assert got["written"] == 1
    np.testing.assert_array_equal(_disk(root, "train/b/img2.png"), _want(BOT))
    assert _disk(root, "train/a/img0.png") is None
    assert book.summary() == {"answers": 2, "yes": 0, "no": 1, "mixed": 1, "annotated": 1, "proposals": 3}
    with pytest.raises(FocusmlError, match="not a member of proposal p03"):
        book.answer("p03", "mixed", members=["train/b/img0.png"])
    with pytest.raises(FocusmlError, match="members are picked with the answer"):
        book.answer("p03", "yes", members=["train/b/img2.png"])
    with pytest.raises(FocusmlError, match="answer must be one of"):
        book.answer("p03", "maybe")
    with pytest.raises(FocusmlError, match="no proposal 'p99'"):
        book.answer("p99", "yes")


def test_overlapping_proposals_or_and_changing_an_answer_undoes_exactly(root, pfile):
    book = ProposalBook.open(DatasetTree(root), pfile)
    book.answer("p01", "yes")
    book.answer("p03", "yes")
    np.testing.assert_array_equal(_disk(root, "train/a/img0.png"), _want(TL, BOT))  # OR of both
    np.testing.assert_array_equal(_disk(root, "train/b/img2.png"), _want(BOT))
    assert book.summary()["annotated"] == 4

    # a person edits the mask the book wrote on a1: theirs from now on
    edited = _want(TL, BOT)
    edited[9, 0] = 0
    Image.fromarray(edited).save(root / "masks" / "train" / "a" / "img1.png")

    got = book.answer("p01", "no")  # take p01 back: a0 keeps only p03's cells, a2 loses its mask
    assert got["removed"] == 2 and got["written"] == 0
    np.testing.assert_array_equal(_disk(root, "train/a/img0.png"), _want(BOT))
    assert _disk(root, "train/a/img2.png") is None
    np.testing.assert_array_equal(_disk(root, "train/a/img1.png"), edited)  # untouched
    assert book.summary() == {"answers": 2, "yes": 1, "no": 1, "mixed": 0, "annotated": 2, "proposals": 3}

    book.answer("p03", "no")
    assert _disk(root, "train/a/img0.png") is None and _disk(root, "train/b/img2.png") is None
    np.testing.assert_array_equal(_disk(root, "train/a/img1.png"), edited)
    assert book.summary()["annotated"] == 0
    assert book.answer("p01", "yes")["kept_drawn"] == 2  # a1 (edited) and a3 (drawn)

    # the answers survive a restart
    again = ProposalBook.open(DatasetTree(root), pfile)
    assert again.answers == {"p01": "yes", "p03": "no"} and again.summary()["annotated"] == 2
    assert again.member_state("train/a/img0.png") == "book" and again.member_state("train/a/img1.png") == "drawn"
    assert again.member_state("train/b/img0.png") == "none"
    again.answer("p01", "mixed", members=["train/a/img2.png"])
    assert _disk(root, "train/a/img0.png") is None
    np.testing.assert_array_equal(_disk(root, "train/a/img2.png"), _want(TL))


def test_bad_or_escaping_files_are_refused(root, pfile, tmp_path):
    tree = DatasetTree(root)
    outside = tmp_path / "elsewhere.json"
    outside.write_text(pfile.read_text())
    with pytest.raises(FocusmlError, match="not inside the dataset root"):
        ProposalBook.open(tree, outside)
    (root / "proposals" / "link.json").symlink_to(outside)
    with pytest.raises(FocusmlError, match="not inside the dataset root"):
        ProposalBook.open(tree, root / "proposals" / "link.json")
    with pytest.raises(FocusmlError, match="keep it out of images/ and masks/"):
        ProposalBook.open(tree, root / "masks" / "x.json")

    good = json.loads(pfile.read_text())

    def bad(change, match):
        data = json.loads(json.dumps(good))
        change(data)
        path = root / "proposals" / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(FocusmlError, match=match) as e:
            ProposalBook.open(tree, path)
        assert "\n" not in str(e.value)

    bad(lambda d: d.update(format="focusml-proposals/0"), "format is 'focusml-proposals/0'")
    bad(lambda d: d.update(grid=[4]), "grid must be")
    bad(lambda d: d["proposals"][0]["members"][0].update(path="../../etc/passwd.png"), "member #1: path")
    bad(lambda d: d["proposals"][0]["members"][0].update(path="train/../../x.png"), "member #1")
    bad(lambda d: d["proposals"][0]["members"][0].update(path="train/b/nope.png"), "no image train/b/nope.png")
    bad(lambda d: d["proposals"][0]["members"][0].update(cells=["111", "111", "000", "000"]), "is 4×3 cells")
    bad(lambda d: d["proposals"][0].update(region=["1100"]), "region is 1×4 cells")
    bad(lambda d: d["proposals"][1].update(id="p02"), "appears twice")
    bad(lambda d: d["proposals"][0].update(flip_rate="0.7"), "flip_rate must be a number from 0 to 1 or null")
    bad(lambda d: d["proposals"][0].update(size=2), "size must be a number from 0 to 1")
    (root / "proposals" / "bad.json").write_text("{not json")
    with pytest.raises(FocusmlError, match="bad.json"):
        ProposalBook.open(tree, root / "proposals" / "bad.json")

    # answers given to another version of the file are refused, not applied to the new proposals
    ProposalBook.open(tree, pfile).answer("p02", "no")
    pfile.write_text(json.dumps({**good, "run_id": "run2"}))
    with pytest.raises(FocusmlError, match="changed since the answers"):
        ProposalBook.open(tree, pfile)


def test_a_link_in_masks_refuses_the_answer_before_any_write(root, pfile, tmp_path):
    book = ProposalBook.open(DatasetTree(root), pfile)
    (tmp_path / "out").mkdir()
    (root / "masks" / "train" / "b").symlink_to(tmp_path / "out")
    with pytest.raises(FocusmlError, match="symbolic link"):
        book.answer("p03", "yes")  # a0, a1 are fine, b2's folder is a link: nothing written
    assert _disk(root, "train/a/img0.png") is None and not list((tmp_path / "out").iterdir())
    assert book.summary()["answers"] == 0 and not book.state_path.exists()


# ---- HTTP ----------------------------------------------------------------------------------------


def _serve(root, proposals=None):
    server = make_server(MaskToolApp(root, proposals=proposals), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _req(url, body=None, raw=None, ctype="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype} if data is not None else {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_lists_shows_and_answers_proposals(root, pfile):
    server, url = _serve(root, pfile)
    try:
        status, got = _req(url + "/api/proposals")
        assert status == 200 and got["next"] == "p01" and got["file"] == "run1.json"
        assert [(p["id"], p["members"], p["answer"]) for p in got["proposals"]] == [
            ("p01", 4, None), ("p02", 2, None), ("p03", 3, None)]
        assert got["proposals"][1]["flip_rate"] is None and got["proposals"][0]["scope"] == "class a"
        status, p1 = _req(url + "/api/proposal?id=p01")
        assert status == 200 and p1["region"] == TL and p1["grid"] == list(GRID)
        assert [(m["path"], m["cells"], m["state"]) for m in p1["members"]][-1] == ("train/a/img3.png", TL, "drawn")
        assert _req(url + "/api/proposal?id=p99")[0] == 404

        status, res = _req(url + "/api/answer", {"id": "p01", "answer": "yes"})
        assert status == 200 and res["written"] == 3 and res["kept_drawn"] == 1 and res["next"] == "p02"
        assert res["summary"]["annotated"] == 3
        status, res = _req(url + "/api/answer", {"id": "p03", "answer": "mixed", "members": ["train/b/img2.png"]})
        assert status == 200 and res["written"] == 1
        np.testing.assert_array_equal(_disk(root, "train/b/img2.png"), _want(BOT))
        assert _req(url + "/api/proposal?id=p03")[1]["picked"] == ["train/b/img2.png"]

        for body, code in [({"id": "p02", "answer": "Yes"}, 400), ({"id": 2, "answer": "yes"}, 400),
                           ({"id": "p02", "answer": "mixed", "members": "train/b/img0.png"}, 400),
                           ({"id": "p02", "answer": "mixed", "members": [1]}, 400),
                           ({"id": "p02", "answer": "mixed", "members": ["../../x.png"]}, 400),
                           ({"id": "p02", "answer": "no", "members": []}, 400),
                           ({"id": "p99", "answer": "no"}, 404)]:
            status, res = _req(url + "/api/answer", body)
            assert status == code and res["error"], (body, status, res)
        assert _req(url + "/api/answer", raw=b'{"id": "p02", "answer": "no"}', ctype="text/plain")[0] == 415
        assert _req(url + "/api/proposals")[1]["summary"]["answers"] == 2  # nothing of the bad ones counted
    finally:
        server.shutdown(), server.server_close()

    server, url = _serve(root)  # no proposals file: the endpoints say how to get one
    try:
        status, res = _req(url + "/api/proposals")
        assert status == 404 and "--proposals" in res["error"]
        assert _req(url + "/api/info")[1]["proposals"] is None
    finally:
        server.shutdown(), server.server_close()


def test_cli_refuses_a_bad_proposals_file(root, pfile, cli_env, tmp_path):
    import subprocess
    import sys

    outside = tmp_path / "x.json"
    outside.write_text(pfile.read_text())
    res = subprocess.run([str(Path(sys.executable).parent / "focusml"), "masks", "serve", str(root),
                          "--proposals", str(outside), "--port", "0"], env=cli_env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "not inside the dataset root" in res.stderr, res.stderr


# ---- the page in headless Chromium (the `browser` fixture: conftest.py) ---------------------------


@pytest.mark.browser
def test_browser_answers_yes_no_mixed_and_writes_the_masks(root, pfile, browser):
    drawn_before = (root / "masks" / "train" / "a" / "img3.png").read_bytes()
    server, url = _serve(root, pfile)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    counter = lambda: page.text_content("#p-counter")  # noqa: E731

    def shown(pid):
        page.wait_for_selector(f"#proposals-view[data-id='{pid}'] #p-grid[data-ready='1']")

    try:
        page.goto(url + "/")
        page.wait_for_selector("#proposals-view[data-ready='1']")  # --proposals opens on the panel
        shown("p01")
        assert counter() == "0 answered · 0 images annotated · 3 proposals left"
        assert "Proposal 1 of 3 · class a" in page.text_content("#p-title")
        assert "73%" in page.text_content("#p-facts") and "(1 drawn by hand: kept)" in page.text_content("#p-facts")
        assert page.locator("#p-grid .thumb").count() == 4 and page.locator("#p-grid .thumb.drawn").count() == 1
        # the region is drawn: magenta pixels in the thumbnail's top quarter (its top edge), none in the bottom one
        magenta = page.evaluate("""() => { const c = document.querySelector('#p-grid .thumb canvas');
            const n = c.width, d = c.getContext('2d').getImageData(0, 0, n, n).data; let top = 0, bottom = 0;
            for (let i = 0; i < n * n; i++) { const [r, g, b] = [d[4 * i], d[4 * i + 1], d[4 * i + 2]];
              if (r > 200 && g < 80 && b > 200) {
                const v = Math.floor(i / n); if (v < n / 4) top++; if (v > 3 * n / 4) bottom++; } }
            return [top, bottom]; }""")
        assert magenta[0] > 0 and magenta[1] == 0, magenta

        page.click("#p-yes")
        shown("p02")
        assert counter() == "1 answered · 3 images annotated · 2 proposals left"
        assert "3 masks written · 1 drawn by hand kept" in page.text_content("#p-status")
        page.click("#p-no")
        shown("p03")
        assert counter() == "2 answered · 3 images annotated · 1 proposal left"
        page.click("#p-mixed")
        page.wait_for_selector("#p-pick:not([hidden])")
        page.click("#p-grid .thumb[data-path='train/b/img2.png']")
        page.click("#p-grid .thumb[data-path='train/a/img0.png']")
        page.click("#p-grid .thumb[data-path='train/a/img0.png']")  # picked, then unpicked
        assert page.text_content("#p-picked") == "1"
        page.click("#p-submit")
        page.wait_for_function("document.getElementById('p-status').textContent.includes('all proposals answered')")
        assert counter() == "3 answered · 4 images annotated · 0 proposals left"
        assert [page.text_content(f"#p-list li[data-id='{i}'] .ans") for i in ("p01", "p02", "p03")] == \
            ["yes", "no", "mixed"]

        for i in range(3):
            np.testing.assert_array_equal(_disk(root, f"train/a/img{i}.png"), _want(TL))  # not p03's row
        assert (root / "masks" / "train" / "a" / "img3.png").read_bytes() == drawn_before
        np.testing.assert_array_equal(_disk(root, "train/b/img2.png"), _want(BOT))
        assert _disk(root, "train/b/img0.png") is None and _disk(root, "train/b/img1.png") is None

        # keys: ← back to p02, y changes its "no" to "yes"
        page.keyboard.press("ArrowLeft")
        shown("p02")
        page.keyboard.press("y")
        page.wait_for_function("document.getElementById('p-counter').textContent.includes('6 images annotated')")
        np.testing.assert_array_equal(_disk(root, "train/b/img0.png"), _want(TR))
        np.testing.assert_array_equal(_disk(root, "train/b/img1.png"), _want(TR))

        # the draw view lists the new masks
        page.click("#mode-draw")
        page.wait_for_selector("#draw-view:not([hidden])")
        page.wait_for_function("document.querySelectorAll('#list li.annotated').length === 4")  # train/a
        assert json.loads(book_state(pfile))["answers"] == {"p01": "yes", "p02": "yes", "p03": "mixed"}
    finally:
        ctx.close()
        server.shutdown(), server.server_close()
    assert not errors, errors


def book_state(pfile: Path) -> str:
    return pfile.with_name("run1.answers.json").read_text()
