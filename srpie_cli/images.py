"""Photo files in and out: JPEG, PNG, TIFF (8/16-bit), WebP and camera RAW, with their metadata.

A ``Photo`` holds the pixels already turned upright (the EXIF orientation is applied once,
here, and the tag reset to 1 so no viewer rotates twice), as uint8 or uint16 RGB channels
last, an optional alpha plane, and the metadata to carry over: the EXIF as a ``piexif``
dict, the ICC profile, the XMP packet and the Photoshop image resources that hold IPTC
(captions, credit, keywords), read from JPEG and TIFF and written to JPEG and TIFF.

Reading refuses what it cannot do well with an ``SrpieError`` naming the reason (corrupt,
truncated, not an image, larger than ``max_megapixels``). Writing always goes through a
temporary file in the target folder and a rename, so a crash leaves no half-written photo.

Alpha is kept: it is upscaled on its own (bicubic, never enhanced) and written to formats
that hold it (PNG, TIFF, WebP); asking for JPEG from a photo with alpha is refused.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import piexif
from PIL import Image, ImageCms, PngImagePlugin

from srpie_cli import SrpieError, __version__

# Formats by file extension (lower case). RAW: everything LibRaw reads that cameras write.
SUFFIXES: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".jpe", ".jfif"), "jpeg"),
    ".png": "png",
    **dict.fromkeys((".tif", ".tiff"), "tiff"),
    ".webp": "webp",
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf",
                     ".orf", ".rw2", ".pef", ".srw", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".mrw",
                     ".x3f", ".rwl", ".dcr", ".kdc"), "raw"),
}
OUT_SUFFIX = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
DEFAULT_MAX_MEGAPIXELS = 150.0  # input size; a 150 MP medium-format frame passes, bombs do not
DEFAULT_QUALITY = 95
TMP_MARK = ".srpie-tmp"  # temporary output files: ".<name>.srpie-tmp<random>"

# IFD0 tags that describe the old file's layout, not the photo: never carried over.
_LAYOUT_TAGS = {254, 255, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
                330, 338, 339, 513, 514, 700, 33421, 33422, 33723, 34377, 34665, 34853, 34675}
_ORIENT, _SOFTWARE = 274, 305
_PIXEL_X, _PIXEL_Y = 40962, 40963


def format_of(path: Path) -> str | None:
    """'jpeg', 'png', 'tiff', 'webp', 'raw' by extension (any case), or None."""
    return SUFFIXES.get(path.suffix.lower())


@dataclass
class Photo:
    pixels: np.ndarray  # H x W x 3, uint8 or uint16, upright
    alpha: np.ndarray | None = None  # H x W, same dtype, or None
    exif: dict | None = None  # piexif dict (orientation already applied to the pixels)
    icc: bytes | None = None
    xmp: bytes | None = None
    source_format: str = ""
    iptc: bytes | None = None  # Photoshop image resources ("8BIM" blocks: IPTC), thumbnail dropped
    notes: list[str] = field(default_factory=list)  # what was not carried over, and why

    @property
    def bits(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def megapixels(self) -> float:
        return self.pixels.shape[0] * self.pixels.shape[1] / 1e6


# ----------------------------------------------------------------------------- pixels

def to_float(a: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1]."""
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}[a.dtype]
    return np.divide(a, scale, dtype=np.float32)


def is_monochrome(a: np.ndarray, tolerance: float = 2 / 255) -> bool:
    """Whether H x W x 3 pixels are neutral grey everywhere: R, G and B within ``tolerance`` (a
    fraction of full scale; the default allows the rounding of a grey JPEG or a black-and-white
    export from a raw converter). A frame too dark to tell (nothing above 16 times the
    tolerance, 32 levels of 255 by default) counts as colour: a look may still find colour in
    it. A strided sample is checked first, so a colour photo costs almost nothing."""
    limit = tolerance * (65535 if a.dtype == np.uint16 else 255 if a.dtype == np.uint8 else 1)

    def neutral(px: np.ndarray, bright_enough: bool = False) -> bool:
        lo, hi = px.min(axis=-1), px.max(axis=-1)
        grey = bool(np.all(hi - lo <= limit))  # hi >= lo: no unsigned wrap-around
        return grey and (not bright_enough or float(hi.max()) > 16 * limit)

    return a.ndim == 3 and a.shape[-1] == 3 and neutral(a[::7, ::7]) and neutral(a, bright_enough=True)


