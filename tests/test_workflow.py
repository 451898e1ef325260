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
