"""The photographer's workflow: phone photos, knowing before committing, choosing what to
process and how outputs are named, sidecar ratings, job files, contact sheets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image

from srpie_cli import batch, images
from srpie_cli.inference import Settings
from tests.conftest import pattern, shared_data, write_jpeg

pytestmark = pytest.mark.usefixtures("one_thread")


def write_heic(path: Path, h: int = 24, w: int = 32, orientation: int = 6) -> Path:
    """An iPhone-like HEIC: EXIF with make, model, date, GPS, and an orientation (which the
    HEIF container holds as a rotation)."""
    assert images.HEIF, "pillow-heif is a dependency"
    a = pattern(h, w, 7)
    a[:4, :8] = 255  # a white corner shows where the top left went
    exif = piexif.dump({"0th": {piexif.ImageIFD.Orientation: orientation, piexif.ImageIFD.Make: b"Apple",
                                piexif.ImageIFD.Model: b"iPhone 12"},
                        "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2021:04:11 15:47:53"},
                        "GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((52, 1), (30, 1), (0, 1))}})
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format="HEIF", exif=exif, quality=90)
    return path


def run(inputs, out, tiny_model, **kw):
    return batch.enhance(inputs=inputs, output=out, settings=Settings(model=str(tiny_model), device="cpu"), **kw)


# ----------------------------------------------------------------------------- phone photos

def test_heic_in_a_mixed_shoot_is_delivered_as_jpeg_with_its_exif_upright(tmp_path, tiny_model):
    shoot = tmp_path / "shoot"
    write_heic(shoot / "guest/IMG_4021.HEIC")
    write_jpeg(shoot / "IMG_0001.jpg")
    out = run([shoot], tmp_path / "out", tiny_model)
    assert out.count("done") == 2 and out.count("failed") == 0
    dst = tmp_path / "out/guest/IMG_4021.jpg"
    with Image.open(dst) as im:
        assert im.format == "JPEG" and im.size == (48, 64)  # upright: 24 x 32 turned, at 2x
        exif = piexif.load(im.info["exif"])
        px = np.asarray(im)
    assert exif["0th"][piexif.ImageIFD.Make] == b"Apple" and exif["0th"][piexif.ImageIFD.Orientation] == 1
    assert exif["Exif"][piexif.ExifIFD.DateTimeOriginal] == b"2021:04:11 15:47:53"
    assert exif["GPS"][piexif.GPSIFD.GPSLatitudeRef] == b"N"
    assert px[:12, -12:].mean() > 200 and px[:12, :12].mean() < 200  # the white corner went top right


def test_heic_format_option_wins(tmp_path, tiny_model):
    write_heic(tmp_path / "s/IMG_1.heic")
    run([tmp_path / "s"], tmp_path / "o", tiny_model, fmt="png")
    assert (tmp_path / "o/IMG_1.png").is_file()


def test_avif_is_read_upright_with_its_exif(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow reads no AVIF")
    a = pattern(24, 32, 1)
    Image.fromarray(a).save(tmp_path / "a.avif", exif=piexif.dump({"0th": {274: 6, 271: b"Google"}}), quality=90)
    p = images.read_photo(tmp_path / "a.avif")
    assert p.size == (24, 32) and p.exif["0th"][271] == b"Google"
    assert images.output_format(p.source_format, None) == "jpeg"


def test_photo_like_files_srpie_cannot_read_are_named_with_the_reason(tmp_path, tiny_model):
    shoot = tmp_path / "shoot"
    write_jpeg(shoot / "IMG_0001.jpg")
    (shoot / "IMG_0002.jxl").write_bytes(b"\xff\x0a" + bytes(64))
    (shoot / "cover.psd").write_bytes(b"8BPS" + bytes(64))
    (shoot / "IMG_0003.dat").write_bytes((shoot / "IMG_0001.jpg").read_bytes())  # a JPEG misnamed
    (shoot / "IMG_0001.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")  # a sidecar: not a photo
    (shoot / "notes.txt").write_text("shot list")
    out = run([shoot], tmp_path / "out", tiny_model)
    why = {Path(r.input).name: r for r in out.results if r.status == "skipped"}
    assert set(why) == {"IMG_0002.jxl", "cover.psd", "IMG_0003.dat"}
    assert "JPEG XL" in why["IMG_0002.jxl"].reason and "Photoshop" in why["cover.psd"].reason
    assert "looks like JPEG" in why["IMG_0003.dat"].reason
    assert out.count("done") == 1 and out.exit_code == 0


def test_heic_unreadable_without_pillow_heif_is_named(tmp_path, tiny_model, monkeypatch):
    write_heic(tmp_path / "s/IMG_1.HEIC")
    monkeypatch.setattr(images, "HEIF", False)
    out = run([tmp_path / "s"], tmp_path / "o", tiny_model)
    (r,) = out.results
    assert r.status == "skipped" and "pillow-heif" in r.reason


@pytest.mark.slow
def test_real_iphone_heic_is_read_upright_with_exif_gps_and_icc(tmp_path, tiny_model):
    p = images.read_photo(shared_data("exif", "heic", "IMG_5195.HEIC"))
    assert p.exif["0th"][piexif.ImageIFD.Make] == b"Apple" and p.exif["GPS"] and p.icc and p.xmp
    turned = images.read_photo(shared_data("exif", "heic", "mobile", "iphone_13_pro_max.HEIC"))
    assert turned.size == (3024, 4032) and turned.exif["0th"][piexif.ImageIFD.Orientation] == 1  # portrait
    # a real HEIF through the whole batch
    (tmp_path / "s").mkdir()
    (tmp_path / "s/sample.heif").symlink_to(shared_data("exif", "heic", "samplefilehub.heif"))
    out = run([tmp_path / "s"], tmp_path / "o", tiny_model)
    assert out.count("done") == 1
    with Image.open(tmp_path / "o/sample.jpg") as im:
        assert im.size == (1280, 852) and "exif" in im.info and b"x:xmpmeta" in im.info.get("xmp", b"")


# ----------------------------------------------------------------------------- know before you commit

def small_shoot(root: Path, n: int = 3, h: int = 200, w: int = 300) -> Path:
    for i in range(n):
        write_jpeg(root / f"IMG_{i:04d}.jpg", h, w, seed=i)
    return root


def test_dry_run_writes_nothing_and_estimates_within_a_factor_of_2(tmp_path, tiny_model):
    import time

    shoot = small_shoot(tmp_path / "shoot")
    (shoot / "bad.jpg").write_text("not a photo")
    (shoot / "IMG_9.jxl").write_bytes(b"\xff\x0a" + bytes(32))
    settings = Settings(model=str(tiny_model), device="cpu", threads=1)
    d = batch.dry_run(inputs=[shoot], output=tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists() and not (tmp_path / "shoot_srpie").exists()
    assert len(d.jobs) == 3 and d.megapixels == pytest.approx(3 * 0.06)
    assert {Path(r.input).name: r.status for r in d.results} == {"bad.jpg": "failed", "IMG_9.jxl": "skipped"}
    assert "calibrated now" in d.how
    again = batch.dry_run(inputs=[shoot], output=tmp_path / "out", settings=settings)
    assert again.how == "calibration cached" and not (tmp_path / "out").exists()
    t = time.perf_counter()
    out = batch.enhance(inputs=[shoot], output=tmp_path / "out", settings=settings)
    real = time.perf_counter() - t
    assert out.count("done") == 3
    assert real / 2 <= again.seconds <= real * 2, (again.seconds, real)


def test_dry_run_on_the_command_line(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from srpie_cli.cli import app

    shoot = small_shoot(tmp_path / "shoot", n=2, h=24, w=32)
    r = CliRunner().invoke(app, ["enhance", str(shoot), "--dry-run", "--model", str(tiny_model), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "would enhance" in r.output and "0.0 MP" in r.output and "nothing written" in r.output
    assert not (tmp_path / "shoot_srpie").exists()


def test_progress_counts_megapixels_and_tiles(tmp_path, tiny_model):
    seen = []

    class Watch(batch.Listener):
        wants_estimate = True

        def sizes(self, megapixels, seconds):
            seen.append(("sizes", sum(megapixels.values()), seconds))

        def tiles(self, src, done, total):
            seen.append(("tiles", Path(src).name, done, total))

    shoot = small_shoot(tmp_path / "shoot", n=1, h=200, w=300)
    batch.enhance(inputs=[shoot], output=tmp_path / "out", listener=Watch(),
                  settings=Settings(model=str(tiny_model), device="cpu", tile=96))
    assert seen[0][0] == "sizes" and seen[0][1] == pytest.approx(0.06) and seen[0][2] > 0
    tiles = [s for s in seen if s[0] == "tiles"]
    assert tiles[-1][2] == tiles[-1][3] > 1 and len(tiles) > 1  # a frame of several tiles shows progress within


def test_speeds_print_with_significant_digits():
    from srpie_cli.cli import _duration, _sig

    assert _sig(0.013812) == "0.0138" and _sig(12.345) == "12.3"
    assert _duration(40) == "40 s" and _duration(600) == "10 min"
