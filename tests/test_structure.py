"""How the code is laid out: one image path, defaults in one place, shipped files matching
their presets, functions a reader can hold, and help a photographer can read at 80 columns."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srpie_cli import defaults
from srpie_cli.cli import app
from srpie_cli.data import PairSet
from tests.conftest import camera_exif

PACKAGE = Path(__file__).resolve().parent.parent / "srpie_cli"
runner = CliRunner()


def test_no_function_in_the_package_is_over_100_lines():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{path.name}:{node.name} ({n} lines)")
    assert not long, long


def test_a_sideways_camera_jpeg_paired_with_its_upright_export_trains_on_aligned_pixels(tmp_path):
    """The camera stored the pixels sideways (orientation 6: rotate 90 degrees clockwise to
    view); the retoucher's export is upright. Training must read both upright, as srpie
    enhance does, so every 'after' pixel sits over its 'before'."""
    rng = np.random.default_rng(0)
    upright = (rng.random((48, 64, 3)) * 255).astype(np.uint8)  # as seen: 48 high, 64 wide
    stored = np.rot90(upright, 1)  # what the sensor wrote: 64 high, 48 wide
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "before/a.jpg", quality=100, subsampling=0,
                                                       exif=camera_exif(orientation=6))
    Image.fromarray(upright).save(tmp_path / "after/a.png")
    pairs, _ = PairSet.from_folders([tmp_path], scale=1)
    before, after = pairs.pairs[0]
    assert before.shape == after.shape == (48, 64, 3)
    assert float(np.abs(before - after).mean()) < 0.02  # aligned: only JPEG rounding apart


@pytest.mark.parametrize("name", sorted(defaults.SHIPPED))
def test_every_shipped_file_has_the_architecture_of_its_preset(name):
    from srpie_cli.model import SRPIEConfig, config_for
    from srpie_cli.weights import read_weights, resolve

    entry = defaults.SHIPPED[name]
    path = resolve(name)
    if path is None:
        pytest.skip(f"{name}: weights file not installed")
    assert SRPIEConfig.from_dict(read_weights(path)["config"]) == config_for(entry.preset)


def test_a_config_that_cannot_build_a_network_is_refused_naming_the_field():
    from srpie_cli.model import SRPIEConfig

    with pytest.raises(ValueError, match="width=0"):
        SRPIEConfig(width=0)
    with pytest.raises(ValueError, match="pe_widths"):
        SRPIEConfig.from_dict({"pe_widths": [8, 16]})


def test_defaults_are_defined_once_and_the_command_line_uses_them():
    from srpie_cli import images, tiling
    from srpie_cli.cli import enhance, preview
    from srpie_cli.inference import Settings

    for command in (enhance, preview):
        params = inspect.signature(command).parameters
        # no model named: the device's default (defaults.MODEL on CUDA, defaults.CPU_MODEL on a CPU)
        assert params["model"].default is None and Settings(device="cuda").model == defaults.MODEL
        assert Settings(device="cpu").model == defaults.CPU_MODEL
        assert params["overlap"].default == defaults.OVERLAP == Settings().overlap == tiling.DEFAULT_OVERLAP
        assert params["max_megapixels"].default == defaults.MAX_MEGAPIXELS == Settings().max_megapixels
        # preview's takes a list (--strength 0,0.5,1): its default is the same number, written out
        assert float(params["strength"].default) == defaults.STRENGTH == Settings().strength
    assert inspect.signature(enhance).parameters["quality"].default == defaults.QUALITY == Settings().quality
    assert images.DEFAULT_QUALITY == defaults.QUALITY and tiling.CPU_TILE == defaults.CPU_TILE


def test_the_defaults_module_imports_without_torch():
    code = "import sys; import srpie_cli.defaults; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False"


@pytest.mark.parametrize("args", [["--help"], ["enhance", "--help"], ["preview", "--help"], ["train", "--help"],
                                  ["models"]])
def test_help_reads_at_80_columns(args, monkeypatch):
    """An SSH session or a cron mail: no Python type names, nothing cut, enhance listed first."""
    monkeypatch.setenv("COLUMNS", "80")
    r = runner.invoke(app, args, env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    text = r.output
    for bad in ("<bool>", "<list", "<str>", "<int", "<float", "…"):
        assert bad not in text, (bad, args)
    assert max(len(line) for line in text.splitlines()) <= 80
    if args == ["--help"]:
        commands = [c for c in ("enhance", "preview", "models", "eval", "train") if c in text]
        assert text.index("enhance") < text.index("preview") < text.index("train")
        assert commands[0] == "enhance" and "Example" in text
    if args == ["enhance", "--help"]:
        assert "Advanced" in text and text.index("--model") < text.index("Advanced") < text.index("--tile")
    if args == ["train", "--help"]:  # the paper's ablation switches stay reachable, not shown
        assert "--no-global-skip" not in text and "--no-rrelu" not in text and "--recipe" not in text


def test_the_ablation_switches_still_work(tmp_path):
    from srpie_cli.cli import train

    params = inspect.signature(train).parameters
    assert {"global_skip", "rrelu", "recipe"} <= set(params)


def test_one_to_float_and_one_tensor_boundary():
    """The pixel helpers exist once: training and evaluation use images.to_float and
    tiling's tensor boundary, not copies of their own."""
    from srpie_cli import data, evaluate, images, tiling

    assert not hasattr(data, "to_float") or data.to_float is images.to_float
    assert not hasattr(evaluate, "to_float") or evaluate.to_float is images.to_float
    a = (np.arange(2 * 3 * 3) * 9 % 256).astype(np.uint8).reshape(2, 3, 3)
    x = tiling.to_tensor(images.to_float(a))
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert np.array_equal(images.from_float(tiling.to_pixels(x).copy(), 8), a)


def test_torch_floor_is_true():
    """pyproject's floor (torch>=2.1) holds: what newer releases renamed is looked up with a
    fallback (torch.OutOfMemoryError is 2.5's name for torch.cuda.OutOfMemoryError)."""
    from srpie_cli import tiling

    assert issubclass(tiling.OUT_OF_MEMORY, BaseException)
    assert "torch>=2.1" in (PACKAGE.parent / "pyproject.toml").read_text()
