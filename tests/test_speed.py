"""The CPU speed path: bfloat16 where the CPU has it, and the default model chosen per device.

Behaviour only: how fast it runs is for benchmarks/shoot.py (benchmarks/RESULTS.md)."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srpie_cli import defaults
from srpie_cli.accel import prepare
from srpie_cli.cli import app
from srpie_cli.inference import Settings, default_model, load, pick_precision
from srpie_cli.model import DeepSRPIE, SRPIEConfig, config_for
from srpie_cli.tiling import TileOptions, upscale

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(1 / mse)


def photo(h: int = 72, w: int = 88) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(xx / 5) * torch.cos(yy / 7)
    return torch.stack([base, 0.8 * base + 0.1, 1 - 0.7 * base])[None].clamp(0, 1)


def trained_looking(cfg: SRPIEConfig) -> DeepSRPIE:
    """A network whose output depends on every weight (seeded random init, not the identity)."""
    torch.manual_seed(0)
    net = DeepSRPIE(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net.eval()


def test_bfloat16_stays_within_45_db_of_float32_on_a_photo():
    net = trained_looking(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6))
    x, opts = photo(), TileOptions(tile=48, overlap=8)
    ref = upscale(prepare(net, "cpu", compile=False), x, opts)
    out = upscale(prepare(net, "cpu", compile=False, bf16=True), x, opts)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref)  # it did run in bfloat16
    assert psnr(out, ref) >= 45
    assert (out.mean((2, 3)) - ref.mean((2, 3))).abs().max() < 2 / 255  # the look: each channel's level kept


@pytest.mark.slow
def test_bfloat16_compiled_stays_within_45_db_of_float32():
    net = trained_looking(config_for("fast", du_features=True, global_context=True, own_look_input=True))
    x, opts = photo(96, 96), TileOptions(tile=64, overlap=8, fit=False)
    ref = upscale(prepare(net, "cpu", compile=False), x, opts)
    fast = prepare(net, "cpu", compile=True, bf16=True)
    out = upscale(fast, x, opts)
    assert fast.compiled and psnr(out, ref) >= 45
    assert next(net.parameters()).dtype == torch.float32  # the bfloat16 copy is the compiled graph's own


def test_precision_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    from srpie_cli import accel, int8

    said = []
    cpu = torch.device("cpu")
    monkeypatch.setattr(int8, "vnni_support", lambda: "no VNNI")  # int8: tests/test_int8.py
    monkeypatch.setattr(accel, "bf16_support", lambda device: None)
    assert pick_precision(Settings(precision="auto"), cpu, said.append) == "bfloat16"
    assert pick_precision(Settings(precision="float32"), cpu, said.append) == "float32"
    assert not said
    monkeypatch.setattr(accel, "bf16_support", lambda device: "this CPU has neither AVX512-BF16 nor AMX")
    assert pick_precision(Settings(precision="auto"), cpu, said.append) == "float32"
    assert not said  # auto falls back quietly
    assert pick_precision(Settings(precision="bfloat16"), cpu, said.append) == "float32"
    assert "AVX512-BF16" in said[-1]  # asked for by name: said


def test_half_keeps_its_meaning():
    said = []
    cuda = torch.device("cuda")  # pick_precision does not touch the device for --half
    assert pick_precision(Settings(half=True), cuda, said.append) == "float16"
    assert pick_precision(Settings(half=True, precision="float32"), cuda, said.append) == "float32"
    assert "--half is ignored" in said[-1]
    assert pick_precision(Settings(half=True, precision="float32"), torch.device("cpu"), said.append) == "float32"
    with pytest.raises(Exception, match="unknown precision"):
        pick_precision(Settings(precision="int4"), torch.device("cpu"), said.append)


def test_the_default_model_is_chosen_per_device():
    assert default_model("cpu") == defaults.CPU_MODEL != defaults.MODEL == default_model("cuda:1")
    assert Settings(device="cpu").model == defaults.CPU_MODEL
    assert Settings(device="cuda").model == defaults.MODEL
    assert Settings(device="cpu", model="srpie-x2").model == "srpie-x2"  # a named model is kept
    assert defaults.CPU_MODEL in defaults.SHIPPED and defaults.SHIPPED[defaults.CPU_MODEL].enhances


def test_load_says_the_precision_and_whether_the_model_is_the_devices_default(tiny_model):
    e = load(Settings(model=str(tiny_model), device="cpu", compile="off", precision="float32"))
    assert e.meta["precision"] == e.settings.precision == "float32" and not e.meta["default_for"]
    e = load(Settings(device="cpu", compile="off"))  # no model named: the CPU's (the shipped fast model)
    assert e.meta["default_for"] == "cpu" and e.settings.model == defaults.CPU_MODEL
    assert e.meta["precision"] in ("bfloat16", "float32") and e.model.bf16 == (e.meta["precision"] == "bfloat16")


def test_enhance_precision_option_and_header(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "s").mkdir()
    Image.fromarray((photo(24, 32)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "s" / "a.png")
    r = runner.invoke(app, ["enhance", str(tmp_path / "s"), "-o", str(tmp_path / "o"), "--model", str(tiny_model),
                            "--device", "cpu", "--precision", "float32"])
    assert r.exit_code == 0, r.output
    assert "float32" in r.output and (tmp_path / "o" / "a.png").is_file()
    r = runner.invoke(app, ["enhance", str(tmp_path / "s"), "--precision", "int4"])
    assert r.exit_code == 2
    # a job file may set it too
    (tmp_path / "s" / "srpie.toml").write_text('precision = "int4"\n')
    r = runner.invoke(app, ["enhance", str(tmp_path / "s"), "-o", str(tmp_path / "o2"), "--model", str(tiny_model)])
    assert r.exit_code == 2 and "precision" in r.output


def test_models_names_the_default_of_each_device():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    assert "default on a CPU" in r.stdout and "default on CUDA" in r.stdout
