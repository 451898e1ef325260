"""Shared fixtures: a tiny model (fast on any CPU) and a synthetic shoot folder with every kind
of photo, and every kind of bad file, that a batch meets in real event work."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import piexif
import pytest
import tifffile
from PIL import Image, ImageCms

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

MAKE, MODEL, DATE = b"Canon", b"EOS R6", b"2024:06:01 14:30:05"
GPS = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((48, 1), (51, 1), (2400, 100)),
       piexif.GPSIFD.GPSLongitudeRef: b"E", piexif.GPSIFD.GPSLongitude: ((2, 1), (17, 1), (4000, 100))}


def shared_data(*parts: str) -> Path:
    """A path in the shared test data; skips the test when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared test data absent: {'/'.join(parts)}")
    return p


def pattern(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth gradient with some noise: compresses well, and every pixel differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w, 1)
    img = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.6 - 0.3 * x * y], -1) + rng.normal(0, 0.03, (h, w, 3))
    top = np.iinfo(dtype).max
    return np.rint(np.clip(img, 0, 1) * top).astype(dtype)


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """An sRGB profile (cached: each profile built carries its creation time)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int = 1, thumbnail: bool = False) -> bytes:
    d = {"0th": {piexif.ImageIFD.Make: MAKE, piexif.ImageIFD.Model: MODEL, piexif.ImageIFD.DateTime: DATE,
                 piexif.ImageIFD.Orientation: orientation, piexif.ImageIFD.Copyright: b"(c) Studio"},
         "Exif": {piexif.ExifIFD.DateTimeOriginal: DATE, piexif.ExifIFD.ExposureTime: (1, 250),
                  piexif.ExifIFD.FNumber: (28, 10), piexif.ExifIFD.LensModel: b"RF24-70mm F2.8"},
         "GPS": GPS, "1st": {}, "thumbnail": None}
    if thumbnail:
        import io

        buf = io.BytesIO()
        Image.new("RGB", (8, 6), (200, 0, 0)).save(buf, "JPEG")
        d["1st"] = {piexif.ImageIFD.XResolution: (72, 1), piexif.ImageIFD.YResolution: (72, 1)}
        d["thumbnail"] = buf.getvalue()
    return piexif.dump(d)


def write_jpeg(path: Path, h: int = 24, w: int = 32, orientation: int = 1, seed: int = 0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern(h, w, seed)).save(path, "JPEG", quality=95, exif=camera_exif(orientation, kw.pop("thumbnail", False)),
                                              icc_profile=srgb_icc(), **kw)
    return path


def disk_full_after(monkeypatch, writes: int = 1) -> None:
    """Every output write after the first ``writes`` fails as a full disk does, after writing
    a little (the check before the network, in memory, is left alone)."""
    import errno
    import io

    from srpie_cli import images

    real = images._write_pillow
    calls = []

    def full(f, *a, **kw):
        if isinstance(f, io.BytesIO):  # the check before the network runs, in memory
            return real(f, *a, **kw)
        calls.append(1)
        if len(calls) > writes:
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, *a, **kw)

    monkeypatch.setattr(images, "_write_pillow", full)


def write_dng(path: Path, h: int = 32, w: int = 48, seed: int = 0) -> Path:
    """A minimal linear-Bayer DNG LibRaw develops: CFA photometric 32803 with DNGVersion,
    CFARepeatPatternDim, CFAPattern (RGGB), BlackLevel, WhiteLevel, ColorMatrix1 and
    AsShotNeutral, and the camera's Make/Model/DateTime in IFD0."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    cfa = np.rint(np.clip(256 + 3000 * (0.3 + 0.5 * x * (1 - 0.5 * y)) + rng.normal(0, 20, (h, w)), 0, 4095)).astype(np.uint16)
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)  # 3x3 rationals
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "srpie test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: R G / G B
        (50714, "H", 1, 256, True),  # BlackLevel
        (50717, "H", 1, 4095, True),  # WhiteLevel (12-bit)
        (50721, "2i", 9, identity, True),  # ColorMatrix1 (SRATIONAL)
        (50728, "2I", 3, (1, 2, 1, 1, 2, 3), True),  # AsShotNeutral
        (271, "s", 0, MAKE.decode(), True),
        (272, "s", 0, MODEL.decode(), True),
        (306, "s", 0, DATE.decode(), True),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, cfa, photometric=32803, extratags=tags, metadata=None)
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def one_thread():
    """PyTorch on one thread for the test: on a busy machine (CI, parallel jobs) its thread
    pool spins against other processes and tiny models run a hundred times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A weights file for a very small untrained network (its output is the bicubic 2x)."""
    from srpie_cli.model import DeepSRPIE, SRPIEConfig
    from srpie_cli.weights import save_weights

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    # t=1: the smallest depth MBFNet builds (t=0 leaves its backward-fusion input empty)
    save_weights(path, DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)), {"name": "tiny"})
    return path


