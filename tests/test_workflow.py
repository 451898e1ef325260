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
    assert images.HEIF, "pi-heif is a dependency"
    import pillow_heif  # the test extra: srpie reads through decode-only pi-heif, the tests write

    pillow_heif.register_heif_opener()
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
    assert r.status == "skipped" and "pi-heif" in r.reason


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


# ----------------------------------------------------------------------------- choose what and how

def test_include_and_exclude_match_relative_paths_ignoring_case(tmp_path):
    shoot = tmp_path / "shoot"
    for rel in ("day1/IMG_1.JPG", "day1/IMG_2.jpg", "day1/rejects/IMG_3.jpg", "day2/IMG_4.png", "Rejects/IMG_5.jpg"):
        write_jpeg(shoot / rel) if rel.lower().endswith("jpg") else Image.fromarray(pattern(8, 8)).save(
            (shoot / rel).parent.mkdir(parents=True, exist_ok=True) or shoot / rel)
    p = batch.plan([shoot], tmp_path / "out", select=batch.Selection(include=("*.jpg",), exclude=("rejects/",)))
    assert sorted(j.src.relative_to(shoot).as_posix() for j in p.jobs) == ["day1/IMG_1.JPG", "day1/IMG_2.jpg"]
    why = {Path(r.input).relative_to(shoot).as_posix(): r.reason for r in p.results}
    assert why == {"day1/rejects": "excluded by --exclude 'rejects/'", "Rejects": "excluded by --exclude 'rejects/'",
                   "day2/IMG_4.png": "not matched by --include '*.jpg'"}
    p = batch.plan([shoot], tmp_path / "out", select=batch.Selection(exclude=("day1/*",)))
    assert sorted(j.src.name for j in p.jobs) == ["IMG_4.png", "IMG_5.jpg"]


def test_suffix_writes_beside_the_originals_and_never_takes_its_outputs(tmp_path, tiny_model):
    shoot = tmp_path / "shoot"
    write_jpeg(shoot / "IMG_0001.jpg")
    write_heic(shoot / "IMG_0002.HEIC")
    with pytest.raises(batch.UsageError, match="--suffix"):
        run([shoot], shoot, tiny_model)
    sel = batch.Selection(suffix="_2x")
    out = run([shoot], shoot, tiny_model, select=sel)
    assert out.count("done") == 2
    assert sorted(p.name for p in shoot.iterdir()) == ["IMG_0001.jpg", "IMG_0001_2x.jpg", "IMG_0002.HEIC",
                                                        "IMG_0002_2x.jpg"]
    again = run([shoot], shoot, tiny_model, select=sel)
    assert again.count("done") == 0 and again.exit_code == 0
    assert {Path(r.input).name for r in again.results if "--suffix" in (r.reason or "")} == {
        "IMG_0001_2x.jpg", "IMG_0002_2x.jpg"}


# ----------------------------------------------------------------------------- sidecars

LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00        ">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
   xmp:ModifyDate="2024-06-01T18:02:11+02:00"
   xmp:CreatorTool="Adobe Photoshop Lightroom Classic 13.3 (Macintosh)"
   xmp:Rating="{rating}"
   xmp:Label="{label}"
   tiff:Make="Canon"
   crs:Version="16.3"
   crs:Exposure2012="+0.35">
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">First dance</rdf:li>
    </rdf:Alt>
   </dc:title>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>wedding</rdf:li>
     <rdf:li>Dupont</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Clients|Dupont</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   exif:DateTimeOriginal="2024:06:01 17:58:03"
   xmp:Rating="{rating}"
   xmpMM:DerivedFrom="IMG_0002.CR2"
   darktable:import_timestamp="63853460283000000"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="3">
   <darktable:colorlabels>
    <rdf:Seq>
     <rdf:li>2</rdf:li>
    </rdf:Seq>
   </darktable:colorlabels>
   <lr:hierarchicalSubject>
    <rdf:Seq>
     <rdf:li>places|France|Lyon</rdf:li>
     <rdf:li>darktable|format|cr2</rdf:li>
    </rdf:Seq>
   </lr:hierarchicalSubject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def test_sidecars_as_lightroom_and_darktable_write_them(tmp_path):
    from srpie_cli import sidecar

    (tmp_path / "IMG_0001.xmp").write_text(LIGHTROOM.format(rating=4, label="Red"))
    (tmp_path / "IMG_0002.CR2.xmp").write_text(DARKTABLE.format(rating=2))
    lr = sidecar.read(sidecar.find(tmp_path / "IMG_0001.CR2"))
    assert (lr.rating, lr.label, lr.title, lr.keywords, lr.hierarchy) == (4, "Red", "First dance", ["wedding", "Dupont"],
                                                                          ["Clients|Dupont"])
    assert sidecar.find(tmp_path / "IMG_0002.JPG").name == "IMG_0002.CR2.xmp"  # the pair's other file
    dt = sidecar.read(sidecar.find(tmp_path / "IMG_0002.CR2"))
    assert (dt.rating, dt.label, dt.keywords) == (2, "Green", ["Lyon", "cr2"]) and dt.rejected is None
    (tmp_path / "IMG_0003.xmp").write_text(LIGHTROOM.format(rating=-1, label=""))
    assert "rejected" in sidecar.read(tmp_path / "IMG_0003.xmp").rejected
    pick = LIGHTROOM.format(rating=0, label="").replace('xmp:Rating="0"', 'xmp:Rating="0"\n   xmlns:xmpDM='
                                                         '"http://ns.adobe.com/xmp/1.0/DynamicMedia/" xmpDM:pick="-1"')
    (tmp_path / "IMG_0004.xmp").write_text(pick)
    assert "pick flag" in sidecar.read(tmp_path / "IMG_0004.xmp").rejected


