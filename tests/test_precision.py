"""`--amp` and `--channels-last` (focusml/core/precision.py): bf16 trains on CPU with finite losses and is
logged; a bad value is one line and exit 2; divergence is still caught; evaluation stays float32;
channels-last changes nothing on CPU beyond float rounding; `benchmarks/gpu_check.sh` runs at toy size."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from focusml import FocusmlError, tracking
from focusml.core.callbacks import Callbacks
from focusml.cli import main
from focusml.core.config import RunConfig
from focusml.core.methods import Batch, get
from focusml.core.models import build_model
from focusml.core.precision import Precision, channels_last
from focusml.core.run import run
from focusml.core.train import Diverged, train_step
from test_folder import make_tree

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_data(tmp_path):
    """A folder dataset of 2 classes × 8 images of 16×16 with masks: an epoch takes milliseconds."""
    return make_tree(tmp_path / "ds", per_class=8, size=(16, 16))


def tiny(root: Path, **kw) -> RunConfig:
    base = dict(dataset="folder", data_root=str(root), epochs=2, batch_size=8, device="cpu", log_model=False)
    return RunConfig(**{**base, **kw})


class Params(Callbacks):
    def __init__(self):
        self.params = {}

    def log_params(self, params):
        self.params.update(params)


@pytest.mark.parametrize("value, fragment", [
    ("xx", "--amp is 'xx'; choose one of off, auto, bf16, fp16"),
    ("fp16", "--amp fp16 needs a CUDA device"),
])
def test_a_bad_amp_is_refused(value, fragment):
    with pytest.raises(FocusmlError, match=fragment):
        RunConfig(amp=value, device="cpu").validate()


def test_yaml_booleans_mean_the_words():
    """`amp: off` / `channels_last: on` in a YAML file arrive as booleans (YAML 1.1)."""
    config = RunConfig.from_flat({"amp": False, "channels_last": True, "device": "cpu"}).validate()
    assert (config.amp, config.channels_last) == ("off", "on")
    assert RunConfig(amp=True, device="cpu").validate().amp == "auto"
    with pytest.raises(FocusmlError, match="--channels-last is 'sideways'"):
        RunConfig(channels_last="sideways").validate()


def test_cli_bad_amp_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--amp", "fp8", "--device", "cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--amp is 'fp8'" in err and "bf16" in err


def test_bf16_trains_on_cpu_and_logs_what_it_resolved(tiny_data):
    recorder = Params()
    result = run(tiny(tiny_data, method="pas", amp="auto").validate(), callbacks=recorder)
    assert all(math.isfinite(h["loss/train"]) and math.isfinite(h["loss/penalty"]) for h in result.history)
    assert math.isfinite(result.metrics["acc/test"])
    assert recorder.params["amp_dtype"] == "bf16" and recorder.params["memory_format"] == "contiguous"
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # weights stay float32


@pytest.mark.slow
def test_amp_is_an_mlflow_param(tiny_data, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    result = tracking.run(tiny(tiny_data, epochs=1, amp="bf16", experiment="amp"))
    params = mlflow.get_run(result.run_id).data.params
    assert (params["amp"], params["amp_dtype"], params["channels_last"]) == ("bf16", "bf16", "auto")
    assert RunConfig.from_params(params).amp == "bf16"  # --resume reads it back


def test_autocast_covers_the_training_step_only():
    """The training forward runs in bf16; the weights and a forward outside the step stay float32."""
    torch.manual_seed(0)
    model = build_model("small", 1, 3, 16)
    seen = []
    model.features.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x, m = torch.rand(4, 1, 16, 16), torch.zeros(4, 16, 16)
    m[:, :4, :4] = 1
    method = get("rrr")({})  # an input-gradient penalty: double backward through the autocast graph
    loss, ce, pen = train_step(model, method, Batch(x, m, torch.tensor([0, 1, 2, 0]), torch.arange(4)),
                               torch.optim.SGD(model.parameters(), lr=1e-3), Precision("cpu", torch.bfloat16))
    assert seen == [torch.bfloat16] and math.isfinite(loss) and pen > 0
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        model(x)
    assert seen[-1] == torch.float32


def test_fp16_steps_through_the_gradient_scaler():
    """float16 scales the loss and keeps the scaler's state for --resume (CPU autocast runs float16 too)."""
    torch.manual_seed(0)
    model = build_model("small", 1, 3, 16)
    precision = Precision("cpu", torch.float16, scaler=torch.amp.GradScaler("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(4, 1, 16, 16)
    loss, _, _ = train_step(model, get("baseline")({}), Batch(x, torch.zeros(4, 16, 16), torch.tensor([0, 1, 2, 0]),
                                                          torch.arange(4)), torch.optim.Adam(model.parameters()), precision)
    assert math.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the step was taken
    state = precision.state_dict()
    assert state["scale"] > 0
    again = Precision("cpu", torch.float16, scaler=torch.amp.GradScaler("cpu", init_scale=1.0))
    again.load_state_dict(state)
    assert again.scaler.get_scale() == precision.scaler.get_scale()


def test_divergence_is_still_caught_under_amp(tiny_data):
    with pytest.raises(Diverged, match=r"try --lr 100000 \(or --amp off: --amp bf16 computes the loss in reduced"):
        run(tiny(tiny_data, lr=1e6, amp="bf16").validate())


def test_channels_last_auto_is_for_big_backbones_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert channels_last("auto", "resnet18", cuda) and channels_last("auto", "densenet121", cuda)
    assert not channels_last("auto", "small", cuda) and not channels_last("auto", "resnet50", cpu)
    assert channels_last("on", "small", cpu) and not channels_last("off", "resnet50", cuda)


@pytest.mark.parametrize("name, size", [("small-bn", 16), ("resnet18", 32)])
def test_channels_last_changes_nothing_but_rounding_on_cpu(name, size):
    """Same weights, same batch: forward, loss and the weights after one step agree within float noise."""
    torch.manual_seed(0)
    plain = build_model(name, 3, 4, size)
    nhwc = Precision(channels_last=True)
    other = nhwc.model(build_model(name, 3, 4, size))
    other.load_state_dict(plain.state_dict())
    assert other.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, m, y = torch.rand(6, 3, size, size), torch.zeros(6, size, size), torch.tensor([0, 1, 2, 3, 0, 1])
    m[:, : size // 4, : size // 4] = 1
    method = get("pas")({})
    losses = [train_step(net, method, Batch(x.clone(), m, y, torch.arange(6)),
                         torch.optim.SGD(net.parameters(), lr=1e-2), prec)
              for net, prec in ((plain, Precision()), (other, nhwc))]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)
    for (k, a), b in zip(plain.state_dict().items(), other.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), k
    plain.eval(), other.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), other(nhwc.input(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_toy_size(tmp_path):
    """benchmarks/gpu_check.sh: the device line and one finite row per method, AMP off and on."""
    env = dict(os.environ, PYTHON=sys.executable, FOCUSML_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--toy"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = res.stdout
    assert out.startswith("device cpu") and "AMP = --amp auto → bf16" in out
    from focusml.core.methods import METHODS

    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in METHODS}
    assert set(rows) == {m for m, cls in METHODS.items() if not cls.replaces_training}, out
    assert "FAILED" not in out and "NON-FINITE" not in out


def test_a_bf16_run_resumes_to_the_same_bits(tiny_data):
    """The training state (`weights_only` readable) continues an --amp run exactly as if never stopped."""
    class Saves(Callbacks):
        saved: dict = {}

        def on_checkpoint(self, epoch, state):
            buf = io.BytesIO()
            torch.save(state, buf)
            self.saved[epoch] = buf.getvalue()

    keep = Saves()
    config = dict(method="pas", amp="bf16", method_params={"lam": 1.0})
    full = run(tiny(tiny_data, **config).validate(), keep)
    state = torch.load(io.BytesIO(keep.saved[0]), weights_only=True)
    assert state["scaler"] is None  # bf16 needs no gradient scaler
    again = run(tiny(tiny_data, **config).validate(), Callbacks(), resume=state)
    assert [h["loss/train"] for h in again.history] == [h["loss/train"] for h in full.history]
    a, b = full.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
