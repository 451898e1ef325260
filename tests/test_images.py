import errno
import struct
import zlib
from pathlib import Path

import numpy as np
import piexif
import pytest
import tifffile
from PIL import Image, ImageOps

from srpie_cli import SrpieError, __version__, images, metadata
from tests.conftest import DATE, MAKE, MODEL, camera_exif, pattern, shared_data, srgb_icc, write_dng, write_jpeg


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    a = pattern(6, 10)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[274] = orientation
    im.info["exif"] = exif.tobytes()
    ref = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(images.orient(a, orientation), ref)


def test_jpeg_read_is_upright_and_keeps_metadata(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", 24, 32, orientation=6)
    photo = images.read_photo(p)
    assert photo.size == (24, 32)  # 32x24 stored, rotated 90 degrees
    assert photo.exif["0th"][piexif.ImageIFD.Make] == MAKE
    assert photo.icc == srgb_icc()
    # the pixels are those Pillow's exif_transpose gives
    with Image.open(p) as im:
        assert np.array_equal(photo.pixels, np.asarray(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_write_carries_exif_icc_xmp_with_new_size_orientation_1_and_no_thumbnail(tmp_path, fmt):
    p = write_jpeg(tmp_path / "a.jpg", 24, 32, orientation=6, thumbnail=True)
    photo = images.read_photo(p)
    assert photo.exif["thumbnail"]  # the input has a (stale, after enhancing) thumbnail
    photo.xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6" '
                 b'exif:PixelXDimension="32"/></x:xmpmeta>')
    out = tmp_path / f"out.{fmt}"
    images.write_photo(out, photo, fmt)
    back = images.read_photo(out)
    assert back.size == (24, 32)
    z, e = back.exif["0th"], back.exif["Exif"]
    assert (z[piexif.ImageIFD.Make], z[piexif.ImageIFD.Model]) == (MAKE, MODEL)
    assert z[piexif.ImageIFD.Orientation] == 1
    assert z[piexif.ImageIFD.Software] == f"srpie {__version__}".encode()
    assert z[piexif.ImageIFD.Copyright] == b"(c) Studio"
    assert e[piexif.ExifIFD.DateTimeOriginal] == DATE
    assert e[piexif.ExifIFD.ExposureTime] == (1, 250)
    assert e[piexif.ExifIFD.LensModel] == b"RF24-70mm F2.8"
    assert (e[piexif.ExifIFD.PixelXDimension], e[piexif.ExifIFD.PixelYDimension]) == (24, 32)
    assert back.exif["GPS"][piexif.GPSIFD.GPSLatitude] == ((48, 1), (51, 1), (2400, 100))
    assert not back.exif["thumbnail"] and not back.exif["1st"]
    assert back.icc == srgb_icc()
    assert b'tiff:Orientation="1"' in back.xmp and b'exif:PixelXDimension="24"' in back.xmp


def test_tiff_16bit_round_trip_is_exact_and_readable_by_tifffile(tmp_path):
    a = pattern(10, 14, dtype=np.uint16)
    photo = images.Photo(a, exif=piexif.load(camera_exif()), icc=srgb_icc())
    images.write_photo(tmp_path / "o.tif", photo, "tiff")
    back = images.read_photo(tmp_path / "o.tif")
    assert back.bits == 16 and np.array_equal(back.pixels, a)
    with tifffile.TiffFile(tmp_path / "o.tif") as tf:
        tags = tf.pages.first.tags
        assert tags["Make"].value == MAKE.decode()
        assert tags["ExifTag"].value["ExposureTime"] == (1, 250)
        assert tags["GPSTag"].value["GPSLatitudeRef"] == "N"
        assert tags[34675].value == srgb_icc()


def test_greyscale_palette_and_alpha(tmp_path):
    Image.fromarray(pattern(8, 8)[..., 0], "L").save(tmp_path / "g.png")
    Image.fromarray(pattern(8, 8)).convert("P").save(tmp_path / "p.png")
    g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    rgba = np.dstack([pattern(8, 8), np.full((8, 8), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    g = images.read_photo(tmp_path / "g.png")
    assert g.pixels.shape == (8, 8, 3) and np.array_equal(g.pixels[..., 0], g.pixels[..., 2])
    assert images.read_photo(tmp_path / "p.png").pixels.shape == (8, 8, 3)
    g16r = images.read_photo(tmp_path / "g16.png")
    assert g16r.bits == 16 and np.array_equal(g16r.pixels[..., 1], g16)
    a = images.read_photo(tmp_path / "a.png")
    assert a.alpha is not None and int(a.alpha[0, 0]) == 128
    with pytest.raises(SrpieError, match="alpha"):
        images.write_photo(tmp_path / "a.jpg", a, "jpeg")
    assert not (tmp_path / "a.jpg").exists()
    images.write_photo(tmp_path / "a_out.png", a, "png")
    assert np.array_equal(images.read_photo(tmp_path / "a_out.png").alpha, a.alpha)


def test_grey_icc_profile_is_not_put_on_rgb_output(tmp_path):
    from PIL import ImageCms

    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not an RGB profile
    Image.fromarray(pattern(8, 8)[..., 0], "L").save(tmp_path / "g.jpg", icc_profile=grey_icc)
    photo = images.read_photo(tmp_path / "g.jpg")
    assert photo.icc is None and any("ICC" in n for n in photo.notes)


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))  # 10 gigapixels claimed
    with pytest.raises(SrpieError, match="bomb|limit"):
        images.read_photo(tmp_path / "bomb.png")
    write_jpeg(tmp_path / "a.jpg", 100, 100)
    with pytest.raises(SrpieError, match="0.005 MP limit"):
        images.read_photo(tmp_path / "a.jpg", max_megapixels=0.005)


@pytest.mark.parametrize("name,content,reason", [
    ("empty.jpg", b"", "empty"),
    ("text.jpg", b"hello, not a photo\n", "not an image"),
    ("text.tif", b"hello, not a photo\n", "TIFF"),
    ("text.cr2", b"hello, not a photo\n", "RAW"),
])
def test_bad_files_raise_srpie_error_naming_file_and_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SrpieError, match=reason) as e:
        images.read_photo(tmp_path / name)
    assert name in str(e.value)


def test_unreadable_file_is_named_as_such(tmp_path, monkeypatch):
    p = write_jpeg(tmp_path / "a.jpg")

    def denied(*a, **kw):  # as root, chmod 000 does not stop reading: simulate the error
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(SrpieError, match="a.jpg: cannot read .Permission denied"):
        images.read_photo(p)


def test_truncated_jpeg_is_an_error_not_a_grey_half(tmp_path):
    data = write_jpeg(tmp_path / "a.jpg", 64, 64).read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SrpieError, match="truncated"):
        images.read_photo(tmp_path / "t.jpg")


def test_dng_made_with_tifffile_develops_to_16bit_with_container_exif(tmp_path):
    photo = images.read_photo(write_dng(tmp_path / "x.DNG"))
    assert photo.bits == 16 and photo.size == (48, 32)
    assert photo.pixels.max() > 1000  # developed, not black
    assert photo.exif["0th"][piexif.ImageIFD.Make] == MAKE
    assert photo.exif["0th"][piexif.ImageIFD.DateTime] == DATE
    cleaned = metadata.clean_exif(photo.exif, 96, 64)
    assert 33422 not in cleaned["0th"] and 50706 not in cleaned["0th"]  # CFA/DNG layout tags dropped


def test_atomic_write_removes_the_temporary_file_on_a_full_disk(tmp_path):
    def fill(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        images.atomic_write(tmp_path / "o.jpg", fill)
    assert list(tmp_path.iterdir()) == []


def test_format_of_is_case_insensitive_and_covers_camera_raw():
    for ext in ("dng", "CR2", "cr3", "NEF", "arw", "RAF", "orf", "RW2", "pef", "SRW"):
        assert images.format_of(Path(f"IMG_1.{ext}")) == "raw"
    assert images.format_of(Path("a.JPEG")) == "jpeg" and images.format_of(Path("a.TIF")) == "tiff"
    assert images.format_of(Path("a.txt")) is None


# ----------------------------------------------------------------------------- shared data (optional)

def test_real_canon_dng_develops():
    photo = images.read_photo(shared_data("raw", "tinydng", "colorchart.dng"))
    assert photo.bits == 16 and photo.size[0] > 1000
    assert b"Canon" in photo.exif["0th"][piexif.ImageIFD.Make]


@pytest.mark.parametrize("name", ["CanonRaw.cr2", "CanonRaw.cr3", "Nikon.nef", "FujiFilm.raf", "Panasonic.rw2", "DNG.dng"])
def test_exif_is_read_from_raw_containers(name):
    notes: list[str] = []
    exif, _ = metadata.raw_metadata(shared_data("raw", "exiftool_stubs", name), notes)
    assert exif is not None, notes
    assert exif["0th"].get(piexif.ImageIFD.Make), exif["0th"]
    # and it can be written out again
    assert piexif.dump(metadata.clean_exif(exif, 10, 10))


@pytest.mark.parametrize("n", range(1, 9))
def test_camera_orientation_samples_match_pillow(n):
    p = shared_data("exif", "jpg", "orientation", f"portrait_{n}.jpg")
    with Image.open(p) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(images.read_photo(p).pixels, ref)


def test_invalid_camera_jpegs_fail_cleanly_or_decode():
    folder = shared_data("exif", "jpg", "invalid")
    for p in sorted(folder.glob("*.jpg")):
        try:
            photo = images.read_photo(p)
        except SrpieError as e:
            assert p.name in str(e)
        else:
            assert photo.pixels.ndim == 3
            metadata.clean_exif(photo.exif, 2, 2)  # whatever EXIF survived is writable


# ----------------------------------------------------------------------------- robustness, IPTC

@pytest.mark.parametrize("exc", [KeyError("tag"), TypeError("bad"), IndexError("x"), MemoryError(),
                                 Image.DecompressionBombError("huge"), FileNotFoundError(2, "No such file or directory")])
def test_any_decoder_failure_is_an_srpie_error_naming_the_file(tmp_path, monkeypatch, exc):
    p = write_jpeg(tmp_path / "a b.jpg")

    def broken(*a, **kw):
        raise exc

    monkeypatch.setattr(images.Image, "open", broken)
    with pytest.raises(SrpieError) as e:
        images.read_photo(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg


def test_16bit_tiff_that_only_pillow_decodes_says_it_was_read_at_8_bits(tmp_path, monkeypatch):
    p = tmp_path / "lzw.tif"
    tifffile.imwrite(p, pattern(6, 8, dtype=np.uint16), photometric="rgb", metadata=None)

    def needs_codecs(self, *a, **kw):  # an LZW file without imagecodecs installed
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", needs_codecs)
    photo = images.read_photo(p)
    assert photo.bits == 8 and any("16-bit TIFF read at 8 bits" in n for n in photo.notes)


def _iptc_jpeg(path: Path) -> bytes:
    """A camera JPEG with a Photoshop APP13: IPTC caption and credit, and a stale thumbnail."""
    def record(dataset, data):
        return b"\x1c\x02" + bytes([dataset]) + struct.pack(">H", len(data)) + data

    def block(rid, data):
        return b"8BIM" + struct.pack(">HHI", rid, 0, len(data)) + data + b"\0" * (len(data) & 1)

    iptc = record(120, "Bride & groom, café".encode()) + record(110, b"Studio X")
    app13 = b"Photoshop 3.0\0" + block(0x0404, iptc) + block(0x040C, b"old thumbnail")
    write_jpeg(path, 24, 32, extra=b"\xff\xed" + struct.pack(">H", 2 + len(app13)) + app13)
    return iptc


@pytest.mark.parametrize("fmt", ["jpeg", "tiff"])
def test_iptc_is_carried_to_jpeg_and_tiff_without_the_stale_thumbnail(tmp_path, fmt):
    from PIL import IptcImagePlugin

    _iptc_jpeg(tmp_path / "a.jpg")
    photo = images.read_photo(tmp_path / "a.jpg")
    out = tmp_path / f"o.{fmt}"
    images.write_photo(out, photo, fmt)
    with Image.open(out) as im:
        assert IptcImagePlugin.getiptcinfo(im) == {(2, 120): "Bride & groom, café".encode(), (2, 110): b"Studio X"}
        if fmt == "jpeg":
            assert set(im.info["photoshop"]) == {0x0404}  # the thumbnail resource is gone
    assert b"old thumbnail" not in out.read_bytes()


def test_iptc_to_png_is_a_note_not_silence(tmp_path):
    _iptc_jpeg(tmp_path / "a.jpg")
    notes = images.write_photo(tmp_path / "o.png", images.read_photo(tmp_path / "a.jpg"), "png")
    assert any("IPTC" in n for n in notes)


def test_encoder_failure_on_odd_metadata_is_an_srpie_error_and_leaves_nothing(tmp_path, monkeypatch):
    photo = images.read_photo(write_jpeg(tmp_path / "a.jpg"))

    def odd(*a, **kw):
        raise TypeError("unexpected tag value")

    monkeypatch.setattr(images, "_write_tiff", odd)
    with pytest.raises(SrpieError, match="o.tif: cannot encode .TypeError"):
        images.write_photo(tmp_path / "o.tif", photo, "tiff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def test_tiff_only_pillow_decodes_keeps_its_exif_and_is_turned_upright(tmp_path):
    a = pattern(6, 8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[274], exif[271] = 6, "Canon"
    im.save(tmp_path / "lzw.tif", compression="tiff_lzw", exif=exif)  # tifffile needs imagecodecs for LZW
    photo = images.read_photo(tmp_path / "lzw.tif")
    assert photo.size == (6, 8) and np.array_equal(photo.pixels, images.orient(a, 6))
    assert photo.exif["0th"][piexif.ImageIFD.Make] == b"Canon"


def test_a_16_bit_lzw_tiff_keeps_16_bits(tmp_path):
    # Photoshop saves LZW TIFFs; imagecodecs (a dependency) lets tifffile decode them at full depth
    import tifffile

    a = (np.arange(24 * 32 * 3, dtype=np.uint32).reshape(24, 32, 3) * 37 % 65536).astype(np.uint16)
    tifffile.imwrite(tmp_path / "lzw16.tif", a, photometric="rgb", compression="lzw")
    photo = images.read_photo(tmp_path / "lzw16.tif")
    assert photo.bits == 16
    assert not any("read at" in n for n in photo.notes)


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16_bit_png_keeps_16_bits(tmp_path, channels):
    import imagecodecs

    rng = np.random.default_rng(3)
    a = rng.integers(0, 65536, size=(20, 30, channels), dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(imagecodecs.png_encode(a))
    photo = images.read_photo(path)
    assert photo.pixels.dtype == np.uint16 and photo.bits == 16
    assert np.array_equal(photo.pixels, a[..., :3])  # not rounded through 8 bits
    if channels == 4:
        assert np.array_equal(photo.alpha, a[..., 3])
    else:
        assert photo.alpha is None
    assert not any("8 bits" in n for n in photo.notes)


def test_from_float_rounds_clips_and_can_work_in_place():
    a = np.array([[[-0.2, 0.5, 1.3], [0.25, 0.75, 1.0]]], dtype=np.float32)  # 1 x 2 x 3
    want8 = np.array([[[0, 128, 255], [64, 191, 255]]], dtype=np.uint8)
    assert np.array_equal(images.from_float(a.copy(), 8), want8)
    chw = np.ascontiguousarray(a.transpose(2, 0, 1))  # the network's layout, viewed as HWC below
    view = chw.transpose(1, 2, 0)
    out = images.from_float(view, 16, overwrite=True)
    assert out.dtype == np.uint16 and out.flags.c_contiguous
    assert np.array_equal(out, np.rint(np.clip(a, 0, 1) * 65535).astype(np.uint16))
    assert chw.max() > 1.0  # overwrite=True worked in the caller's buffer (now scaled to 16 bits)
    b = a.copy()
    images.from_float(b, 8)
    assert np.array_equal(b, a)  # and by default the input is left alone