def test_min_rating_rejects_and_the_sidecar_carried_into_the_output(tmp_path, tiny_model):
    shoot = tmp_path / "shoot"
    for i, (rating, label) in enumerate([(5, "Red"), (2, "Green"), (-1, "")], start=1):
        write_jpeg(shoot / f"IMG_000{i}.jpg", seed=i)
        (shoot / f"IMG_000{i}.xmp").write_text(LIGHTROOM.format(rating=rating, label=label))
    write_jpeg(shoot / "IMG_0004.jpg")
    (shoot / "IMG_0004.JPG.xmp").write_text(DARKTABLE.format(rating=3))
    out = run([shoot], tmp_path / "out", tiny_model, select=batch.Selection(min_rating=3))
    status = {Path(r.input).name: (r.status, r.reason) for r in out.results}
    assert status["IMG_0001.jpg"][0] == "done" and status["IMG_0004.jpg"][0] == "done"
    assert status["IMG_0002.jpg"] == ("skipped", "rated 2 in IMG_0002.xmp, below --min-rating 3")
    assert status["IMG_0003.jpg"] == ("skipped", "rejected (xmp:Rating -1 in IMG_0003.xmp)")
    with Image.open(tmp_path / "out/IMG_0001.jpg") as im:
        xmp = im.info["xmp"]
    from srpie_cli import sidecar

    (tmp_path / "out.xmp").write_bytes(xmp)
    c = sidecar.read(tmp_path / "out.xmp")
    assert (c.rating, c.label, c.title, c.keywords) == (5, "Red", "First dance", ["wedding", "Dupont"])
    with Image.open(tmp_path / "out/IMG_0004.jpg") as im:
        (tmp_path / "out4.xmp").write_bytes(im.info["xmp"])
    assert sidecar.read(tmp_path / "out4.xmp").label == "Green"
    # without --min-rating a reject is still never enhanced
    again = run([shoot], tmp_path / "out2", tiny_model)
    assert {Path(r.input).name for r in again.results if r.status == "done"} == {
        "IMG_0001.jpg", "IMG_0002.jpg", "IMG_0004.jpg"}


# ----------------------------------------------------------------------------- job files

def cli(*args):
    from typer.testing import CliRunner

    from srpie_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_job_file_sets_options_per_folder_and_the_command_line_wins(tmp_path, tiny_model):
    import json

    shoot = tmp_path / "shoot"
    for rel in ("IMG_1.jpg", "low_light/IMG_2.jpg", "portraits/IMG_3.jpg", "portraits/rejects/IMG_4.jpg"):
        write_jpeg(shoot / rel)
    (shoot / "srpie.toml").write_text(f"""# the Dupont wedding
model = "{tiny_model}"
device = "cpu"
suffix = "_2x"
quality = 90
exclude = ["rejects/"]
output = "../delivery"

[folders."low_light"]
strength = 1

[folders."portraits"]
strength = 0.5
format = "png"
""")
    r = cli("enhance", shoot, "--report", tmp_path / "run.json", "--quality", "80")
    assert r.exit_code == 0, r.output
    made = sorted(p.relative_to(tmp_path / "delivery").as_posix() for p in (tmp_path / "delivery").rglob("*.*"))
    assert made == ["IMG_1_2x.jpg", "low_light/IMG_2_2x.jpg", "portraits/IMG_3_2x.png"]
    files = {Path(f["input"]).name: f for f in json.loads((tmp_path / "run.json").read_text())["files"]}
    assert files["IMG_3.jpg"]["settings"] == {"strength": 0.5}  # what the portrait was made with
    assert files["IMG_1.jpg"]["settings"] is None and files["rejects"]["status"] == "skipped"  # the folder
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["settings"]["quality"] == 80  # the command line over the file
    # a flag on the command line wins over a folder's setting too
    r = cli("enhance", shoot, "--strength", "0.2", "-o", tmp_path / "d2", "--report", tmp_path / "run2.json")
    files = {Path(f["input"]).name: f for f in json.loads((tmp_path / "run2.json").read_text())["files"]}
    assert r.exit_code == 0 and files["IMG_3.jpg"]["settings"] is None
    r = cli("enhance", shoot, "--dry-run", "-o", tmp_path / "d3")
    assert r.exit_code == 0 and "IMG_3_2x.png (32x24, 0.0 MP, strength 0.5)" in r.output, r.output


