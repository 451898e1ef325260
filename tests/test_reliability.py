"""Nothing lost, nothing overwritten, nothing hangs: what a batch run must never do to a shoot,
the delivery folder or the person waiting on cron, each case as it arrives from real work."""

import errno
import hashlib
import io
import json
import os
import signal
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import piexif
import pytest
import torch
from PIL import Image, ImageCms
from typer.testing import CliRunner

from srpie_cli import SrpieError, __version__, batch, images, inference, metadata
from srpie_cli.cli import app
from srpie_cli.inference import Settings
from tests.conftest import camera_exif, pattern, shared_data, write_jpeg

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    """The memory of failures (batch.state_dir) kept inside the test's folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def nearest(monkeypatch):
    """The network replaced by a nearest-neighbour 2x, where the pixels are not the point; the
    photos it was given are recorded."""
    seen = []

    def enhance(self, photo, on_retry=None, on_tile=None):
        seen.append(photo)
        up = np.repeat(np.repeat(photo.pixels, 2, 0), 2, 1)
        alpha = None if photo.alpha is None else np.repeat(np.repeat(photo.alpha, 2, 0), 2, 1)
        return replace(photo, pixels=up, alpha=alpha, notes=list(photo.notes))

    monkeypatch.setattr(inference.Enhancer, "enhance", enhance)
    return seen


def enhance(*args):
    return runner.invoke(app, ["enhance", *map(str, args)])


def run(inputs, out, model, **kw) -> batch.Outcome:
    return batch.enhance(inputs=[inputs] if isinstance(inputs, Path) else inputs, output=out,
                         settings=Settings(model=str(model)), **kw)


def listing(folder: Path) -> list[str]:
    """Every entry below ``folder``, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def by_name(outcome) -> dict[str, batch.FileResult]:
    return {Path(r.input).name: r for r in outcome.results}


