"""Bad input refused at the edge: folder datasets with links out of the root or empty classes,
`--pretrained` files that are not state dicts, devices this machine lacks.

CLI refusals run the real `focusml train` in a subprocess against a real SQLite tracking store
and check exit status 2, one line on stderr, and that the store holds no run afterwards.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import VENV_BIN
from focusml import FocusmlError
from focusml.core.config import RunConfig, check_device
from focusml.core.data import DataOptions, load
from focusml.core.models import build_model, load_pretrained, read_state_dict
from test_folder import make_tree, write_image, write_mask


def load_folder(root: Path, **kw):
    return load("folder", DataOptions(root=root, **kw))


def refused(root: Path, *needles: str) -> str:
    with pytest.raises(FocusmlError) as err:
        load_folder(root)
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg
    assert "\n" not in msg
    return msg


# ---- folder datasets: symbolic links ---------------------------------------------------------------


@pytest.mark.parametrize("link", [
    "images/val/cat/cat0.png",   # an image file
    "images/val/dog",            # a class folder
    "images/test",               # a split folder
    "images",                    # the whole images tree
    "masks",                     # the whole masks tree
    "masks/train",               # a masks split folder
    "masks/val/cat",             # a masks class folder
    "masks/test/dog/dog1.png",   # a mask file
    "clean/val/cat/cat1.png",    # a clean twin
    "clean",                     # the clean tree
])
def test_links_leaving_the_root_are_refused_with_their_path(tmp_path, link):
    root = make_tree(tmp_path / "ds", clean=True)
    outside = tmp_path / "outside"
    target = root / link
    # the link points at what it replaces, moved outside the root: only the link is wrong
    (outside / link).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(target, outside / link)
    os.symlink(outside / link, target, target_is_directory=(outside / link).is_dir())
    refused(root, f"{target} is a symbolic link to {outside / link}", "outside the dataset root",
                  "cp -rL", "--data-root")


def test_relative_link_escaping_through_dotdot_is_refused(tmp_path):
    root = make_tree(tmp_path / "ds")
    secret = write_image(tmp_path / "secret.png")
    link = root / "images" / "train" / "cat" / "cat9.png"
    os.symlink("../../../../secret.png", link)
    write_mask(root / "masks" / "train" / "cat" / "cat9.png")
    assert link.resolve() == secret
    refused(root, f"{link} is a symbolic link to {secret}")


def test_links_inside_the_root_and_a_linked_root_load(tmp_path):
    root = make_tree(tmp_path / "ds")
    plain = load_folder(root)
    # replace val/cat/cat0.png and its mask by links to identical files elsewhere inside the root
    spare = root / "spare"
    for tree in ("images", "masks"):
        f = root / tree / "val" / "cat" / "cat0.png"
        (spare / tree).mkdir(parents=True)
        shutil.move(f, spare / tree / "cat0.png")
        os.symlink(os.path.relpath(spare / tree / "cat0.png", f.parent), f)
    # `spare/` is outside images/masks/clean, which the loader never lists; the links resolve into it
    linked_root = tmp_path / "link-to-ds"
    os.symlink(root, linked_root, target_is_directory=True)
    for r in (root, linked_root):
        data = load_folder(r)
        assert data.fingerprint == plain.fingerprint
        assert torch.equal(data.split("val").images, plain.split("val").images)


def test_valid_folder_datasets_load_byte_identically(tmp_path):
    """Fingerprints pinned from the loader before the link and empty-class checks were added."""
    root = make_tree(tmp_path / "a", splits=("train", "val", "test", "test_confounded"), clean=True)
    write_image(root / "images" / "train" / "dog" / "rgb.png", (8, 6), 70, mode="RGB")
    write_mask(root / "masks" / "train" / "dog" / "rgb.png", (8, 6), (1, 1, 4, 5))
    write_image(root / "clean" / "train" / "dog" / "rgb.png", (8, 6), 71, mode="RGB")
    assert load_folder(root).fingerprint == "d77a072cf82830be"
    assert load_folder(root, image_size=16).fingerprint == "2d0ab59fffc15bb8"


# ---- folder datasets: empty classes -----------------------------------------------------------------


@pytest.mark.parametrize("split", ["val", "test", "test_confounded"])
@pytest.mark.parametrize("how", ["empty folder", "missing folder"])
def test_a_class_without_images_in_any_split_is_refused(tmp_path, split, how):
    root = make_tree(tmp_path / "ds", splits=("train", "val", "test", "test_confounded"))
    cdir = root / "images" / split / "dog"
    for f in cdir.iterdir():
        f.unlink()
    for f in (root / "masks" / split / "dog").iterdir():
        f.unlink()
    if how == "missing folder":
        cdir.rmdir()
    state = "is empty" if how == "empty folder" else "is missing"
    refused(root, f"class 'dog' has no images in split '{split}' ({cdir} {state})",
            "Every class of images/train needs images in every split")


def test_a_hidden_file_does_not_make_a_class_non_empty(tmp_path):
    root = make_tree(tmp_path / "ds")
    cdir = root / "images" / "val" / "cat"
    for f in list(cdir.iterdir()) + list((root / "masks" / "val" / "cat").iterdir()):
        f.unlink()
    (cdir / ".DS_Store").write_bytes(b"junk")
    refused(root, f"class 'cat' has no images in split 'val' ({cdir} is empty)")


def test_an_empty_class_in_a_clean_split_is_refused(tmp_path):
    root = make_tree(tmp_path / "ds", clean=True)
    cdir = root / "clean" / "test" / "dog"
    for f in cdir.iterdir():
        f.unlink()
    refused(root, f"class 'dog' has no images in split 'test' ({cdir} is empty)")


# ---- --pretrained: only state dicts, never unpickled code ---------------------------------------------


class _Opens:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_weight_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name → (file, what the one-line message must say)."""
    d = tmp_path / "weights"
    d.mkdir()
    marker = tmp_path / "CODE-RAN"
    files = {}

    def add(name, fragment, write):
        path = d / name
        write(path)
        files[name] = (path, fragment)

    add("notes.txt", "is not a readable PyTorch checkpoint", lambda p: p.write_text("these are not weights\n"))
    add("list.json", "is not a weights-only PyTorch checkpoint", lambda p: p.write_text(json.dumps([1.0, 2.0, 3.0])))
    add("dict.json", "is not a weights-only PyTorch checkpoint",
        lambda p: p.write_text(json.dumps({"classifier.weight": [[1.0]]})))
    add("objects.pkl", "is not a weights-only PyTorch checkpoint",
        lambda p: p.write_bytes(pickle.dumps({"classifier.weight": _Opens(marker)})))
    add("objects.pt", "is not a weights-only PyTorch checkpoint", lambda p: torch.save([_Opens(marker)], p))
    add("module.pt", "is not a weights-only PyTorch checkpoint", lambda p: torch.save(torch.nn.Linear(2, 2), p))
    add("tensor.pt", "holds a single tensor of shape (3, 4), not a state dict", lambda p: torch.save(torch.zeros(3, 4), p))
    add("tensors.pt", "holds a list, not a state dict", lambda p: torch.save([torch.zeros(2), torch.ones(2)], p))
    add("numbers.pt", "holds a dict without tensors", lambda p: torch.save({"epoch": 3, "lr": 0.1}, p))
    add("nested.pt", "holds a list, not a state dict", lambda p: torch.save({"state_dict": [torch.zeros(1)]}, p))
    add("empty.pt", "is not a readable PyTorch checkpoint", lambda p: p.write_bytes(b""))
    add("truncated.pt", "is not a readable PyTorch checkpoint",
        lambda p: (torch.save({"w": torch.zeros(100)}, p), p.write_bytes(p.read_bytes()[:200])))
    return files


