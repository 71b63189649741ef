"""Streamed folder datasets (`--data-loading stream`): the same rows, fingerprint, weights and metrics as in
memory; the auto rule; reads refused outside the root; the benchmark's jobs at toy size."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from focusml import FocusmlError
from focusml.core.config import RunConfig
from focusml.core.data import DataOptions, load, stream
from focusml.core.data.stream import batches
from focusml.core.run import run

from test_folder import make_tree

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("stream"), per_class=6, size=(12, 10), clean=True)


def both(root: Path, **kw):
    return (load("folder", DataOptions(root=root, loading="memory", **kw)),
            load("folder", DataOptions(root=root, loading="stream", **kw)))


def test_streamed_rows_match_memory_and_so_does_the_fingerprint(tree):
    mem, st = both(tree, image_size=16)
    assert set(mem.splits) == set(st.splits) and st.image_shape == mem.image_shape == (1, 16, 16)
    for name, s in st.splits.items():
        m = mem.splits[name]
        assert s.streamed and not m.streamed and len(s) == len(m)
        assert s.images.shape == m.images.shape and s.masks.shape == m.masks.shape
        assert torch.equal(s.images[:], m.images) and torch.equal(s.masks[torch.arange(len(s))], m.masks)
        assert torch.equal(s.annotated, m.annotated)
        for got, want in zip(s.batch(torch.tensor([3, 0])), m.batch(torch.tensor([3, 0]))):
            assert torch.equal(got, want)
    assert st.fingerprint == mem.fingerprint


def test_rows_index_like_a_tensor(tree):
    mem, st = both(tree)
    s, m = st.splits["train"].images, mem.splits["train"].images
    for key in (2, -1, slice(1, 5), slice(None, None, 3), [4, 1, 1], torch.tensor([0, 2]),
                torch.arange(len(m)) % 2 == 0):
        assert torch.equal(s[key], m[key]), key
    with pytest.raises(IndexError):
        s[len(m)]


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [("pas", {"mask_budget": 4, "mask_corruption": "shifted", "dilate": 1}),
                                           ("random_crop", {})])
def test_a_streamed_run_gives_the_in_memory_weights_and_metrics(tree, method, extra):
    results = []
    for mode in ("memory", "stream"):
        config = RunConfig.from_flat(dict(dataset="folder", data_root=str(tree), data_loading=mode, method=method,
                                          epochs=2, batch_size=5, device="cpu", **extra))
        results.append(run(config))
    a, b = results
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    keys = [k for k in a.metrics if not k.startswith("time/")]
    assert [a.metrics[k] for k in keys] == pytest.approx([b.metrics[k] for k in keys], nan_ok=True, abs=0)


def test_auto_streams_above_a_share_of_the_available_memory(tree, monkeypatch):
    monkeypatch.setattr(stream, "available_memory", lambda: 10**12)
    assert not load("folder", DataOptions(root=tree)).splits["train"].streamed
    monkeypatch.setattr(stream, "available_memory", lambda: 4000)  # the tree decodes to ~5 kB > 1 kB
    data = load("folder", DataOptions(root=tree))
    assert data.splits["train"].streamed and data.params["streamed"]
    assert stream.streams("auto", 1001) and not stream.streams("auto", 1000) and not stream.streams("memory", 10**15)


def test_bad_data_loading_options_are_refused():
    with pytest.raises(FocusmlError, match="--data-loading is 'disk'; choose one of auto, memory, stream"):
        RunConfig(data_loading="disk").validate()
    with pytest.raises(FocusmlError, match="reads a folder dataset from disk"):
        RunConfig(dataset="decoy-digits", data_loading="stream").validate()


def test_a_file_broken_after_loading_fails_with_one_line_naming_it(tmp_path):
    root = make_tree(tmp_path / "d", per_class=8)
    data = load("folder", DataOptions(root=root, loading="stream"))
    split = data.splits["train"]
    bad = Path(split.images.items[5][0])
    bad.write_bytes(b"not a png")
    with pytest.raises(FocusmlError) as err:  # read by a worker process, raised here as the same one line
        list(batches(split, torch.arange(len(split)), 4))
    message = str(err.value)
    assert message.startswith(f"folder dataset: image {bad} is not a readable image") and "\n" not in message


def test_a_streamed_read_never_leaves_the_root(tmp_path):
    root = make_tree(tmp_path / "d")
    data = load("folder", DataOptions(root=root, loading="stream"))
    target = Path(data.splits["train"].images.items[0][0])
    outside = tmp_path / "outside.png"
    Image.open(target).save(outside)
    target.unlink()
    os.symlink(outside, target)  # swapped for a link to outside the dataset after loading
    with pytest.raises(FocusmlError, match="outside the dataset root"):
        data.splits["train"].images[0]


def test_log_datasets_describes_a_streamed_split_without_decoding_it(tree):
    from focusml.tracking.log import split_dataset

    _, st = both(tree)
    ds = split_dataset(st, "train", "0123")
    assert ds.profile["features_shape"] == [12, 1, 10, 12] or tuple(ds.profile["features_shape"]) == (12, 1, 10, 12)


@pytest.mark.slow
def test_the_benchmark_jobs_at_toy_size(tmp_path):
    spec = importlib.util.spec_from_file_location("stream_bench", REPO / "benchmarks" / "stream.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = bench.write_dataset(tmp_path / "big", 40)
    big = bench.job_big(str(root), image_size=40, batch_size=16)
    assert big["streamed"] and big["train_images"] == 40 and big["rows"] == 40 + 2 * bench.EVAL_IMAGES
    assert big["peak"] > big["baseline_rss"] / 2 and big["images_per_s"] > 0
    speed = bench.job_speed(str(root), image_size=32, batch_size=16, repeats=1)
    assert len(speed["memory"]) == len(speed["stream"]) == 1 and min(speed["stream"] + speed["memory"]) > 0