@pytest.mark.parametrize("body, line, words", [
    ('model = "x"\nstrenght = 1\n', 2, "unknown key 'strenght'"),
    ('quality = 400\n', 1, "between 1 and 100"),
    ('[folders."portraits"]\nstrength = "soft"\n', 2, "expected a number"),
    ('[folders.portraits]\noutput = "x"\n', 2, "unknown key 'output' for a folder"),
    ('format = "gif"\n', 1, "expected one of"),
])
def test_a_bad_job_file_is_a_usage_error_naming_file_and_line(tmp_path, body, line, words):
    write_jpeg(tmp_path / "shoot/IMG_1.jpg")
    (tmp_path / "job.toml").write_text(body)
    r = cli("enhance", tmp_path / "shoot", "--config", tmp_path / "job.toml")
    assert r.exit_code == 2
    assert f"job.toml, line {line}:" in r.output and words in r.output, r.output
    assert not (tmp_path / "shoot_srpie").exists()


def test_a_job_file_that_is_not_toml_is_named(tmp_path):
    write_jpeg(tmp_path / "shoot/IMG_1.jpg")
    (tmp_path / "shoot/srpie.toml").write_text("model = \n")
    r = cli("enhance", tmp_path / "shoot", "--dry-run")
    assert r.exit_code == 2 and "srpie.toml: not valid TOML" in r.output and "line 1" in r.output


# ----------------------------------------------------------------------------- see the whole shoot

def test_contact_sheet_of_a_folder_is_never_taken_as_a_photo(tmp_path, tiny_model):
    shoot = tmp_path / "shoot"
    write_jpeg(shoot / "IMG_0001.jpg", 40, 60)
    write_heic(shoot / "phone/IMG_0002.HEIC", 30, 40)
    (shoot / "IMG_0003.jxl").write_bytes(b"\xff\x0a" + bytes(32))
    sheet_in = shoot / "sheet.png"
    r = cli("preview", shoot, "--model", tiny_model, "--device", "cpu", "--strength", "0.5", "-o", sheet_in)
    assert r.exit_code == 0, r.output
    assert "left out" in r.stderr and "IMG_0003.jxl" in r.stderr
    with Image.open(sheet_in) as im:
        assert im.size[0] > 2 * 240 and im.size[1] >= 240
    assert images.made_by_srpie(sheet_in)  # a later run passes over it, whatever its name
    r = cli("preview", shoot, "--model", tiny_model, "--device", "cpu")
    assert r.exit_code == 0, r.output
    default = tmp_path / "shoot_srpie_preview.jpg"
    assert default.is_file() and images.made_by_srpie(default)
    p = batch.plan([shoot], tmp_path / "out")
    assert sorted(j.src.name for j in p.jobs) == ["IMG_0001.jpg", "IMG_0002.HEIC"]
    assert any(Path(x.input).name == "sheet.png" and "an output of srpie" in x.reason for x in p.results)


def test_several_strengths_side_by_side_on_one_sheet(tmp_path, tiny_model):
    p = write_jpeg(tmp_path / "a.jpg", 24, 32)
    r = cli("preview", p, "--model", tiny_model, "--device", "cpu", "--strength", "0,0.5,1")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "a_srpie_preview.png") as im:
        one = cli("preview", p, "--model", tiny_model, "--device", "cpu", "-o", tmp_path / "one.png")
        assert one.exit_code == 0
        with Image.open(tmp_path / "one.png") as single:
            assert im.size[0] > 1.8 * single.size[0] and im.size[1] == single.size[1]  # 4 panels beside 2
    assert cli("preview", p, "--model", tiny_model, "--strength", "0,3").exit_code == 2
    assert cli("preview", tmp_path, "--model", tiny_model, "--strength", "0,1").exit_code == 2