# (relative path, oriented input size (w, h)) of every good photo in the shoot, and what it becomes
GOOD = {
    "day1/IMG_0001.jpg": ((24, 32), "IMG_0001.jpg"),  # 32x24 stored, orientation 6
    "day1/IMG_0002.JPG": ((32, 24), "IMG_0002.JPG"),
    "day1/sub dir/café ñ.png": ((20, 16), "café ñ.png"),  # RGBA: alpha kept
    "day2/scan 16bit.tif": ((28, 20), "scan 16bit.tif"),
    "day2/grey.jpg": ((16, 16), "grey.jpg"),
    "raw/IMG_0100.dng": ((48, 32), "IMG_0100.tif"),  # RAW+JPEG pair: the RAW is enhanced
}
BAD = {
    "bad/corrupt.jpg": "corrupt",
    "bad/truncated.jpg": "truncated",
    "bad/empty.jpg": "empty",
    "bad/not a photo.jpg": "not an image",
}
PAIR_JPEG = "raw/IMG_0100.JPG"


@pytest.fixture
def shoot(tmp_path) -> Path:
    """A shoot folder: camera JPEGs with EXIF (orientation 6, GPS) and ICC, a PNG with alpha,
    a 16-bit TIFF, a greyscale JPEG, a DNG with its camera JPEG, nested folders, names with
    spaces and non-ASCII letters, and bad files: corrupt, truncated, empty, text."""
    root = tmp_path / "shoot"
    write_jpeg(root / "day1/IMG_0001.jpg", 24, 32, orientation=6, thumbnail=True)
    write_jpeg(root / "day1/IMG_0002.JPG", 24, 32, seed=1)
    rgba = np.dstack([pattern(16, 20, 2), np.linspace(0, 255, 16 * 20).reshape(16, 20).astype(np.uint8)])
    (root / "day1/sub dir").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(root / "day1/sub dir/café ñ.png")
    (root / "day2").mkdir()
    tifffile.imwrite(root / "day2/scan 16bit.tif", pattern(20, 28, 3, np.uint16), photometric="rgb", metadata=None,
                     extratags=[(271, "s", 0, "Epson", True), (34675, 7, len(srgb_icc()), srgb_icc(), True)])
    Image.fromarray(pattern(16, 16, 4)[..., 0], "L").save(root / "day2/grey.jpg", quality=90)
    write_dng(root / "raw/IMG_0100.dng")
    write_jpeg(root / PAIR_JPEG, 32, 48, seed=5)
    # bad files
    good = (root / "day1/IMG_0002.JPG").read_bytes()
    (root / "bad").mkdir()
    (root / "bad/corrupt.jpg").write_bytes(good[:4] + bytes(range(256)) * 8)
    (root / "bad/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/not a photo.jpg").write_text("these are my notes, not a photo\n")
    # ignored: hidden files and folders, other file types
    write_jpeg(root / ".hidden.jpg")
    write_jpeg(root / ".cache/thumb.jpg")
    (root / "notes.txt").write_text("shot list")
    return root


@pytest.fixture(autouse=True)
def _private_state(tmp_path_factory, monkeypatch):
    """srpie remembers failed files in $XDG_STATE_HOME/srpie: tests keep theirs apart from the
    user's and from each other's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # the speed calibration