class timeout:
    """Fail the test, instead of hanging it, if the block runs past ``seconds``."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def fire(signum, frame):
            raise TimeoutError(f"still running after {self.seconds} s: the run hangs")

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# ----------------------------------------------------------------------------- nothing lost


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_a_disk_that_silently_drops_the_last_bytes_delivers_nothing_and_says_so(tmp_path, tiny_model, monkeypatch, fmt):
    """Pillow on a full disk can lose the tail of a file without an error: the output is
    checked before it is renamed into place, so nothing half-written counts as done."""
    write_jpeg(tmp_path / "s/a.jpg", 16, 16)
    name = "_write_tiff" if fmt == "tiff" else "_write_pillow"
    real = getattr(images, name)

    def short(f, *a, **kw):
        real(f, *a, **kw)
        if not isinstance(f, io.BytesIO):  # the real write, not the check before the network
            f.seek(-7, os.SEEK_END)
            f.truncate()

    monkeypatch.setattr(images, name, short)
    out = run(tmp_path / "s", tmp_path / "o", tiny_model, fmt=fmt)
    r = by_name(out)["a.jpg"]
    assert r.status == "failed" and "incomplete" in r.reason and out.exit_code == 1
    assert listing(tmp_path / "o") == []  # no photo, no temporary, no lock


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
@pytest.mark.parametrize("raw", [("tinydng", "colorchart.dng"), ("imageio_test_images", "Nikon_uncompressed.nef")],
                         ids=["canon-dng", "nikon-nef"])
def test_real_raw_files_reach_every_output_format(tmp_path, tiny_model, nearest, raw, fmt):
    """colorchart.dng has a DateTime of NUL bytes, the NEF one with dots: TIFF takes neither,
    and neither may cost the photo."""
    src = shared_data("raw", *raw)
    out = run(src, tmp_path / "o", tiny_model, fmt=fmt)
    r = by_name(out)[src.name]
    assert r.status == "done", r.reason
    photo = images.read_photo(r.output)
    w, h = nearest[0].size
    assert photo.size == (2 * w, 2 * h) and photo.bits == (16 if fmt == "tiff" else 8)
    assert photo.exif["0th"][piexif.ImageIFD.Make] in (b"Canon", b"Nikon")
    assert photo.exif["0th"][piexif.ImageIFD.Software] == f"srpie {__version__}".encode()
    if fmt == "tiff":
        assert any("DateTime" in n for n in r.notes)
    assert listing(tmp_path / "o") == [Path(r.output).name]


def test_accents_and_a_copyright_sign_survive_into_a_tiff_as_ascii(tmp_path):
    exif = piexif.load(camera_exif())
    exif["0th"][piexif.ImageIFD.Artist] = "José Müller".encode()
    exif["0th"][piexif.ImageIFD.Copyright] = "© 2024 Studio Ørsted".encode()
    exif["0th"][piexif.ImageIFD.DateTime] = b""
    Image.fromarray(pattern(8, 8)).save(tmp_path / "a.jpg", exif=piexif.dump(exif))
    notes = images.write_photo(tmp_path / "a.tif", images.read_photo(tmp_path / "a.jpg"), "tiff")
    z = images.read_photo(tmp_path / "a.tif").exif["0th"]
    assert z[piexif.ImageIFD.Artist] == b"Jose Muller"
    assert z[piexif.ImageIFD.Copyright] == b"(c) 2024 Studio Orsted"
    assert piexif.ImageIFD.DateTime not in z
    assert any("Artist" in n for n in notes) and any("Copyright" in n for n in notes)
    assert any("DateTime" in n for n in notes)


def test_broken_weights_fail_the_photo_instead_of_writing_black(tmp_path, tiny_model):
    from srpie_cli.weights import load_model, save_weights

    model, _ = load_model(tiny_model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_weights(tmp_path / "nan.pt", model, {"name": "nan"})
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    out = run(tmp_path / "s", tmp_path / "o", tmp_path / "nan.pt")
    r = by_name(out)["a.jpg"]
    assert r.status == "failed" and "not finite" in r.reason
    assert listing(tmp_path / "o") == []


@pytest.mark.parametrize("meta", ["a string", 42, None, [1, 2]])
def test_a_weights_file_whose_meta_is_not_a_dict_loads(tmp_path, tiny_model, meta):
    from srpie_cli.weights import load_model

    blob = torch.load(tiny_model, weights_only=True)
    blob["meta"] = meta
    torch.save(blob, tmp_path / "odd.pt")
    _, loaded = load_model(tmp_path / "odd.pt")
    assert loaded["name"] == "odd" and loaded["untrained"] is False


@pytest.mark.parametrize("length", [236, 250, 255])
def test_names_at_the_file_systems_limit_are_written(tmp_path, tiny_model, length):
    name = "n" * (length - 4) + ".jpg"
    write_jpeg(tmp_path / "s" / name, 8, 8)
    out = run(tmp_path / "s", tmp_path / "o", tiny_model)
    assert by_name(out)[name].status == "done", by_name(out)[name].reason
    assert listing(tmp_path / "o") == [name]


def test_metadata_an_encoder_refuses_fails_before_the_network_runs(tmp_path, tiny_model, nearest):
    rgba = np.dstack([pattern(8, 8), np.full((8, 8), 128, np.uint8)])
    (tmp_path / "s").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "s/a.png")
    out = run(tmp_path / "s", tmp_path / "o", tiny_model, fmt="jpeg")
    assert "alpha" in by_name(out)["a.png"].reason
    assert nearest == []  # the network never ran


def test_a_raw_that_fails_falls_back_to_the_jpeg_of_its_pair(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/IMG_1.JPG", 8, 8)
    (tmp_path / "s/IMG_1.dng").write_bytes(b"II*\0" + bytes(200))  # a RAW cut off on the card
    write_jpeg(tmp_path / "s/IMG_2.JPG", 8, 8)
    (tmp_path / "s/IMG_2.dng").write_bytes(b"II*\0" + bytes(200))
    (tmp_path / "s/IMG_3.JPG").write_bytes(b"")  # both files of IMG_3 are bad
    (tmp_path / "s/IMG_3.dng").write_bytes(b"II*\0" + bytes(200))
    report = tmp_path / "r.json"
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", report)
    assert r.exit_code == 1, r.output
    files = {Path(f["input"]).name: f for f in json.loads(report.read_text())["files"]}
    for n in (1, 2):
        assert files[f"IMG_{n}.JPG"]["status"] == "done"
        assert files[f"IMG_{n}.dng"]["status"] == "failed"
        assert f"IMG_{n}.JPG" in files[f"IMG_{n}.dng"]["reason"] and "instead" in files[f"IMG_{n}.dng"]["reason"]
    assert files["IMG_3.dng"]["status"] == files["IMG_3.JPG"]["status"] == "failed"
    assert "failed too" in files["IMG_3.dng"]["reason"]
    assert listing(tmp_path / "o") == ["IMG_1.JPG", "IMG_2.JPG"]
    # the summary counts every file once, and says what the counts hide
    assert "total  │ 6" in r.stdout.replace("   ", "  ") or "│ 6" in r.stdout
    assert "2 file(s) of RAW+JPEG pairs failed" in r.stdout and "1 RAW+JPEG pair(s) failed both" in r.stdout
    # the next run knows the RAWs are bad and finds the JPEGs delivered: no work, nothing rewritten
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()}
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", report)
    files = {Path(f["input"]).name: f for f in json.loads(report.read_text())["files"]}
    assert files["IMG_1.dng"]["reason"].startswith("failed before") and files["IMG_1.JPG"]["status"] == "skipped"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()} == written


# ----------------------------------------------------------------------------- no garbage marked done


def _scan(data: bytes) -> int:
    """Offset of the first byte of a JPEG's entropy-coded scan."""
    at = 2
    while True:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:
            return at + 2 + length
        at += 2 + length