def from_float(a: np.ndarray, bits: int, overwrite: bool = False) -> np.ndarray:
    """float in [0, 1] -> uint8 or uint16 (C order), rounded to nearest. ``overwrite``: work in
    ``a`` itself instead of a copy (a 24 MP output is 1.2 GB of float32 per copy)."""
    top = 255.0 if bits == 8 else 65535.0
    q = np.clip(a, 0.0, 1.0, out=a if overwrite else None)
    q *= np.float32(top)
    np.rint(q, out=q)
    return q.astype(np.uint8 if bits == 8 else np.uint16, order="C")


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to H x W (x C) pixels, as PIL.ImageOps.exif_transpose."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],
        8: lambda x: np.rot90(x, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(a)) if op else a


def _check_size(path: Path, w: int, h: int, max_megapixels: float) -> None:
    if w <= 0 or h <= 0:
        raise SrpieError(f"{path}: not a valid image (size {w}x{h})")
    mp = w * h / 1e6
    if mp > max_megapixels:
        raise SrpieError(f"{path}: refused: {w}x{h} is {mp:.0f} MP, above the {max_megapixels:g} MP "
                         "limit (a decompression bomb, or raise --max-megapixels)")


# ----------------------------------------------------------------------------- metadata

def _parse_exif(raw: bytes | None, notes: list[str]) -> dict | None:
    if not raw:
        return None
    try:
        d = piexif.load(raw if raw[:4] == b"Exif" or raw[:2] in (b"II", b"MM") else b"Exif\0\0" + raw)
    except (ValueError, KeyError, IndexError, TypeError, struct.error, piexif.InvalidImageDataError) as e:
        notes.append(f"EXIF unreadable, not carried over ({type(e).__name__})")
        return None
    return d


def _orientation(exif: dict | None) -> int:
    v = (exif or {}).get("0th", {}).get(_ORIENT, 1)
    if isinstance(v, (tuple, list)):
        v = v[0] if v else 1
    return v if isinstance(v, int) and 1 <= v <= 8 else 1


def _rgb_icc(icc: bytes | None, notes: list[str]) -> bytes | None:
    """Keep an ICC profile only when it describes RGB data (a grey or CMYK profile would
    mislabel the RGB output)."""
    if not icc:
        return None
    if len(icc) < 20 or icc[16:20] != b"RGB ":
        notes.append(f"ICC profile for {icc[16:20].decode('latin-1').strip() or 'unknown'} data dropped "
                     "(the output is RGB)")
        return None
    return icc


def clean_exif(exif: dict | None, width: int, height: int, notes: list[str] | None = None) -> dict:
    """The EXIF to write with an output of ``width`` x ``height``: layout tags and the stale
    thumbnail dropped, orientation 1, pixel dimensions and Software updated; tags piexif
    cannot write (unknown or malformed) left out, and counted in ``notes``. An input without
    EXIF gets those four tags alone, so every output names srpie and its size."""
    exif = exif or {}
    out: dict = {"0th": {}, "Exif": {}, "GPS": {}, "Interop": {}, "1st": {}, "thumbnail": None}
    dropped = 0
    for ifd in ("0th", "Exif", "GPS", "Interop"):
        kind = "Image" if ifd == "0th" else ifd
        for tag, value in (exif.get(ifd) or {}).items():
            if not isinstance(tag, int) or tag not in piexif.TAGS[kind]:
                dropped += 1
                continue
            if ifd == "0th" and (tag in _LAYOUT_TAGS or 50000 <= tag < 53000):  # 50xxx-52xxx: DNG private
                continue
            if ifd == "Exif" and tag == piexif.ExifIFD.InteroperabilityTag:
                continue
            try:
                piexif.dump({ifd: {tag: value}})
            except (ValueError, TypeError, struct.error, KeyError):
                dropped += 1
                continue
            out[ifd][tag] = value
    out["0th"][_ORIENT] = 1
    out["0th"][_SOFTWARE] = f"srpie {__version__}".encode()
    out["Exif"][_PIXEL_X] = int(width)
    out["Exif"][_PIXEL_Y] = int(height)
    if dropped and notes is not None:
        notes.append(f"{dropped} unknown or malformed EXIF tags not carried over")
    return out


