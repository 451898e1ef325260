"""The top-level command line: version, help, models, eval, train."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from srpie_cli import __version__
from srpie_cli.cli import app
from srpie_cli.weights import read_weights
from tests.test_train import house_look, scene, write_pairs

runner = CliRunner()


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout
    r = runner.invoke(app, ["-h"])
    assert r.exit_code == 0
    for command in ("enhance", "preview", "train", "eval", "models"):
        assert command in r.stdout


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "srpie_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"srpie {__version__}"


def test_models_lists_every_shipped_name():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    for name in ("srpie-x2", "srpie-x2-sr", "srpie-x2-fast", "srpie-x2-fast-sr"):
        assert name in r.stdout


def test_eval_on_an_hr_folder_scores_beside_bicubic(tmp_path, tiny_model, one_thread):
    for i in range(2):
        Image.fromarray((scene(40, 36, i) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    r = runner.invoke(app, ["eval", str(tmp_path), "--model", str(tiny_model), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["images"]) == 2 and res["metric"].startswith("Y")
    # the untrained tiny network is a bicubic upscale (torch's kernel, a = -0.75, against
    # Pillow's a = -0.5 for the baseline): both score high on this smooth scene
    assert res["mean"]["psnr"] > 40 and res["mean"]["bicubic_psnr"] > 40
    assert res["mean"]["colour_shift"] < 1.0
    r = runner.invoke(app, ["eval", str(tmp_path), "--model", str(tiny_model)])
    assert r.exit_code == 0 and "mean" in r.stdout and "bicubic" in r.stdout


def test_eval_on_pairs_and_a_bad_model_is_a_one_line_error(tmp_path, tiny_model, one_thread):
    write_pairs(tmp_path / "pairs", 4, size=32)
    r = runner.invoke(app, ["eval", str(tmp_path / "pairs"), "--pairs", "--holdout", "2", "--model", str(tiny_model), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [s["name"] for s in res["images"]] == ["002", "003"] and res["metric"] == "RGB"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nonsense")
    r = runner.invoke(app, ["eval", str(tmp_path / "pairs"), "--pairs", "--model", str(bad)])
    assert r.exit_code == 1
    assert "bad.pt" in r.output and "Traceback" not in r.output


def test_train_writes_a_weights_file_that_enhance_can_use(tmp_path, tiny_model, one_thread):
    write_pairs(tmp_path / "pairs", 4, size=32)
    out = tmp_path / "house.pt"
    r = runner.invoke(app, ["train", "--pairs", str(tmp_path / "pairs"), "--init", str(tiny_model), "--steps", "4",
                            "--batch-size", "2", "--patch", "8", "--holdout", "1", "--val-every", "2",
                            "--run-dir", str(tmp_path / "run"), "--out", str(out), "--threads", "1", "--ema", "0.9"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert read_weights(out)["meta"]["train_config"]["ema"] == 0.9
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    Image.fromarray((house_look(scene(20, 24, 0)) * 255).astype(np.uint8)).save(shoot / "a.png")
    r = runner.invoke(app, ["enhance", str(shoot), "--model", str(out), "-o", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "o" / "a.png") as im:
        assert im.size == (48, 40)


def test_train_without_data_is_a_usage_error(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "x.pt"), "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 2 and "nothing to train on" in r.output
    assert not (tmp_path / "run").exists()  # refused before any folder was made
    (tmp_path / "pairs").mkdir()
    for args in (["--device", "tpu"], ["--init", "no-such-model"]):
        r = runner.invoke(app, ["train", "--out", str(tmp_path / "x.pt"), "--pairs", str(tmp_path / "pairs"),
                                "--run-dir", str(tmp_path / "run"), *args])
        assert r.exit_code == 2 and "error:" in r.output, args
        assert not (tmp_path / "run").exists()