def test_read_state_dict_refuses_every_non_state_dict(tmp_path):
    marker = tmp_path / "CODE-RAN"
    model = build_model("small", 1, 10, 28)
    for name, (path, fragment) in _bad_weight_files(tmp_path).items():
        for fn in (lambda: read_state_dict(path), lambda: load_pretrained(model, path),
                   lambda: RunConfig(pretrained=str(path)).validate()):
            with pytest.raises(FocusmlError) as err:
                fn()
            msg = str(err.value)
            assert f"pretrained weights {path} " in msg and fragment in msg, (name, msg)
            assert "torch.save(model.state_dict(), path)" in msg and "\n" not in msg
    assert not marker.exists()


def test_a_state_dict_inside_a_checkpoint_dict_still_loads(tmp_path):
    src = build_model("small", 1, 10, 28)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": 7}, path)
    RunConfig(pretrained=str(path)).validate()
    dst = build_model("small", 1, 10, 28, pretrained=str(path))
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


# ---- --device ------------------------------------------------------------------------------------------


def _have() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ", ".join(["cpu", *(f"cuda:{i}" for i in range(n))])


@pytest.mark.parametrize("device", ["cuda:x", "cuda:-1", "cuda:", "gpu", "mps", "cuda:0 ", "CUDA", "cuda:1:2", 0])
def test_malformed_devices_are_refused_naming_what_exists(device):
    with pytest.raises(FocusmlError) as err:
        RunConfig(device=device).validate()
    # a number is read as the text it spells (what YAML's `device: 0` means), and refused as such
    assert f"--device is {str(device)!r}; use auto, cpu or cuda[:N] (this machine has: {_have()})." == str(err.value)