_XMP_FIX = [
    (re.compile(rb'(tiff:Orientation\s*=\s*")\d+(")'), rb"\g<1>1\g<2>"),
    (re.compile(rb"(<tiff:Orientation>)\s*\d+\s*(</tiff:Orientation>)"), rb"\g<1>1\g<2>"),
]


def clean_xmp(xmp: bytes | None, width: int, height: int) -> bytes | None:
    """XMP with its orientation reset to 1 and its pixel dimensions updated."""
    if not xmp:
        return None
    for rx, rep in _XMP_FIX:
        xmp = rx.sub(rep, xmp)
    for name, value in ((b"exif:PixelXDimension", width), (b"exif:PixelYDimension", height),
                        (b"tiff:ImageWidth", width), (b"tiff:ImageLength", height)):
        v = str(value).encode()
        xmp = re.sub(rb"(" + name + rb'\s*=\s*")\d+(")', rb"\g<1>" + v + rb"\g<2>", xmp)
        xmp = re.sub(rb"(<" + name + rb">)\s*\d+\s*(</" + name + rb">)", rb"\g<1>" + v + rb"\g<2>", xmp)
    return xmp


_PS_HEADER = b"Photoshop 3.0\0"  # opens a JPEG APP13 segment of Photoshop image resources
_IRB_THUMBNAILS = {0x0409, 0x040C}  # resources holding a thumbnail of the old pixels
_IRB_IPTC = 0x0404


def clean_irb(irb: bytes | None, notes: list[str]) -> bytes | None:
    """Photoshop image resources (the "8BIM" blocks that hold IPTC captions, credit and
    keywords) without the embedded thumbnail, which would show the old photo."""
    if not irb:
        return None
    kept, at = [], 0
    while at < len(irb):
        if irb[at:at + 4] != b"8BIM" or at + 8 > len(irb):
            notes.append("Photoshop/IPTC block unreadable, not carried over")
            return None
        rid = int.from_bytes(irb[at + 4:at + 6], "big")
        name_end = at + 6 + ((irb[at + 6] + 2) & ~1)  # Pascal name padded to an even length
        size = int.from_bytes(irb[name_end:name_end + 4], "big")
        end = name_end + 4 + size + (size & 1)  # data padded to an even length
        if name_end + 4 + size > len(irb):
            notes.append("Photoshop/IPTC block truncated, not carried over")
            return None
        if rid not in _IRB_THUMBNAILS:
            kept.append(irb[at:end].ljust(end - at, b"\0"))
        at = end
    return b"".join(kept) or None


def _iptc_as_irb(iptc: bytes | None) -> bytes | None:
    """A bare IPTC-NAA record (TIFF tag 33723) as one image resource."""
    if not iptc:
        return None
    return b"8BIM" + struct.pack(">HHI", _IRB_IPTC, 0, len(iptc)) + iptc + b"\0" * (len(iptc) & 1)


def _irb_iptc(irb: bytes) -> bytes | None:
    """The IPTC-NAA record inside image resources (for TIFF tag 33723)."""
    at = 0
    while at + 12 <= len(irb):
        rid = int.from_bytes(irb[at + 4:at + 6], "big")
        name_end = at + 6 + ((irb[at + 6] + 2) & ~1)
        size = int.from_bytes(irb[name_end:name_end + 4], "big")
        if rid == _IRB_IPTC:
            return irb[name_end + 4:name_end + 4 + size]
        at = name_end + 4 + size + (size & 1)
    return None


def _tag_bytes(tags, code: int, byteorder: str) -> bytes | None:
    """A TIFF tag's raw value bytes: BYTE/UNDEFINED, or LONG as Photoshop types 33723."""
    if code not in tags:
        return None
    tag = tags[code]
    if isinstance(tag.value, bytes):
        return tag.value
    if tag.dtype == 4 and isinstance(tag.value, tuple):
        return struct.pack(f"{byteorder}{len(tag.value)}I", *tag.value)
    return None


