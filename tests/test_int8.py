"""int8 convolutions (int8.py): the calibration, the substitution in call order, what it costs
in accuracy, and where --precision auto picks it. How fast it runs is for benchmarks/shoot.py."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srpie_cli import int8
from srpie_cli.accel import can_compile
from srpie_cli.inference import Settings, pick_precision
from srpie_cli.int8 import calibration_file
from srpie_cli.model import Upscaler
from srpie_cli.weights import load_model, resolve

pytestmark = pytest.mark.usefixtures("one_thread")
needs_vnni = pytest.mark.skipif(int8.vnni_support() is not None, reason="no int8 convolutions on this CPU")
needs_compiler = pytest.mark.skipif(can_compile(torch.device("cpu")) is not None, reason="cannot compile here")


def scene(h: int, w: int, seed: int) -> torch.Tensor:
    """A photo-like tile: smooth colour gradients, edges and a little noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, 1 - xx * yy]) * (0.3 + 0.7 * ((xx * 7 + seed).floor() % 2))
    return (base[None] + 0.03 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.float().clamp(0, 1) - b.float().clamp(0, 1)) ** 2).mean()))


@pytest.fixture(scope="module")
def fast_sr():
    model, _ = load_model("srpie-x2-fast-sr")
    return Upscaler(model.eval())


def test_every_convolution_is_seen_in_call_order(fast_sr):
    calls = []
    with torch.inference_mode(), int8._Convs(lambda i, x, w, b, *g: calls.append((i, w.shape)) or F.conv2d(x, w, b, *g)):
        fast_sr(scene(40, 40, 0))
    assert [i for i, _ in calls] == list(range(len(calls))) and len(calls) > 40
    convs = int8.calibrate(fast_sr, [scene(40, 40, 0), scene(48, 32, 1)])
    assert [c["weight"] for c in convs] == [list(s) for _, s in calls]
    assert all(c["lo"] <= 0 <= c["hi"] for c in convs)
    assert convs[0]["lo"] == 0 and 0.9 < convs[0]["hi"] <= 1  # the first reads the photo itself


@needs_vnni
def test_int8_stays_within_45_db_of_float32_on_an_unseen_tile(fast_sr):
    convs = int8.calibrate(fast_sr, [scene(64, 64, 1), scene(64, 64, 2)] + int8.extremes(64))
    quant = int8.Int8Convs(fast_sr, fast_sr, convs)
    assert sum(q is not None for q in quant.plan) >= 20  # the 3x3 and 5x5 feature convolutions
    assert quant.plan[0] is None  # the one on the photo stays float
    found = int8.kernels(fast_sr)
    assert all(q is None for q, k in zip(quant.plan, found) if k[0].shape[-1] == 1 or k[5] > 1)  # 1x1, depthwise
    x = scene(72, 56, 3)
    with torch.inference_mode():
        ref, out = fast_sr(x), quant(x)
    assert out.shape == ref.shape and not torch.equal(out, ref)
    assert psnr(out, ref) >= 45


@needs_vnni
def test_a_calibration_for_another_network_is_refused(fast_sr):
    convs = int8.calibrate(fast_sr, [scene(32, 32, 0)])
    with pytest.raises(ValueError, match="another network"):
        int8.Int8Convs(fast_sr, fast_sr, convs[:-1])
    convs[5] = {**convs[5], "weight": [1, 2, 3, 3]}
    with pytest.raises(ValueError, match="another network"):
        int8.Int8Convs(fast_sr, fast_sr, convs)


def test_a_calibration_file_belongs_to_its_weights(tmp_path):
    model, _ = load_model("srpie-x2-fast-sr")
    convs = int8.calibrate(Upscaler(model), [scene(32, 32, 0)])
    path = tmp_path / "m.int8.json"
    assert int8.read(path, model) is None  # none: no int8, no error
    int8.save(path, model, convs, {"model": "m"})
    assert int8.read(path, model) == json.loads(json.dumps(convs))
    with torch.no_grad():
        model.h.bias.add_(1e-3)
    with pytest.raises(ValueError, match="other weights"):
        int8.read(path, model)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not an int8 calibration"):
        int8.read(path, model)
    assert int8.calibration_path(tmp_path / "house.pt") == tmp_path / "house.int8.json"


@needs_vnni
@pytest.mark.parametrize("name", ["srpie-x2-fast", "srpie-x2", "srpie-x2-sr", "srpie-x2-fast-sr"])
def test_each_shipped_calibration_fits_its_weights(name):
    path = calibration_file(name)
    assert path is not None and path == int8.calibration_path(resolve(name))
    model, _ = load_model(name)
    convs = int8.read(path, model)
    quant = int8.Int8Convs(Upscaler(model), Upscaler(model), convs)  # shapes and call order checked
    assert sum(q is not None for q in quant.plan) >= 20