def test_cuda_devices_that_do_not_exist_are_refused():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in ("cuda", "cuda:0", f"cuda:{n}", "cuda:7", "cuda:123456789"):
        index = int(device.partition(":")[2] or 0)
        if index < n:
            check_device(device)  # exists: accepted
            continue
        with pytest.raises(FocusmlError) as err:
            RunConfig(device=device).validate()
        assert f"--device is {device!r} but this machine has" in str(err.value)
        assert f"(it has: {_have()})" in str(err.value)
    for device in ("auto", "cpu"):
        check_device(device)


def test_index_beyond_the_count_names_the_devices(monkeypatch):
    """The several-GPU wording, on machines without them: torch's device count is stood in for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    check_device("cuda")
    with pytest.raises(FocusmlError, match=r"has 2 CUDA devices \(it has: cpu, cuda:0, cuda:1\)\. Use one of those"):
        check_device("cuda:7")


# ---- the CLI: exit 2, one line, nothing in the store ---------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path, cli_env):
    db = tmp_path / "mlflow.db"
    env = dict(cli_env, MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    return db, env


def _runs_in(db: Path) -> int:
    """Runs in every experiment of the store (0 when the store was never even created)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0


def _train(env, cwd, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "focusml"), "train", "--epochs", "1", "--experiment", "safety", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _assert_refused(res: subprocess.CompletedProcess, db: Path, *needles: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for n in needles:
        assert n in lines[0], lines[0]
    assert _runs_in(db) == 0
    return lines[0]


def test_cli_refuses_bad_pretrained_files(sqlite_store, tmp_path):
    db, env = sqlite_store
    files = _bad_weight_files(tmp_path)
    for name in ("notes.txt", "list.json", "objects.pkl", "objects.pt", "tensor.pt", "numbers.pt"):
        path, fragment = files[name]
        res = _train(env, tmp_path, "--pretrained", str(path))
        _assert_refused(res, db, f"pretrained weights {path} ", fragment, "torch.save(model.state_dict(), path)")
    assert not (tmp_path / "CODE-RAN").exists()


def test_cli_refuses_a_cuda_device_this_machine_lacks(sqlite_store, tmp_path):
    db, env = sqlite_store
    res = _train(env, tmp_path, "--device", "cuda:7")
    _assert_refused(res, db, "--device is 'cuda:7' but this machine has", f"(it has: {_have()})")
    res = _train(env, tmp_path, "--device", "cuda:x")
    _assert_refused(res, db, "--device is 'cuda:x'; use auto, cpu or cuda[:N]")
    if not torch.cuda.is_available():
        res = _train(env, tmp_path, "--device", "cuda")
        _assert_refused(res, db, "--device is 'cuda' but this machine has no usable CUDA device (it has: cpu)")


def test_cli_with_a_valid_state_dict_trains_into_the_same_store(sqlite_store, tmp_path):
    """Control for the tests above: the same command with good weights does create one run there."""
    db, env = sqlite_store
    path = tmp_path / "good.pt"
    torch.save(build_model("small", 1, 10, 28).state_dict(), path)
    res = _train(env, tmp_path, "--pretrained", str(path), "--device", "cpu", "--batch-size", "128", "--no-log-model")
    assert res.returncode == 0, res.stderr
    assert _runs_in(db) == 1
