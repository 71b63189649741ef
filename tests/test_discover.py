"""Masks without drawing: `focusml discover` groups images by where a model's evidence sits and proposes each
group's region; a hand-made shortcut reader shows it finds the shortcut exactly, then the user's path end to end
(a folder without masks → baseline → discover → yes in the proposals book → refine)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from focusml.core.data.base import Dataset, Split
from focusml.core.discover import (evidence_maps, mask_iou, masks_from, member_cells, propose, region,
                                   simulated_answer)
from focusml.core.proposals import FORMAT, cells_to_pixels, text_to_cells
from focusml.masktool.paths import DatasetTree
from focusml.masktool.proposals import ProposalBook
from helpers import main_ok, run_cli, shortcut_reader

SIZE, PATCH = 16, 3
CORNERS = ((0, 0), (0, SIZE - PATCH), (SIZE - PATCH, 0), (SIZE - PATCH, SIZE - PATCH))


def corner_split(n: int, follows: bool, seed: int) -> Split:
    """Two-channel 16×16 images: channel 0 the object (its brightness codes the class) on the left half,
    channel 1 a 3×3 shortcut patch in a random corner coding the label (`follows`) or a random class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=gen)
    shortcut = labels if follows else torch.randint(2, (n,), generator=gen)
    corner = torch.randint(4, (n,), generator=gen)
    code = torch.tensor([60, 200], dtype=torch.uint8)
    images = torch.zeros(n, 2, SIZE, SIZE, dtype=torch.uint8)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    images[:, 0, :, : SIZE // 2] = code[labels].view(-1, 1, 1)
    for i in range(n):
        y, x = CORNERS[int(corner[i])]
        images[i, 1, y:y + PATCH, x:x + PATCH] = code[shortcut[i]]
        masks[i, y:y + PATCH, x:x + PATCH] = 1
    return Split(images, masks, labels)


# the reader's threshold (bias / 400) between the GAPs of the 3×3 patch over 256 cells: 9·60/255/256, 9·200/255/256
READER_BIAS = 1.5 * 400 * 9 * 130 / 255 / 256


@pytest.fixture
def corner_data() -> Dataset:
    splits = {"train": corner_split(200, True, 0), "val": corner_split(80, True, 1), "test": corner_split(100, False, 2)}
    return Dataset("corners", ["dark", "bright"], splits)


def test_evidence_sits_only_where_the_model_reads(corner_data):
    images = corner_data.split("train").images[:4].float() / 255
    maps, preds = evidence_maps(shortcut_reader(READER_BIAS), images)
    truth = corner_data.split("train").masks[:4].bool()
    assert maps.shape == (4, SIZE, SIZE)
    assert float(maps[~truth].abs().max()) == 0.0 and bool((maps[truth] > 0).all())
    assert (preds == corner_data.split("train").labels[:4]).all()  # the shortcut follows the label in train


def test_region_is_the_peak_and_members_follow_their_own_evidence():
    mean = np.zeros((4, 4))
    mean[0, :2], mean[1, 0] = (1.0, 0.6), 0.4  # the peak, a cell at 60% of it, one at 40%
    assert region(mean).tolist() == [[True, True, False, False]] + [[False] * 4] * 3
    reg = region(mean)
    p = np.zeros((2, 16))
    p[0, [0, 1]] = 0.5  # on the region only
    p[1, [0, 1, 2]] = (0.3, 0.3, 0.4)  # also the cell beside it, with more evidence than the region's weakest
    cells = member_cells(reg, p)
    assert cells[0].sum() == 2 and cells[1].sum() == 3 and cells[1][0, 2]


def test_proposals_find_each_corner_and_accepting_them_masks_every_shortcut(corner_data):
    proposals = propose(shortcut_reader(READER_BIAS), corner_data)
    corners = [q for q in proposals if q.scope == "all classes"]
    assert len(corners) == 4  # one group per corner, whatever the class
    for q in corners:
        assert q.region.sum() == PATCH * PATCH and q.flip_rate > 0.3
        assert simulated_answer(q, corner_data) == "yes"
    assert [q.rank for q in proposals] == list(range(1, len(proposals) + 1))
    assert proposals[0].scope == "all classes"  # a small region that flips predictions comes first
    produced = masks_from(proposals, {q.id for q in corners}, corner_data)
    assert set(produced) == {"train", "val"}
    assert all(bool((m.flatten(1).amax(1) > 0).all()) for m in produced.values())  # every image annotated
    assert mask_iou(produced, corner_data) == 1.0  # one cell per pixel: the patch exactly


def test_a_model_that_reads_the_object_gets_no_yes(corner_data):
    model = shortcut_reader(READER_BIAS)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[-400.0, 0.0], [400.0, 0.0]]))
    proposals = propose(model, corner_data)
    assert proposals and all(simulated_answer(q, corner_data) == "no" for q in proposals)