def test_precision_auto_picks_int8_where_the_cpu_and_the_model_have_it(monkeypatch, tiny_model):
    from srpie_cli import accel

    said, cpu, uncalibrated = [], torch.device("cpu"), str(tiny_model)
    monkeypatch.setattr(accel, "bf16_support", lambda device: None)
    monkeypatch.setattr(int8, "vnni_support", lambda: None)
    assert pick_precision(Settings(model="srpie-x2-fast", precision="auto"), cpu, said.append) == "int8"
    assert pick_precision(Settings(model=uncalibrated, precision="auto"), cpu, said.append) == "bfloat16"
    assert not said
    assert pick_precision(Settings(model=uncalibrated, precision="int8"), cpu, said.append) == "bfloat16"
    assert "no int8 calibration" in said[-1] and "srpie calibrate" in said[-1]
    assert pick_precision(Settings(model="srpie-x2-fast", precision="bfloat16"), cpu, said.append) == "bfloat16"
    assert pick_precision(Settings(model="srpie-x2-fast", precision="int8"), torch.device("cuda"),
                          said.append) == "bfloat16"  # what the warning says runs
    assert "CPU only" in said[-1] and "bfloat16" in said[-1]
    monkeypatch.setattr(int8, "vnni_support", lambda: "this CPU has neither AVX512-VNNI nor AMX")
    assert pick_precision(Settings(model="srpie-x2-fast", precision="auto"), cpu, said.append) == "bfloat16"
    assert pick_precision(Settings(model="srpie-x2-fast", precision="int8"), cpu, said.append) == "bfloat16"
    assert "VNNI" in said[-1]


def test_calibrate_command_writes_a_calibration_that_load_uses(tmp_path, tiny_model):
    import shutil

    from PIL import Image
    from typer.testing import CliRunner

    from srpie_cli.cli import app
    from srpie_cli.inference import load

    model = tmp_path / "tiny.pt"
    shutil.copy(tiny_model, model)
    (tmp_path / "shoot").mkdir()
    for i in range(2):
        Image.fromarray((scene(40, 48, i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            tmp_path / "shoot" / f"{i}.png")
    (tmp_path / "shoot" / "broken.jpg").write_bytes(b"not a jpeg")
    r = CliRunner().invoke(app, ["calibrate", str(model), str(tmp_path / "shoot")])
    assert r.exit_code == 0, r.output
    assert "broken.jpg" in r.output  # named, and the rest goes on
    blob = json.loads((tmp_path / "tiny.int8.json").read_text())
    assert blob["photos"] == 2 and blob["convs"] and blob["command"].startswith("srpie calibrate")
    if int8.vnni_support() is None and can_compile(torch.device("cpu")) is None and pick_precision(
            Settings(model=str(model), precision="int8"), torch.device("cpu"), print) == "int8":
        said = []
        e = load(Settings(model=str(model), device="cpu", compile="on", precision="auto"), warn=said.append)
        assert e.settings.precision == e.meta["precision"] == "int8" and e.model.runs_int8 and not said
        e = load(Settings(model=str(model), device="cpu", compile="off", precision="int8"), warn=said.append)
        assert e.settings.precision == "bfloat16" and "compiled tiles only" in said[-1]  # said, not silent
        e = load(Settings(model=str(model), device="cpu", compile="on", strength=0.5), warn=said.append)
        assert e.settings.precision == "bfloat16" and "--strength" in said[-1]  # its PENet is the look
    # nothing readable: refused, named
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.jpg").write_bytes(b"nope")
    r = CliRunner().invoke(app, ["calibrate", str(model), str(tmp_path / "empty")])
    assert r.exit_code != 0 and "no photo could be read" in r.output


@pytest.mark.slow
@needs_vnni
@needs_compiler
def test_compiled_int8_tiles_stay_within_45_db_of_float32(fast_sr):
    from srpie_cli.accel import prepare
    from srpie_cli.tiling import TileOptions, upscale

    model = fast_sr.net
    convs = int8.calibrate(Upscaler(model), [scene(64, 64, 1)] + int8.extremes(64))
    x, opts = scene(96, 96, 4), TileOptions(tile=64, overlap=8, fit=False)
    ref = upscale(prepare(model, "cpu", compile=False), x, opts)
    bf16 = upscale(prepare(model, "cpu", compile=True, bf16=True), x, opts)
    fast = prepare(model, "cpu", compile=True, bf16=True, int8=convs)
    out = upscale(fast, x, opts)
    assert fast.compiled and fast.runs_int8 and not torch.equal(out, bf16)  # the int8 convolutions ran
    assert psnr(out, ref) >= 45
    assert next(model.parameters()).dtype == torch.float32


@needs_compiler
def test_prepare_falls_back_to_bfloat16_when_the_calibration_does_not_fit(fast_sr):
    from srpie_cli.accel import prepare

    said = []
    convs = int8.calibrate(fast_sr, [scene(32, 32, 0)])[:-1]
    prepared = prepare(fast_sr.net, "cpu", compile=True, bf16=True, int8=convs, on_fallback=said.append)
    assert prepared.compiled and "not running int8" in said[-1] and "another network" in said[-1]
    assert not prepared.runs_int8