def _xmp_bytes(x) -> bytes | None:
    if not x:
        return None
    return x.encode("utf-8") if isinstance(x, str) else bytes(x)


# ----------------------------------------------------------------------------- reading

def read_photo(path: str | os.PathLike, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Photo:
    """Decode a photo upright, with its metadata. SrpieError with the reason when it cannot."""
    path = Path(path)
    kind = format_of(path)
    try:
        with open(path, "rb") as f:  # unreadable files fail here, named as such
            if not f.read(1):
                raise SrpieError(f"{path}: empty file (0 bytes)")
        if kind == "raw":
            return _read_raw(path, max_megapixels)
        if kind == "tiff":
            return _read_tiff(path, max_megapixels)
        return _read_pillow(path, max_megapixels)
    except SrpieError:
        raise
    except MemoryError:
        raise SrpieError(f"{path}: not enough memory to decode it") from None
    except OSError as e:  # unreadable, vanished, a folder named .jpg, an I/O error
        raise SrpieError(f"{path}: cannot read ({e.strerror or _short(e)})") from None
    except Exception as e:  # noqa: BLE001 - decoders raise anything on malformed data (KeyError, TypeError...)
        raise SrpieError(f"{path}: corrupt or unreadable ({type(e).__name__}: {_short(e)})") from None


def _read_pillow(path: Path, max_megapixels: float) -> Photo:
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(path, im.width, im.height, max_megapixels)
                fmt = (im.format or "").lower()
                im.load()  # before reading info: a PNG's eXIf chunk may follow its pixels
                info = dict(im.info)
                exif = _parse_exif(info.get("exif"), notes)
                icc = info.get("icc_profile")
                xmp = _xmp_bytes(info.get("xmp") or info.get("XML:com.adobe.xmp"))
                irb = b"".join(d[len(_PS_HEADER):] for m, d in getattr(im, "applist", [])
                               if m == "APP13" and d.startswith(_PS_HEADER))
                o = _orientation(exif)
                if fmt == "tiff":  # recent Pillow turns a TIFF upright as it loads and drops the tag
                    o = im.getexif().get(_ORIENT, 1)
                rgb, alpha, icc = _to_rgb(im, icc, notes)
    except Image.DecompressionBombError:
        raise SrpieError(f"{path}: refused: too many pixels (a decompression bomb)") from None
    except SrpieError:
        raise
    except Image.UnidentifiedImageError:
        raise SrpieError(f"{path}: not an image Pillow can read (wrong extension or corrupt)") from None
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError) as e:
        raise SrpieError(f"{path}: corrupt or truncated ({_short(e)})") from None
    if fmt == "png" and rgb.dtype == np.uint8 and _png_bit_depth(path) == 16:
        rgb, alpha = _png16(path, rgb, alpha, notes)
    return Photo(orient(rgb, o), orient(alpha, o) if alpha is not None else None, exif,
                 _rgb_icc(icc, notes), xmp, fmt or "image", clean_irb(irb, notes), notes)