@pytest.mark.slow
def test_folder_without_masks_to_discover_answers_and_refine(tracking_env, make_folder, tmp_path, capsys, monkeypatch):
    """The user's path: their images, no mask; the baseline, `focusml discover`, a yes in the book, `refine`."""
    root = make_folder(tmp_path / "mine", {"train": 40, "val": 12, "test": 12})
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "discover-path")
    main_ok(["train", "--method", "baseline", "--dataset", "folder", "--data-root", str(root), "--epochs", "4",
             "--cam-every", "4"])
    source = capsys.readouterr().out.split("run_id: ")[1].split()[0]
    main_ok(["discover", source])
    out = capsys.readouterr().out
    path = root / "proposals" / f"{source}.json"
    assert f"proposals: {path}" in out
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["run_id"] == source and doc["classes"] == ["cat", "dog"]
    for q in doc["proposals"]:
        for m in q["members"]:
            assert (root / "images" / m["path"]).is_file()
            assert text_to_cells(m["cells"]).shape == tuple(doc["grid"])
    run_id = out.split("run_id: ")[1].split()[0]
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["focusml.discover_of"] == source
    names = {a.path for a in MlflowClient().list_artifacts(run_id, "discover")}
    assert "discover/proposals.json" in names and {f"discover/{q['id']}.png" for q in doc["proposals"]} <= names
    book = ProposalBook.open(DatasetTree(root), path)
    first = doc["proposals"][0]
    done = book.answer(first["id"], "yes")
    assert done["written"] == len(first["members"])
    member = first["members"][0]
    from PIL import Image

    size = Image.open(root / "images" / member["path"]).size
    written = np.array(Image.open(root / "masks" / member["path"].rsplit(".", 1)[0].__add__(".png"))) > 0
    assert (written == cells_to_pixels(text_to_cells(member["cells"]), size[1], size[0])).all()
    def trained(q):  # the classes of a proposal's training images: each corner's shortcut shows one class
        return {m["path"].split("/")[1] for m in q["members"] if m["path"].startswith("train/")}

    yes = trained(first)
    if len(yes) == 1:  # a head refitted on one class's images would answer it for every image: refused
        runs = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
        code, _, err = run_cli(["refine", source, "--stages", "head"], capsys)
        assert code == 2 and f"are all of class '{next(iter(yes))}'" in err and "Traceback" not in err
        assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == runs  # none left
        book.answer(next(q for q in doc["proposals"] if trained(q) - yes)["id"], "yes")
    main_ok(["refine", source, "--stages", "head"])
    kept = capsys.readouterr().out.split("run_id: ")[1].split()[0]
    head = MlflowClient().get_run(kept)
    assert head.info.status == "FINISHED" and head.data.tags["focusml.init_from"] == source
    assert "focusml.warning" not in head.data.tags, head.data.tags["focusml.warning"]
    assert mlflow.get_experiment_by_name("discover-path") is not None


@pytest.mark.slow
def test_discover_refuses_an_unknown_run_in_one_line(cli_env, tmp_path):
    import subprocess

    env = dict(cli_env, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    res = subprocess.run(["focusml", "discover", "0" * 32], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    said = [line for line in res.stderr.strip().splitlines() if " INFO mlflow" not in line]  # a new store's notes
    assert "Traceback" not in res.stderr and len(said) == 1 and "not found" in said[0], res.stderr