def test_a_broken_sidecar_never_fails_its_photo(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/IMG_1.jpg")
    (tmp_path / "s/IMG_1.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF")  # cut short
    out = run([tmp_path / "s"], tmp_path / "o", tiny_model)
    (r,) = out.results
    assert r.status == "done" and any("nothing carried from its sidecar" in n for n in r.notes)
    out = run([tmp_path / "s"], tmp_path / "o2", tiny_model, select=batch.Selection(min_rating=1))
    (r,) = out.results
    assert r.status == "skipped" and "rating is unknown" in r.reason


def test_the_progress_bar_moves_in_megapixels_within_a_frame():
    from srpie_cli.cli import _Bar

    bar = _Bar()
    bar.start(2, {"name": "tiny"}, "cpu")
    bar.sizes({"a.jpg": 3.0, "b.jpg": 1.0}, 40.0)
    task = bar.progress.tasks[0]
    assert task.total == pytest.approx(4.0)
    bar.tiles("a.jpg", 1, 3)
    assert task.completed == pytest.approx(1.0)  # a third of the large frame
    bar.file_done(batch.FileResult("a.jpg", "done", megapixels=3.0, timings={"enhance": 1.0}))
    bar.tiles("b.jpg", 1, 2)
    assert task.completed == pytest.approx(3.5)
    bar.stop()


def test_a_run_uses_the_calibration_its_dry_run_made(tmp_path, tiny_model, monkeypatch):
    from srpie_cli import estimate

    shoot = small_shoot(tmp_path / "shoot", n=1, h=24, w=32)
    settings = Settings(model=str(tiny_model), device="cpu", threads=1)
    batch.dry_run(inputs=[shoot], output=tmp_path / "out", settings=settings)
    monkeypatch.setattr(estimate, "calibrate", lambda *a: pytest.fail("calibrated again"))

    class Header(batch.Listener):
        wants_estimate = True

    batch.enhance(inputs=[shoot], output=tmp_path / "out", settings=settings, listener=Header())


def test_dry_run_of_a_shoot_with_raw_and_bad_files(shoot, tiny_model, tmp_path):
    from tests.conftest import BAD, GOOD

    d = batch.dry_run(inputs=[shoot], settings=Settings(model=str(tiny_model), device="cpu"))
    sizes = {j.src.relative_to(shoot).as_posix(): size for j, size in d.jobs}
    assert sizes["raw/IMG_0100.dng"][0] * sizes["raw/IMG_0100.dng"][1] >= 32 * 48 * 0.9  # from the RAW's header
    assert sizes["day1/IMG_0002.JPG"] == (32, 24)
    failed = {Path(r.input).relative_to(shoot).as_posix() for r in d.results if r.status == "failed"}
    assert set(GOOD) <= set(sizes)
    # headers only: an empty file or text fails now; a JPEG whose header is whole but whose
    # scan data is damaged is named by the run itself
    assert {"bad/empty.jpg", "bad/not a photo.jpg"} <= failed <= set(BAD)
    assert not (shoot.parent / "shoot_srpie").exists()


def test_a_rating_lightroom_wrote_into_the_jpeg_counts_and_unrated_frames_are_below_any_minimum(tmp_path):
    from tests.conftest import camera_exif

    shoot = tmp_path / "shoot"
    shoot.mkdir()
    for name, rating in (("IMG_1.jpg", 4), ("IMG_2.jpg", -1), ("IMG_3.jpg", 1)):
        xmp = LIGHTROOM.format(rating=rating, label="").encode()
        Image.fromarray(pattern(16, 16)).save(shoot / name, exif=camera_exif(), xmp=xmp)
    write_jpeg(shoot / "IMG_4.jpg")  # no rating anywhere
    p = batch.plan([shoot], tmp_path / "out")
    assert sorted(j.src.name for j in p.jobs) == ["IMG_1.jpg", "IMG_3.jpg", "IMG_4.jpg"]  # a reject never
    p = batch.plan([shoot], tmp_path / "out", select=batch.Selection(min_rating=2))
    assert [j.src.name for j in p.jobs] == ["IMG_1.jpg"]
    why = {Path(r.input).name: r.reason for r in p.results}
    assert why["IMG_3.jpg"] == "rated 1 in its own XMP, below --min-rating 2"
    assert why["IMG_4.jpg"].startswith("unrated") and why["IMG_2.jpg"].startswith("rejected")
