import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image
from typer.testing import CliRunner

from srpie_cli import __version__, images
from srpie_cli.cli import app
from tests.conftest import BAD, DATE, GOOD, GPS, MAKE, MODEL, PAIR_JPEG, digest, srgb_icc, write_jpeg

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    """The memory of failures (batch.state_dir) kept inside the test's folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def enhance(*args):
    return runner.invoke(app, ["enhance", *map(str, args)])


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if images.TMP_MARK in p.name]


def test_a_whole_shoot(shoot, tiny_model, tmp_path):
    before = digest(shoot)
    report = tmp_path / "report.json"
    r = enhance(shoot, "--model", tiny_model, "--report", report)
    assert r.exit_code == 1, r.output  # the bad files failed, the rest is done
    out = shoot.parent / "shoot_srpie"
    doc = json.loads(report.read_text())
    files = {str(Path(f["input"]).relative_to(shoot)): f for f in doc["files"]}

    for rel, ((w, h), out_name) in GOOD.items():
        assert files[rel]["status"] == "done", files[rel]
        dst = out / Path(rel).parent / out_name
        assert files[rel]["output"] == str(dst)
        photo = images.read_photo(dst)
        assert photo.size == (2 * w, 2 * h), rel  # exactly 2x the upright input
        # every output says who made it, is upright as stored, and knows its new size
        z = photo.exif["0th"]
        assert z[piexif.ImageIFD.Software] == f"srpie {__version__}".encode(), rel
        assert z.get(piexif.ImageIFD.Orientation, 1) == 1, rel
        px = photo.exif["Exif"]
        assert (px[piexif.ExifIFD.PixelXDimension], px[piexif.ExifIFD.PixelYDimension]) == (2 * w, 2 * h), rel
        assert not photo.exif["thumbnail"], rel
    # metadata: the camera JPEGs (one with orientation 6 and a thumbnail; GPS, ICC)
    for name in ("IMG_0001.jpg", "IMG_0002.JPG"):
        cam = images.read_photo(out / "day1" / name)
        z, e = cam.exif["0th"], cam.exif["Exif"]
        assert (z[piexif.ImageIFD.Make], z[piexif.ImageIFD.Model]) == (MAKE, MODEL)
        assert z[piexif.ImageIFD.Copyright] == b"(c) Studio" and e[piexif.ExifIFD.DateTimeOriginal] == DATE
        assert e[piexif.ExifIFD.LensModel] == b"RF24-70mm F2.8" and e[piexif.ExifIFD.ExposureTime] == (1, 250)
        assert cam.exif["GPS"] == GPS
        assert cam.icc == srgb_icc()
    with Image.open(out / "day1/IMG_0001.jpg") as im:  # 4:4:4 chroma
        assert im.layer[0][1:3] == im.layer[1][1:3] == (1, 1)
    assert images.read_photo(out / "day1/sub dir/café ñ.png").alpha is not None
    tif = images.read_photo(out / "day2/scan 16bit.tif")
    assert tif.bits == 16 and tif.icc == srgb_icc()
    raw = images.read_photo(out / "raw/IMG_0100.tif")
    assert raw.bits == 16 and raw.exif["0th"][piexif.ImageIFD.Make] == MAKE  # EXIF from the RAW container

    failed_lines = [line for line in r.stderr.splitlines() if line.startswith("failed ")]
    for rel, why in BAD.items():
        assert files[rel]["status"] == "failed" and why in files[rel]["reason"], files[rel]
        # named on stderr, with the reason, on one line
        assert any(str(shoot / rel) in line and why in line for line in failed_lines), (rel, failed_lines)
        assert not (out / rel).exists()
    assert files[PAIR_JPEG]["status"] == "skipped" and "RAW+JPEG" in files[PAIR_JPEG]["reason"]
    assert not any(".hidden" in k or ".cache" in k for k in files)
    assert doc["summary"] == {"done": len(GOOD), "failed": len(BAD), "skipped": 1, "interrupted": 0}
    assert no_temporaries(out)
    assert digest(shoot) == before  # inputs byte-identical

    # a second run does no work
    def photos(folder):
        return {k: v for k, v in digest(folder).items() if not k.endswith(".srpie.lock")}

    outputs = photos(out)
    r2 = enhance(shoot, "--model", tiny_model, "--report", report)
    doc2 = json.loads(report.read_text())
    assert doc2["summary"]["done"] == 0 and doc2["summary"]["skipped"] == len(GOOD) + 1
    assert r2.exit_code == 1  # the bad files are still bad
    assert photos(out) == outputs


def test_format_override_and_quality(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 12, 16)
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--format", "tiff", "-q")
    assert r.exit_code == 0, r.output
    assert images.read_photo(tmp_path / "o/a.tif").size == (32, 24)
    assert r.stdout == ""  # --quiet: nothing on stdout


def test_usage_errors_exit_2_before_any_work(tmp_path, tiny_model):
    assert enhance(tmp_path / "missing", "--model", tiny_model).exit_code == 2
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    (tmp_path / "f").write_text("a file")
    r = enhance(tmp_path / "s", "-o", tmp_path / "f" / "out", "--model", tiny_model)
    assert r.exit_code == 2 and "cannot be created" in r.output
    assert enhance(tmp_path / "s", "--raw-jpeg", "maybe").exit_code == 2
    assert not (tmp_path / "s_srpie").exists()


def test_plain_log_when_not_a_terminal(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    (tmp_path / "s/b.jpg").write_bytes(b"")
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model)
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert any(line.startswith("done ") and "a.jpg" in line for line in lines)
    assert any(line.startswith("failed ") and "b.jpg" in line and "empty" in line for line in lines)
    assert "done" in r.stdout and "failed" in r.stdout  # the summary table


def test_preview_sheet(tmp_path, tiny_model):
    p = write_jpeg(tmp_path / "a.jpg", 24, 32)
    r = runner.invoke(app, ["preview", str(p), "--model", str(tiny_model), "--crop", "8", "--at", "0.2,0.7"])
    assert r.exit_code == 0, r.output
    sheet = Path(r.stdout.strip())
    assert sheet == tmp_path / "a_srpie_preview.png"
    with Image.open(sheet) as im:
        assert im.width >= 2 * 64 and im.height > 48 + 16 * 3
    assert runner.invoke(app, ["preview", str(p), "--model", str(tiny_model), "--at", "2,2"]).exit_code == 2
    # a later batch run over the folder enhances the photo, not the sheet left beside it
    from srpie_cli import batch

    assert [j.src.name for j in batch.plan([tmp_path]).jobs] == ["a.jpg"]


def test_examples_plan():
    from srpie_cli import batch

    p = batch.plan([REPO / "examples"], output=REPO / "examples_out_never_created")
    assert sorted(j.src.name for j in p.jobs) == ["astronaut.jpg", "chelsea.png", "coffee.jpg"]


@pytest.mark.slow
def test_examples_end_to_end(tmp_path, tiny_model):
    r = enhance(REPO / "examples", "-o", tmp_path / "out", "--model", tiny_model, "--tile", "0")
    assert r.exit_code == 0, r.output
    with Image.open(REPO / "examples/chelsea.png") as a, Image.open(tmp_path / "out/chelsea.png") as b:
        assert b.size == (2 * a.width, 2 * a.height)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_killed_run_leaves_no_partial_output_and_the_next_run_finishes(tmp_path, tiny_model, sig):
    n = 12  # enough that the run is still going when the signal comes, even on a loaded machine
    for i in range(n):
        write_jpeg(tmp_path / f"s/{i:02d}.jpg", 240, 300, seed=i)  # 0.1-0.5 s each: time to signal
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "srpie_cli", "enhance", str(tmp_path / "s"), "-o", str(out),
           "--model", str(tiny_model), "--tile", "0"]
    # SIGINT as a terminal delivers it: a shell starts background jobs with it ignored, and
    # Python (like srpie) keeps an ignored SIGINT ignored, so a test run in the background
    # would see the run finish instead
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("*.jpg")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    done = sorted(out.glob("*.jpg"))
    assert proc.returncode == 128 + sig, stderr.decode()
    assert 1 <= len(done) < n
    assert no_temporaries(out)
    for p in done:  # every output there is complete
        assert images.read_photo(p).size == (600, 480)
    r = enhance(tmp_path / "s", "-o", out, "--model", tiny_model, "--tile", "0")
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.jpg"))) == n
    assert "done" in r.stdout and f"skipped │ {len(done)}" in r.stdout


def test_preview_sheet_puts_bicubic_left_srpie_right_and_their_crops_below():
    from srpie_cli.preview import GAP, LABEL_H, sheet

    h, w = 40, 60
    before = np.zeros((h, w, 3), np.uint8)
    after = np.full((h, w, 3), 255, np.uint8)
    after[10:20, 30:40] = (0, 0, 255)  # the crop centre is blue in the srpie panel only
    im = np.asarray(sheet(before, after, crop=10, zoom=3, at=(35 / w, 15 / h)))
    top, col = GAP + LABEL_H, w + GAP  # panels at full size: the image is smaller than max_side
    assert (im[top + 2, GAP + 2] == 0).all()  # bicubic panel
    assert (im[top + 2, GAP + col + 2] == 255).all()  # srpie panel
    crop_top = 2 * GAP + LABEL_H + h + LABEL_H
    assert tuple(im[crop_top + 15, GAP + col + 15]) == (0, 0, 255)  # srpie crop, magnified: 30x30 of blue
    assert (im[crop_top + 15, GAP + 15] == 0).all()  # bicubic crop
    assert im.shape[:2] == (crop_top + 30 + GAP, 2 * col + GAP)


def test_preview_with_half_on_the_cpu_warns_and_works(tmp_path, tiny_model):
    p = write_jpeg(tmp_path / "a.jpg", 16, 16)
    r = runner.invoke(app, ["preview", str(p), "--model", str(tiny_model), "--half", "--device", "cpu", "-o", str(tmp_path / "s.jpg")])
    assert r.exit_code == 0, r.output
    assert "--half needs a CUDA device" in r.stderr
    with Image.open(tmp_path / "s.jpg") as im:
        assert im.format == "JPEG"


def test_an_output_folder_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, tiny_model, monkeypatch):
    from srpie_cli import batch

    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    (tmp_path / "o").mkdir()
    real = Path.write_bytes

    def read_only(self, data):  # as root, chmod does not stop writing: simulate the error
        if self.parent == tmp_path / "o":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(batch, "run", lambda *a, **kw: pytest.fail("work started"))
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model)
    assert r.exit_code == 2 and "cannot be created or written (Permission denied)" in r.stderr
    assert r.stderr.count("\n") == 1  # one line
    assert list((tmp_path / "o").iterdir()) == []


def test_strength_scales_the_models_look(tmp_path):
    import torch

    from srpie_cli.model import DeepSRPIE, SRPIEConfig
    from srpie_cli.weights import save_weights

    torch.manual_seed(0)
    net = DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6))
    with torch.no_grad():
        net.penet.stage9.bias[9:12] = 1.3  # a look that brightens every channel by 30%
    model = tmp_path / "bright.pt"
    save_weights(model, net, {"name": "bright"})
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 20, 3), 120, np.uint8)).save(src / "grey.png")
    means = {}
    for s in ("0", "0.5", "1"):
        r = enhance(src, "-o", tmp_path / f"out{s}", "--model", model, "--strength", s, "--compile", "off")
        assert r.exit_code == 0, r.output
        means[s] = np.asarray(Image.open(tmp_path / f"out{s}" / "grey.png")).astype(float).mean()
    assert abs(means["0"] - 120) < 2  # no look: the upscale of the photo as it is
    assert means["0.5"] == pytest.approx(120 * 1.15, abs=2)
    assert means["1"] == pytest.approx(120 * 1.3, abs=2)
    assert enhance(src, "-o", tmp_path / "bad", "--model", model, "--strength", "3").exit_code == 2


def test_a_name_with_a_newline_or_an_escape_stays_on_its_own_log_line(tmp_path, tiny_model):
    """A file named "bad.jpg<newline>done good.jpg" cannot print a log line that says a
    photo was done, nor a terminal escape reach the terminal."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "bad.jpg\ndone good.jpg").write_bytes(b"not a photo")
    (tmp_path / "s" / "x\x1b[2Jy.jpg").write_bytes(b"not a photo")
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model)
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert not [line for line in lines if line.startswith("done")] and "\x1b[2J" not in r.output
    assert any("bad.jpg\\ndone good.jpg" in line and "failed" in line for line in lines)