def _png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The full 16 bits of an RGB(A) PNG (Pillow holds no RGB deeper than 8), through
    imagecodecs; Pillow's 8-bit pixels, with a note, where that cannot be done."""
    try:
        import imagecodecs

        a = imagecodecs.png_decode(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - any failure here falls back to Pillow's pixels
        notes.append(f"16-bit RGB PNG read at 8 bits ({_short(e)})")
        return rgb, alpha
    if a.dtype != np.uint16 or a.ndim != 3 or a.shape[:2] != rgb.shape[:2] or a.shape[2] not in (3, 4):
        notes.append("16-bit RGB PNG read at 8 bits")
        return rgb, alpha
    return np.ascontiguousarray(a[..., :3]), (np.ascontiguousarray(a[..., 3]) if a.shape[2] == 4 else None)


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[12:16] == b"IHDR" else 8


def _to_rgb(im: Image.Image, icc: bytes | None, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """Any Pillow mode -> (RGB uint8/uint16, alpha or None, icc)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)
        if mode == "I":  # 32-bit int greyscale from 16-bit PNGs
            a = np.clip(a, 0, 65535)
        g = a.astype(np.uint16, copy=False) if a.dtype != np.uint16 else a
        return np.repeat(g[..., None], 3, axis=2), None, icc
    if mode == "CMYK":
        if icc and icc[16:20] == b"CMYK":
            src = ImageCms.ImageCmsProfile(ImageCms.core.profile_frombytes(icc))
            im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            notes.append("CMYK converted to sRGB with its ICC profile")
            icc = None
        else:
            im = im.convert("RGB")
            notes.append("CMYK converted to RGB without a profile")
        mode = "RGB"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        a = np.asarray(im)
        return np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3]), icc
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im), None, icc


def _read_tiff(path: Path, max_megapixels: float) -> Photo:
    import tifffile

    notes: list[str] = []
    bits = 0
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            bits = page.bitspersample
            shape = page.shape
            h, w = page.imagelength, page.imagewidth
            _check_size(path, w, h, max_megapixels)
            tags = page.tags
            icc = tags[34675].value if 34675 in tags else None
            xmp = _xmp_bytes(tags[700].value) if 700 in tags else None
            irb = _tag_bytes(tags, 34377, tf.byteorder) or _iptc_as_irb(_tag_bytes(tags, 33723, tf.byteorder))
            photometric = int(page.photometric)
            extrasamples = tuple(page.extrasamples) if page.extrasamples is not None else ()
            a = page.asarray()
    except SrpieError:
        raise
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, OSError, struct.error, NotImplementedError) as e:
        # compressions tifffile cannot decode without imagecodecs (LZW, JPEG...): Pillow reads 8-bit ones
        try:
            photo = _read_pillow(path, max_megapixels)
        except SrpieError:
            raise SrpieError(f"{path}: corrupt or unsupported TIFF ({_short(e)})") from None
        if bits > photo.bits:  # Pillow holds no RGB deeper than 8 bits: say so, never silently
            photo.notes.append(f"{bits}-bit TIFF read at {photo.bits} bits ({_short(e)})")
        if photo.exif is None:  # Pillow keeps a TIFF's EXIF out of im.info (it did orient the pixels)
            photo.exif = _tiff_exif(path, photo.notes)
        return photo
    if a.dtype not in (np.uint8, np.uint16):
        raise SrpieError(f"{path}: unsupported TIFF sample type {a.dtype} (8 or 16-bit integers only)")
    if page.planarconfig == 2 and a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    alpha = None
    if a.ndim == 2:
        if photometric == 0:  # MinIsWhite
            a = np.iinfo(a.dtype).max - a
        rgb = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and photometric in (1, 0) and a.shape[-1] == 2:  # grey + alpha
        rgb, alpha = np.repeat(a[..., :1], 3, axis=2), a[..., 1]
    elif a.ndim == 3 and photometric == 2 and a.shape[-1] >= 3:
        rgb = a[..., :3]
        if a.shape[-1] >= 4 and extrasamples and extrasamples[0] in (1, 2):
            alpha = a[..., 3]
    else:
        raise SrpieError(f"{path}: unsupported TIFF layout (photometric {photometric}, shape {shape})")
    exif = _tiff_exif(path, notes)
    o = _orientation(exif)
    rgb = orient(np.ascontiguousarray(rgb), o)
    alpha = orient(np.ascontiguousarray(alpha), o) if alpha is not None else None
    return Photo(rgb, alpha, exif, _rgb_icc(icc, notes), xmp, "tiff", clean_irb(irb, notes), notes)


def _tiff_exif(path: Path, notes: list[str]) -> dict | None:
    """IFD0 (with its Exif and GPS IFDs) of a TIFF file, as a piexif dict."""
    try:
        return _parse_exif(path.read_bytes(), notes)
    except OSError as e:
        notes.append(f"EXIF unreadable ({_short(e)})")
        return None


def _read_raw(path: Path, max_megapixels: float) -> Photo:
    """Develop with the camera's white balance into 16-bit sRGB (LibRaw turns it upright).
    No auto-brightening: frames of one shoot keep the same exposure relative to each other."""
    import rawpy

    notes: list[str] = []
    try:
        with rawpy.imread(str(path)) as raw:
            s = raw.sizes
            w, h = (s.height, s.width) if s.flip in (5, 6) else (s.width, s.height)
            _check_size(path, w, h, max_megapixels)
            rgb = raw.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=True,
                                  output_color=rawpy.ColorSpace.sRGB)
    except SrpieError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as e:
        raise SrpieError(f"{path}: not a RAW file LibRaw can develop ({_short(e)})") from None
    exif, xmp = raw_metadata(path, notes)
    return Photo(np.ascontiguousarray(rgb), None, exif, srgb_profile(), xmp, "raw", notes=notes)


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """The sRGB ICC profile LibRaw's output is in, with a fixed creation date (bytes 24-35)
    so the same input always gives the same output bytes."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(icc)


def raw_metadata(path: Path, notes: list[str]) -> tuple[dict | None, bytes | None]:
    """EXIF (and XMP) from a RAW container: TIFF-based ones (DNG, CR2, NEF, ARW, PEF, SRW,
    ORF, RW2...), CR3 (its CMT boxes) and RAF (its embedded JPEG)."""
    data = path.read_bytes()
    head = data[:16]
    try:
        if head[:4] in (b"II*\0", b"MM\0*") or head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\0"):
            if head[:4] in (b"IIRO", b"IIRS", b"IIU\0"):
                data = b"II*\0" + data[4:]
            elif head[:4] == b"MMOR":
                data = b"MM\0*" + data[4:]
            exif = _parse_exif(data, notes)
            xmp = _tiff_xmp(data)
            return exif, xmp
        if head[4:12] == b"ftypcrx ":
            return _cr3_exif(data, notes), None
        if head[:16] == b"FUJIFILMCCD-RAW ":
            off, length = struct.unpack(">II", data[84:92])  # the embedded JPEG
            jpeg = data[off:off + length]
            at = jpeg.find(b"Exif\0\0")
            if jpeg[:2] != b"\xff\xd8" or at < 4:
                raise ValueError("no EXIF in the embedded JPEG")
            seg = struct.unpack(">H", jpeg[at - 2:at])[0]  # APP1 length, counting its own 2 bytes
            return _parse_exif(jpeg[at:at - 2 + seg], notes), None
    except (struct.error, ValueError, IndexError) as e:
        notes.append(f"EXIF of the RAW container unreadable ({_short(e)})")
        return None, None
    notes.append("EXIF not read from this RAW container type")
    return None, None


def _tiff_xmp(data: bytes) -> bytes | None:
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return None
    end = data.find(b"</x:xmpmeta>", start)
    return data[start:end + len(b"</x:xmpmeta>")] if end > 0 else None


def _cr3_exif(data: bytes, notes: list[str]) -> dict | None:
    """CR3 keeps IFD0 in box CMT1, the Exif IFD in CMT2 and GPS in CMT4, each a small TIFF."""
    from piexif._load import _ExifReader

    out = {"0th": {}, "Exif": {}, "GPS": {}, "Interop": {}, "1st": {}, "thumbnail": None}
    for box, ifd in ((b"CMT1", "0th"), (b"CMT2", "Exif"), (b"CMT4", "GPS")):
        at = data.find(box)
        if at < 4:
            continue
        size = struct.unpack(">I", data[at - 4:at])[0]
        tiff = data[at + 4:at - 4 + size]
        r = _ExifReader(tiff)
        r.endian_mark = "<" if tiff[:2] == b"II" else ">"
        d = r.get_ifd_dict(struct.unpack(r.endian_mark + "L", tiff[4:8])[0], ifd)
        d.pop("first_ifd_pointer", None)
        out[ifd] = d
    return out if any(out[k] for k in ("0th", "Exif", "GPS")) else None


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


# ----------------------------------------------------------------------------- writing

def output_format(source: str, requested: str | None) -> str:
    """jpeg -> jpeg, png -> png, tiff -> tiff, webp -> webp, raw -> tiff; ``requested`` wins."""
    if requested:
        return requested
    return "tiff" if source == "raw" else source


def write_photo(path: str | os.PathLike, photo: Photo, fmt: str, quality: int = DEFAULT_QUALITY) -> list[str]:
    """Write ``photo`` atomically as ``fmt``; returns notes about metadata not carried over.
    JPEG and WebP are 8-bit (16-bit data is rounded to 8, with a note); PNG is 8-bit RGB;
    TIFF keeps the photo's bit depth. OSError (a full disk) propagates as it is; anything
    else the encoders raise on odd metadata becomes an SrpieError naming the file."""
    path = Path(path)
    notes: list[str] = []
    w, h = photo.size
    if fmt == "jpeg" and photo.alpha is not None:
        raise SrpieError(f"{path.name}: has an alpha channel, which JPEG cannot hold: use --format png or tiff")
    if photo.iptc and fmt not in ("jpeg", "tiff"):
        notes.append(f"IPTC not carried over ({fmt.upper()} cannot hold it)")
    exif = clean_exif(photo.exif, w, h, notes)
    xmp = clean_xmp(photo.xmp, w, h)
    writer = {"jpeg": _write_pillow, "png": _write_pillow, "webp": _write_pillow, "tiff": _write_tiff}[fmt]
    try:
        atomic_write(path, lambda f: writer(f, photo, fmt, quality, exif, xmp, notes))
    except (OSError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - metadata from the input can trip the encoders
        raise SrpieError(f"{path.name}: cannot encode ({type(e).__name__}: {_short(e)})") from None
    return notes


def atomic_write(path: Path, fill: Callable, opener=None) -> None:
    """Call ``fill(file)`` on a temporary file beside ``path``, fsync, then rename it into
    place. Any failure (a full disk, an interrupt) removes the temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_MARK, dir=path.parent)
    try:
        os.close(fd)
        with open(tmp, "w+b") as f:  # by name: tifffile wants a named file
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _to8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return np.rint(a / np.float32(257.0)).astype(np.uint8)  # 65535 / 255 = 257 exactly


def _write_pillow(f, photo: Photo, fmt: str, quality: int, exif: dict, xmp: bytes | None, notes: list[str]) -> None:
    rgb = _to8(photo.pixels)
    if photo.alpha is not None:
        im = Image.fromarray(np.dstack([rgb, _to8(photo.alpha)]), "RGBA")
    else:
        im = Image.fromarray(rgb, "RGB")
    if photo.bits == 16:
        notes.append(f"16-bit pixels written as 8-bit {fmt.upper()}")
    kw: dict = {}
    if photo.icc:
        kw["icc_profile"] = photo.icc
    if fmt == "jpeg":
        kw.update(quality=quality, subsampling=0)  # 4:4:4 chroma: no colour bleeding at 2x
    elif fmt == "webp":
        kw.update(quality=quality, method=4)
    elif fmt == "png":
        kw.update(compress_level=6)
    if xmp:
        if fmt == "png":
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
            kw["pnginfo"] = info
        else:
            kw["xmp"] = xmp
    exif_bytes = _dump_exif(exif, notes, limit=65000 if fmt == "jpeg" else None)
    if exif_bytes:
        kw["exif"] = exif_bytes
    if fmt == "jpeg" and photo.iptc:
        app13 = _PS_HEADER + photo.iptc
        if len(app13) <= 65533:  # one segment; its length field counts itself
            kw["extra"] = b"\xff\xed" + struct.pack(">H", 2 + len(app13)) + app13
        else:
            notes.append("IPTC dropped (larger than a JPEG segment holds)")
    im.save(f, format=fmt.upper(), **kw)


def _dump_exif(exif: dict | None, notes: list[str], limit: int | None = None) -> bytes | None:
    """piexif bytes; a MakerNote too large for a JPEG APP1 segment is dropped first."""
    if not exif:
        return None
    b = piexif.dump(exif)
    if limit and len(b) > limit and piexif.ExifIFD.MakerNote in exif["Exif"]:
        exif = {**exif, "Exif": {k: v for k, v in exif["Exif"].items() if k != piexif.ExifIFD.MakerNote}}
        b = piexif.dump(exif)
        notes.append("MakerNote dropped (EXIF larger than a JPEG segment holds)")
    if limit and len(b) > limit:
        notes.append("EXIF dropped (larger than a JPEG segment holds)")
        return None
    return b


def _write_tiff(f, photo: Photo, fmt: str, quality: int, exif: dict, xmp: bytes | None, notes: list[str]) -> None:
    """tifffile writes the pixels (8 or 16-bit, deflate) with IFD0's descriptive tags; the
    Exif and GPS IFDs are appended after it and their pointers patched in."""
    import tifffile

    data = photo.pixels if photo.alpha is None else np.dstack([photo.pixels, photo.alpha])
    ifd0 = dict(exif["0th"])
    software = ifd0.pop(_SOFTWARE).decode("latin-1")
    description = ifd0.pop(270, None)
    dt = ifd0.pop(306, None)
    extratags = []
    for tag, value in sorted(ifd0.items()):
        if tag in (282, 283, 296):  # resolution: passed to tifffile below
            continue
        t = piexif.TAGS["Image"][tag]["type"]
        extratags.append(_tifftag(tag, t, value))
    if photo.icc:
        extratags.append((34675, 7, len(photo.icc), photo.icc, True))
    if xmp:
        extratags.append((700, 1, len(xmp), xmp, True))
    if photo.iptc:
        extratags.append((34377, 7, len(photo.iptc), photo.iptc, True))
        if iptc := _irb_iptc(photo.iptc):
            extratags.append((33723, 7, len(iptc), iptc, True))
    sub = {k: exif[k] for k in ("Exif", "GPS") if exif[k]}
    for name in sub:
        extratags.append((_PLACEHOLDER[name], 4, 1, 0, True))  # patched below
    res = ifd0.get(282)
    resolution = None
    if res and ifd0.get(283) and isinstance(res, tuple) and res[1]:
        resolution = (res, ifd0[283])
    start = f.tell()
    tifffile.imwrite(
        f, data, photometric="rgb", planarconfig="contig", byteorder=">", compression="zlib",
        predictor=True, extrasamples=("unassalpha",) if photo.alpha is not None else None,
        software=software, description=description.decode("utf-8", "replace") if isinstance(description, bytes) else None,
        datetime=dt.decode("latin-1") if isinstance(dt, bytes) else None, metadata=None,
        resolution=resolution, resolutionunit=ifd0.get(296), extratags=extratags,
    )
    if sub:
        _append_ifds(f, start, sub)


def _tifftag(tag: int, t: int, value) -> tuple:
    if t == 2:  # ASCII
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        return (tag, "s", 0, v, True)
    if t == 7:
        v = value if isinstance(value, bytes) else bytes(value)
        return (tag, 7, len(v), v, True)
    vals = value if isinstance(value, tuple) else (value,)
    if t in (5, 10):
        flat = tuple(x for pair in (vals if isinstance(vals[0], tuple) else (vals,)) for x in pair)
        return (tag, t, len(flat) // 2, flat, True)
    return (tag, t, len(vals), vals, True)


# tifffile refuses to write the Exif and GPS pointer tags: it writes these unused neighbours,
# which sort the same, and _append_ifds renames them once the IFDs exist.
_PLACEHOLDER = {"Exif": 34664, "GPS": 34854}
_POINTER = {"Exif": 34665, "GPS": 34853}


def _append_ifds(f, start: int, sub: dict[str, dict]) -> None:
    """Append Exif/GPS IFDs (piexif's encoder, big-endian) at the end of the TIFF in ``f``
    and turn IFD0's placeholders into 34665/34853 pointers to them."""
    from piexif._dump import _dict_to_bytes
    import tifffile

    f.seek(start)
    with tifffile.TiffFile(f) as tf:
        tags = tf.pages.first.tags
        where = {name: tags[code].valueoffset for name, code in _PLACEHOLDER.items() if code in tags}
    f.seek(0, os.SEEK_END)
    for name in ("Exif", "GPS"):
        if name not in sub:
            continue
        if f.tell() % 2:
            f.write(b"\0")
        at = f.tell() - start
        entries, values = _dict_to_bytes(sub[name], name, at - 8 + 4)  # piexif adds 8; +4: next-IFD pointer
        f.write(entries + b"\0\0\0\0" + values)
        end = f.tell()
        f.seek(start + where[name] - 8)  # the 12-byte entry: tag, type, count, value
        f.write(struct.pack(">HHII", _POINTER[name], 4, 1, at))
        f.seek(end)