def test_corrupt_jpeg_scan_data_is_a_failure_not_a_garbled_photo(tmp_path):
    pytest.importorskip("simplejpeg", reason="the scan check reads libjpeg-turbo's warnings through simplejpeg")
    good = write_jpeg(tmp_path / "good.jpg", 64, 96).read_bytes()
    s = _scan(good)
    cut = good[:s + (len(good) - s) // 2] + b"\xff\xd9"  # the scan ends early: premature end
    (tmp_path / "cut.jpg").write_bytes(cut)
    extra = good[:-2] + bytes(23) + b"\xff\xd9"  # bytes after the scan: extraneous
    (tmp_path / "extra.jpg").write_bytes(extra)
    images.read_photo(tmp_path / "good.jpg")
    for name in ("cut.jpg", "extra.jpg"):
        with Image.open(tmp_path / name) as im:
            im.load()  # Pillow alone takes it
        with pytest.raises(SrpieError, match="corrupt JPEG data"):
            images.read_photo(tmp_path / name)


def test_a_real_corrupt_camera_jpeg_is_refused():
    pytest.importorskip("simplejpeg", reason="the scan check reads libjpeg-turbo's warnings through simplejpeg")
    with pytest.raises(SrpieError, match="corrupt JPEG data.*premature end"):
        images.read_photo(shared_data("exif", "jpg", "corrupted.jpg"))


@pytest.mark.parametrize("name", ["DNG.dng", "Panasonic.rw2"])
def test_a_raw_without_its_pixel_data_is_refused(name):
    """ExifTool's samples keep the metadata of 8-10 MP frames in 12-14 KB: LibRaw would
    develop them into noise without a word."""
    with pytest.raises(SrpieError, match="pixel data is missing"):
        images.read_photo(shared_data("raw", "exiftool_stubs", name))


def test_a_raw_cut_short_on_the_card_says_so(tmp_path):
    data = shared_data("raw", "tinydng", "colorchart.dng").read_bytes()
    (tmp_path / "cut.dng").write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(SrpieError, match="cut short"):
        images.read_photo(tmp_path / "cut.dng")


# ----------------------------------------------------------------------------- metadata kept and named


def _exif_with_a_broken_gps_pointer(orientation: int) -> bytes:
    entries = [(274, 3, 1, struct.pack("<HH", orientation, 0)), (34853, 4, 1, struct.pack("<I", 0x7FFF0000))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in entries)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"


def test_partly_broken_exif_keeps_the_orientation(tmp_path):
    Image.fromarray(pattern(8, 16)).save(tmp_path / "a.jpg", exif=_exif_with_a_broken_gps_pointer(6))
    photo = images.read_photo(tmp_path / "a.jpg")
    assert photo.size == (8, 16)  # turned upright as Pillow's reading says
    assert any("Orientation" in n and "lost" in n for n in photo.notes), photo.notes


def test_a_real_camera_jpeg_whose_gps_pointer_is_broken_keeps_what_pillow_reads():
    photo = images.read_photo(shared_data("exif", "jpg", "tests", "45-gps_ifd.jpg"))
    assert photo.exif["0th"][piexif.ImageIFD.Make] == b"Polyphony Digital Inc."
    assert any("partly unreadable" in n and "Orientation" in n for n in photo.notes), photo.notes


def test_the_interop_ifd_of_a_camera_jpeg_is_kept(tmp_path):
    exif = piexif.load(camera_exif())
    exif["Interop"] = {piexif.InteropIFD.InteroperabilityIndex: b"R98"}
    Image.fromarray(pattern(8, 8)).save(tmp_path / "a.jpg", exif=piexif.dump(exif))
    notes = images.write_photo(tmp_path / "o.jpg", images.read_photo(tmp_path / "a.jpg"), "jpeg")
    assert not any("malformed" in n for n in notes), notes
    assert images.read_photo(tmp_path / "o.jpg").exif["Interop"] == {piexif.InteropIFD.InteroperabilityIndex: b"R98"}
    notes = images.write_photo(tmp_path / "o.tif", images.read_photo(tmp_path / "a.jpg"), "tiff")
    assert notes == []
    tif = images.read_photo(tmp_path / "o.tif").exif
    assert tif["Interop"] == {piexif.InteropIFD.InteroperabilityIndex: b"R98"}
    assert tif["Exif"][piexif.ExifIFD.LensModel] == b"RF24-70mm F2.8" and tif["GPS"]  # its neighbours intact


def test_notes_name_the_tags_that_are_not_carried_over():
    notes = []
    exif = {"0th": {piexif.ImageIFD.Make: b"Canon", 0x0F0F: b"x"},
            "Exif": {piexif.ExifIFD.ExposureTime: "fast"}, "GPS": {}, "Interop": {}}
    metadata.clean_exif(exif, 8, 8, notes)
    assert any("ExposureTime" in n for n in notes) and any("0th 0x0f0f" in n for n in notes), notes


def test_dropped_profiles_and_conversions_are_named_in_the_report_and_the_log(tmp_path, tiny_model):
    (tmp_path / "s").mkdir()
    Image.new("CMYK", (8, 8), (10, 200, 30, 0)).save(tmp_path / "s/cmyk.jpg")
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.fromarray(pattern(8, 8)).save(tmp_path / "s/lab.jpg", icc_profile=lab)
    lab_name = metadata.icc_name(lab)
    report = tmp_path / "r.json"
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", report)
    assert r.exit_code == 0, r.output
    notes = {Path(f["input"]).name: f["notes"] for f in json.loads(report.read_text())["files"]}
    assert any("CMYK converted" in n for n in notes["cmyk.jpg"])
    assert any(f"ICC profile {lab_name!r} for Lab data dropped" in n for n in notes["lab.jpg"]), notes
    assert "note: CMYK converted" in r.stderr and f"note: ICC profile {lab_name!r}" in r.stderr


# ----------------------------------------------------------------------------- nothing overwritten


def test_a_report_pointed_at_a_photo_or_any_other_file_is_refused_before_any_work(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    (tmp_path / "notes.json").write_text('{"mine": true}')
    before = (tmp_path / "s/a.jpg").read_bytes()
    for target in (tmp_path / "s/a.jpg", tmp_path / "notes.json"):
        r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", target)
        assert r.exit_code == 2, r.output
        assert "overwrite" in r.output and target.name in r.output
        assert not (tmp_path / "o").exists()
    r = enhance(tmp_path / "s/a.jpg", "-o", tmp_path / "o", "--model", tiny_model, "--report", tmp_path / "s/a.jpg")
    assert r.exit_code == 2 and not (tmp_path / "o").exists()
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", tmp_path / "new.jpg")
    assert r.exit_code == 2 and "run.json" in r.output and not (tmp_path / "new.jpg").exists()
    assert (tmp_path / "s/a.jpg").read_bytes() == before
    assert (tmp_path / "notes.json").read_text() == '{"mine": true}'
    # an earlier srpie report is replaced
    report = tmp_path / "run.json"
    assert enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", report).exit_code == 0
    assert enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", report).exit_code == 0


def test_overwrite_into_a_folder_of_originals_replaces_nothing_srpie_did_not_write(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    write_jpeg(tmp_path / "originals/a.jpg", 8, 8, seed=7)
    write_jpeg(tmp_path / "s/b.jpg", 8, 8, seed=1)
    original = (tmp_path / "originals/a.jpg").read_bytes()
    r = enhance(tmp_path / "s", "-o", tmp_path / "originals", "--overwrite", "--model", tiny_model)
    assert r.exit_code == 1
    assert "not written by srpie" in r.stderr and "a.jpg" in r.stderr
    assert (tmp_path / "originals/a.jpg").read_bytes() == original
    assert images.made_by_srpie(tmp_path / "originals/b.jpg")
    # srpie's own output is redone with --overwrite
    r = enhance(tmp_path / "s", "-o", tmp_path / "originals", "--overwrite", "--model", tiny_model)
    assert "b.jpg" in r.stderr and "done" in r.stderr


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_every_output_format_names_srpie(tmp_path, fmt):
    write_jpeg(tmp_path / "a.jpg", 8, 8)
    dst = tmp_path / f"o{images.OUT_SUFFIX[fmt]}"
    images.write_photo(dst, images.read_photo(tmp_path / "a.jpg"), fmt)
    assert images.made_by_srpie(dst) and not images.made_by_srpie(tmp_path / "a.jpg")


# ----------------------------------------------------------------------------- nothing hangs


def test_a_fifo_named_like_a_photo_is_named_and_passed_over(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    os.mkfifo(tmp_path / "s/pipe.jpg")
    with timeout(60):
        out = run(tmp_path / "s", tmp_path / "o", tiny_model)
        single = run(tmp_path / "s/pipe.jpg", tmp_path / "o2", tiny_model)
        with pytest.raises(SrpieError, match="not a regular file"):
            images.read_photo(tmp_path / "s/pipe.jpg")
    assert by_name(out)["a.jpg"].status == "done"
    assert by_name(out)["pipe.jpg"].status == "failed" and "FIFO" in by_name(out)["pipe.jpg"].reason
    assert by_name(single)["pipe.jpg"].status == "failed"


def test_a_symlink_to_itself_is_named_and_the_run_goes_on(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    os.symlink("loop.jpg", tmp_path / "s/loop.jpg")
    out = run(tmp_path / "s", tmp_path / "o", tiny_model)
    assert by_name(out)["a.jpg"].status == "done"
    assert "symlink loop" in by_name(out)["loop.jpg"].reason
    r = enhance(tmp_path / "s/loop.jpg", "--model", tiny_model)  # named alone: a usage error that says why
    assert r.exit_code == 2 and "symlink loop" in r.output


def test_a_file_name_that_is_not_utf8_reaches_the_report(tmp_path, tiny_model):
    folder = tmp_path / "s"
    write_jpeg(folder / "a.jpg", 8, 8)
    raw_name = b"caf\xe9.jpg"  # Latin-1, from an old camera card
    try:
        fd = os.open(os.fsencode(folder) + b"/" + raw_name, os.O_WRONLY | os.O_CREAT)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    os.write(fd, (folder / "a.jpg").read_bytes())
    os.close(fd)
    report = tmp_path / "r.json"
    r = enhance(folder, "-o", tmp_path / "o", "--model", tiny_model, "--report", report)
    assert r.exit_code == 0, r.output
    doc = json.loads(report.read_bytes())
    names = {os.fsencode(Path(f["input"]).name) for f in doc["files"]}
    assert names == {b"a.jpg", raw_name}  # read back, the name is the same bytes
    assert os.path.exists(os.fsencode(tmp_path / "o") + b"/" + raw_name)


# ----------------------------------------------------------------------------- cron and the output folder


def test_a_report_inside_an_output_folder_that_does_not_exist_yet(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--report", tmp_path / "o/logs/run.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o/logs/run.json").read_text())["summary"]["done"] == 1


def test_a_single_photo_run_leaves_nothing_the_next_folder_run_takes_for_a_photo(tmp_path, tiny_model):
    write_jpeg(tmp_path / "shoot/raw/x.jpg", 8, 8)
    write_jpeg(tmp_path / "shoot/y.jpg", 8, 8, seed=1)
    first = run(tmp_path / "shoot/raw/x.jpg", None, tiny_model)
    assert by_name(first)["x.jpg"].output == str(tmp_path / "shoot/raw_srpie/x.jpg")
    second = run(tmp_path / "shoot", None, tiny_model)
    status = {str(Path(r.input).relative_to(tmp_path)): r.status for r in second.results}
    assert status == {"shoot/raw/x.jpg": "done", "shoot/y.jpg": "done", "shoot/raw_srpie/x.jpg": "skipped"}
    assert any("an output of srpie" in (r.reason or "") for r in second.results)
    assert not (tmp_path / "shoot_srpie/raw_srpie").exists()


def test_a_file_that_failed_is_not_worked_on_again_while_unchanged(tmp_path, tiny_model, monkeypatch):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    (tmp_path / "s/bad.jpg").write_bytes(b"not a photo at all")
    first = run(tmp_path / "s", tmp_path / "o", tiny_model)
    assert by_name(first)["bad.jpg"].status == "failed"
    decoded = []
    real = images.read_photo
    monkeypatch.setattr(images, "read_photo", lambda p, *a: decoded.append(Path(p).name) or real(p, *a))
    second = run(tmp_path / "s", tmp_path / "o", tiny_model)
    r = by_name(second)["bad.jpg"]
    assert r.status == "failed" and r.reason.startswith("failed before") and "not an image" in r.reason
    assert decoded == [] and second.exit_code == 1
    run(tmp_path / "s", tmp_path / "o", tiny_model, retry_failed=True)
    assert decoded == ["bad.jpg"]
    os.utime(tmp_path / "s/bad.jpg", ns=(1, 10**18))  # changed: tried again
    run(tmp_path / "s", tmp_path / "o", tiny_model)
    assert decoded == ["bad.jpg", "bad.jpg"]
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model)
    assert decoded == ["bad.jpg", "bad.jpg"] and "1 file(s) failed in an earlier run" in r.stdout
    enhance(tmp_path / "s", "-o", tmp_path / "o", "--model", tiny_model, "--retry-failed")
    assert decoded == ["bad.jpg"] * 3
    assert listing(tmp_path / "o") == ["a.jpg"]  # the memory lives outside the delivery folder


def test_no_lock_file_stays_and_the_lock_still_keeps_two_runs_apart(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    (tmp_path / "o").mkdir()
    with batch.OutputLock([tmp_path / "o"]):
        with pytest.raises(batch.UsageError, match="another srpie run"):
            run(tmp_path / "s", tmp_path / "o", tiny_model)
    run(tmp_path / "s", tmp_path / "o", tiny_model)
    assert listing(tmp_path / "o") == ["a.jpg"]


def test_the_lock_file_where_a_folder_cannot_be_locked_is_removed_and_still_excludes(tmp_path, monkeypatch):
    import fcntl

    real = fcntl.flock

    def no_folders(fd, op):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", no_folders)
    (tmp_path / "o").mkdir()
    with batch.OutputLock([tmp_path / "o"]):
        assert (tmp_path / "o" / batch.LOCK_NAME).exists()
        with pytest.raises(batch.UsageError, match="another srpie run"):
            batch.OutputLock([tmp_path / "o"]).__enter__()
    assert listing(tmp_path / "o") == []


@pytest.mark.parametrize("option", [["--model", "no-such-model"], ["--device", "tpu"]])
def test_an_unknown_model_or_device_is_a_usage_error_before_any_folder(tmp_path, option):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    r = enhance(tmp_path / "s", "-o", tmp_path / "o", *option)
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "o").exists()


def test_a_compiled_network_runs_photos_smaller_than_its_tile_eager(tiny_model):
    from srpie_cli.accel import Prepared
    from srpie_cli.weights import load_model

    model, _ = load_model(tiny_model)
    shapes = []

    def compiled(x, *context):
        shapes.append(tuple(x.shape))
        return model(x, *context)

    prepared = Prepared(model, compiled, split=True)
    settings = Settings(tile=32, overlap=4)
    for h, w in ((12, 20), (20, 12), (40, 48)):
        inference.enhance_photo(prepared, images.Photo(pattern(h, w)), settings)
    assert shapes and set(shapes) == {(1, 3, 32, 32)}  # one tile shape: one compilation


def test_auto_compile_counts_only_photos_that_fill_a_tile(tmp_path):
    jobs = []
    for i, (h, w) in enumerate([(100, 150)] * 5 + [(300, 400)]):
        src = write_jpeg(tmp_path / f"{i}.jpg", h, w)
        jobs.append(batch.Job(src, tmp_path / f"o{i}.jpg", "jpeg"))
    assert batch.estimate_megapixels(jobs, min_side=192) == pytest.approx(0.12)


def test_max_megapixels_above_pillows_own_cap_is_obeyed(tmp_path):
    def chunk(kind, data):
        import zlib

        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # 200 MP claimed, above Pillow's 179 MP cap, below the 250 MP asked for: refused only as truncated
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 10_000, 8, 2, 0, 0, 0))
                                       + chunk(b"IEND", b""))
    with pytest.raises(SrpieError) as e:
        images.read_photo(tmp_path / "big.png", max_megapixels=250)
    assert "bomb" not in str(e.value) and "limit" not in str(e.value)
    with pytest.raises(SrpieError, match="150 MP limit"):
        images.read_photo(tmp_path / "big.png")


def sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_a_shoot_with_everything_that_goes_wrong_delivers_every_good_frame_once(tmp_path, tiny_model, nearest):
    """The issue's whole case at once: a real DNG (its DateTime empty) with its camera JPEG,
    a CMYK JPEG, a JPEG with a damaged scan, a FIFO, a symlink to itself, a name that is not
    UTF-8 and good JPEGs; run twice. The damaged scan is left out where simplejpeg, which
    reads libjpeg-turbo's warnings, is not installed."""
    try:
        import simplejpeg  # noqa: F401

        scan_check = True
    except ImportError:
        scan_check = False
    shoot = tmp_path / "shoot"
    (shoot / "card").mkdir(parents=True)
    os.symlink(shared_data("raw", "tinydng", "colorchart.dng"), shoot / "card/IMG_0001.dng")
    write_jpeg(shoot / "card/IMG_0001.JPG", 24, 36)
    write_jpeg(shoot / "card/IMG_0002.JPG", 24, 32, seed=1)
    write_jpeg(shoot / "IMG_0003.jpg", 16, 16, orientation=6, seed=2)
    Image.new("CMYK", (12, 10), (0, 120, 200, 10)).save(shoot / "press.jpg")
    if scan_check:
        good = write_jpeg(shoot / "damaged.jpg", 64, 96, seed=3).read_bytes()
        (shoot / "damaged.jpg").write_bytes(good[:_scan(good) + 200] + b"\xff\xd9")
    os.mkfifo(shoot / "pipe.jpg")
    os.symlink("loop.jpg", shoot / "loop.jpg")
    latin1 = os.fsencode(shoot) + b"/caf\xe9.jpg"
    try:
        with open(latin1, "wb") as f:
            f.write((shoot / "IMG_0003.jpg").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    before = sha(shoot)
    report = tmp_path / "run.json"

    with timeout(120):
        r = enhance(shoot, "--model", tiny_model, "--report", report)
    assert r.exit_code == 1, r.output
    out = tmp_path / "shoot_srpie"
    files = {os.fsencode(Path(f["input"]).name): f for f in json.loads(report.read_bytes())["files"]}
    delivered = {b"IMG_0001.dng": "card/IMG_0001.tif", b"IMG_0002.JPG": "card/IMG_0002.JPG",
                 b"IMG_0003.jpg": "IMG_0003.jpg", b"press.jpg": "press.jpg", b"caf\xe9.jpg": "caf\udce9.jpg"}
    for name, dst in delivered.items():
        assert files[name]["status"] == "done" and files[name]["output"] == str(out / dst), files[name]
    assert files[b"IMG_0001.JPG"]["status"] == "skipped"  # the RAW of its pair was enhanced
    assert any("DateTime" in n for n in files[b"IMG_0001.dng"]["notes"])
    assert any("CMYK" in n for n in files[b"press.jpg"]["notes"])
    bad = {b"pipe.jpg": "FIFO", b"loop.jpg": "symlink loop"} | ({b"damaged.jpg": "corrupt JPEG data"} if scan_check else {})
    for name, why in bad.items():
        assert files[name]["status"] == "failed" and why in files[name]["reason"], files[name]
        assert why in r.stderr
    total = len(delivered) + 1 + len(bad)
    assert len(files) == total and f"│ {total}" in r.stdout  # every file counted once
    assert sorted(os.fsencode(p.relative_to(out)) for p in out.rglob("*")) == sorted(
        [b"card"] + [os.fsencode(d) for d in delivered.values()])  # photos only: no lock, no temporaries
    assert sha(shoot) == before  # the inputs are untouched

    def state(folder):
        return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")}

    written = state(out)
    with timeout(120):
        r2 = enhance(shoot, "--model", tiny_model, "--report", report)
    assert r2.exit_code == 1
    assert state(out) == written  # nothing rewritten
    again = {os.fsencode(Path(f["input"]).name): f for f in json.loads(report.read_bytes())["files"]}
    if scan_check:
        assert again[b"damaged.jpg"]["reason"].startswith("failed before")
    assert {n for n, f in again.items() if f["status"] == "done"} == set()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB tmpfs, where this machine lets the test mount one (root, no container limits)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_real_full_disk_delivers_nothing_half_written(tmp_path, tiny_model, nearest, small_disk):
    for i in range(8):
        write_jpeg(tmp_path / f"s/{i}.jpg", 96, 128, seed=i)
    out = small_disk / "o"
    out.mkdir()
    (small_disk / "filler").write_bytes(b"\0" * (256 - 8) * 1024)  # 8 KB left: less than one output
    outcome = run(tmp_path / "s", out, tiny_model)
    results = by_name(outcome)
    assert all(r.status == "failed" for r in results.values()), results
    # Pillow cuts the file at a block boundary without an error: the check before the rename
    # finds it incomplete, the disk full, and the batch stops
    assert "incomplete" in results["0.jpg"].reason and "disk is full" in results["0.jpg"].reason
    assert "not started: the batch stopped (disk full)" in results["7.jpg"].reason
    assert listing(out) == []  # no photo, no temporary, no lock
