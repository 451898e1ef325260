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

import errno
import functools
import io
import os
import stat
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin

from srpie_cli import Refused, SrpieError, defaults, first_line, metadata

# Formats by file extension (lower case). RAW: everything LibRaw reads that cameras write.
SUFFIXES: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".jpe", ".jfif"), "jpeg"),
    ".png": "png",
    **dict.fromkeys((".tif", ".tiff"), "tiff"),
    ".webp": "webp",
    **dict.fromkeys((".heic", ".heif", ".hif"), "heif"),  # phones (iPhone, Pixel, Galaxy), Canon's HEIF
    ".avif": "avif",
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf",
                     ".orf", ".rw2", ".pef", ".srw", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".mrw",
                     ".x3f", ".rwl", ".dcr", ".kdc"), "raw"),
}
OUT_SUFFIX = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
DEFAULT_MAX_MEGAPIXELS = defaults.MAX_MEGAPIXELS
_PILLOW_CAP = Image.MAX_IMAGE_PIXELS  # Pillow's own decompression-bomb limit, as shipped
DEFAULT_QUALITY = defaults.QUALITY
TMP_MARK = ".srpie-tmp"  # temporary output files: ".<name>.srpie-tmp<random>"


def _heif_opener() -> bool:
    """Pillow reads HEIC/HEIF through pi-heif (a dependency; BSD-3, the decode-only build of
    pillow-heif: libheif and libde265, LGPL-3, without pillow-heif's GPL-2 x265 encoder) or
    pillow-heif where that is what is installed; AVIF through
    Pillow itself (11.3 and later). False where neither is there."""
    for name in ("pi_heif", "pillow_heif"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        module.register_heif_opener()
        return True
    return False


HEIF = _heif_opener()


def readable(kind: str | None) -> bool:
    """Whether this installation decodes photos of ``kind`` (HEIF and AVIF need their codecs)."""
    if kind == "heif":
        return HEIF
    if kind == "avif":
        from PIL import features

        return bool(features.check("avif"))
    return kind is not None


def format_of(path: Path) -> str | None:
    """'jpeg', 'png', 'tiff', 'webp', 'heif', 'avif', 'raw' by extension (any case), or None."""
    return SUFFIXES.get(path.suffix.lower())


# Photo-like files srpie cannot enhance: named in a folder run, never passed over in silence
FOREIGN: dict[str, str] = {
    ".jxl": "JPEG XL", ".psd": "a Photoshop document", ".psb": "a Photoshop document", ".gif": "GIF",
    ".bmp": "BMP", ".jp2": "JPEG 2000", ".j2k": "JPEG 2000", ".jpx": "JPEG 2000", ".exr": "OpenEXR",
    ".hdr": "Radiance HDR", ".xcf": "a GIMP document", ".kra": "a Krita document", ".afphoto": "an Affinity document",
    ".jxr": "JPEG XR", ".wdp": "JPEG XR", ".hdp": "JPEG XR", ".ico": "an icon", ".tga": "TGA", ".pcx": "PCX",
    ".ppm": "PPM", ".pgm": "PGM", ".pbm": "PBM", ".svg": "SVG (a drawing)",
}
# files that travel with photos and are none: sidecars, video thumbnails and proxies, notes
COMPANIONS = {".xmp", ".thm", ".lrv", ".pp3", ".dop", ".cos", ".cof", ".arp", ".on1", ".txt", ".json", ".toml",
              ".md", ".csv", ".pdf", ".html", ".xml", ".log", ".lrcat", ".db", ".ini"}
# (signature at offset 0, what it is); ISO-BMFF (HEIF, AVIF) is told by its brand (see sniff)
MAGIC: list[tuple[bytes, str]] = [
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"8BPS", "a Photoshop document"),
    (b"GIF8", "GIF"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\x76\x2f\x31\x01", "OpenEXR"), (b"FUJIFILMCCD-RAW", "RAF (Fujifilm RAW)"),
]
_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC", b"mif1": "HEIF",
           b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def sniff(path: Path) -> str | None:
    """What photo format the first bytes of ``path`` say it is ("JPEG", "HEIC", "JPEG XL"...),
    or None: how a photo with a wrong or missing extension is still named."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return _BRANDS.get(head[8:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((what for sig, what in MAGIC if head.startswith(sig)), None)


def foreign_reason(path: Path) -> str | None:
    """Why a file that looks like a photo (by its extension or its first bytes) is not
    enhanced, or None when it is one srpie reads, or no photo at all."""
    kind = format_of(path)
    if kind is not None:
        if readable(kind):
            return None
        return (f"{kind.upper()} cannot be read by this installation "
                + ("(install pi-heif)" if kind == "heif" else "(Pillow 11.3 or later reads AVIF)"))
    if path.suffix.lower() in COMPANIONS:
        return None
    what = FOREIGN.get(path.suffix.lower()) or sniff(path)
    if what is None:
        return None
    if path.suffix.lower() in FOREIGN:
        return f"{what}: not a format srpie reads (export a JPEG, TIFF or PNG to enhance it)"
    return f"looks like {what} but its extension {path.suffix or '(none)'!r} does not say so: rename it to enhance it"


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
        raise Refused(f"{path}: refused: {w}x{h} is {mp:.0f} MP, above the {max_megapixels:g} MP "
                         "limit (a decompression bomb, or raise --max-megapixels)")


# ----------------------------------------------------------------------------- metadata


# ----------------------------------------------------------------------------- reading

def read_photo(path: str | os.PathLike, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Photo:
    """Decode a photo upright, with its metadata. SrpieError with the reason when it cannot."""
    path = Path(path)
    kind = format_of(path)
    try:
        # unreadable files fail here, named as such; O_NONBLOCK: a FIFO opens without waiting
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SrpieError(f"{path}: not a regular file (a FIFO, socket or device)")
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
        raise Refused(f"{path}: not enough memory to decode it") from None
    except OSError as e:  # unreadable, vanished, a folder named .jpg, an I/O error
        raise SrpieError(f"{path}: cannot read ({e.strerror or first_line(e)})") from None
    except Exception as e:
        raise SrpieError(f"{path}: corrupt or unreadable ({type(e).__name__}: {first_line(e)})") from None


def _read_pillow(path: Path, max_megapixels: float) -> Photo:
    notes: list[str] = []
    # Pillow refuses images over twice its own cap (179 MP) before _check_size sees them:
    # the cap follows --max-megapixels, which _check_size enforces with a clearer message
    Image.MAX_IMAGE_PIXELS = max(int(max_megapixels * 1e6), _PILLOW_CAP)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(path, im.width, im.height, max_megapixels)
                fmt = (im.format or "").lower()
                im.load()  # before reading info: a PNG's eXIf chunk may follow its pixels
                if fmt == "jpeg" and (damage := jpeg_damage(path)):
                    raise SrpieError(f"{path}: corrupt JPEG data, the picture would be garbled ({damage})")
                info = dict(im.info)
                exif = metadata.parse_exif(info.get("exif"), notes)
                if exif is None and info.get("exif"):  # piexif refused it: Pillow's reading still knows the orientation
                    exif = metadata.pillow_exif(im.getexif(), notes)
                icc = info.get("icc_profile")
                xmp = metadata.xmp_bytes(info.get("xmp") or info.get("XML:com.adobe.xmp"))
                irb = b"".join(d[len(metadata.PS_HEADER):] for m, d in getattr(im, "applist", [])
                               if m == "APP13" and d.startswith(metadata.PS_HEADER))
                o = metadata.orientation_of(exif)
                if fmt == "tiff":  # recent Pillow turns a TIFF upright as it loads and drops the tag
                    o = im.getexif().get(metadata.ORIENTATION_TAG, 1)
                rgb, alpha, icc = _to_rgb(im, icc, notes)
    except Image.DecompressionBombError:
        raise Refused(f"{path}: refused: too many pixels (a decompression bomb)") from None
    except SrpieError:
        raise
    except Image.UnidentifiedImageError:
        raise SrpieError(f"{path}: not an image Pillow can read (wrong extension or corrupt)") from None
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError) as e:
        raise SrpieError(f"{path}: corrupt or truncated ({first_line(e)})") from None
    if fmt == "png" and rgb.dtype == np.uint8 and _png_bit_depth(path) == 16:
        rgb, alpha = _png16(path, rgb, alpha, notes)
    return Photo(orient(rgb, o), orient(alpha, o) if alpha is not None else None, exif,
                 metadata.rgb_icc(icc, notes), xmp, fmt or "image", metadata.clean_irb(irb, notes), notes)


def jpeg_damage(path: Path) -> str | None:
    """What libjpeg-turbo says is wrong with the scan data of a JPEG that still decodes
    ("Corrupt JPEG data: 23 extraneous bytes before marker 0xd9", "premature end of data
    segment", "bad Huffman code"): Pillow hides these warnings and returns garbled pixels
    (python-pillow/Pillow#9106). Read through simplejpeg's strict mode at 1/8 scale (the
    whole scan is still entropy-decoded; a 12 MP photo costs about 0.03 s). None when the
    scan is whole, when the problem is not in the scan data, or when simplejpeg is not
    installed (the check is then skipped)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    data = path.read_bytes()
    try:
        space = {"Gray": "GRAY", "CMYK": "CMYK"}.get(simplejpeg.decode_jpeg_header(data)[2], "RGB")
        simplejpeg.decode_jpeg(data, colorspace=space, strict=True, fastdct=True, fastupsample=True,
                               min_factor=8, min_height=1, min_width=1)
    except Exception as e:  # only libjpeg's own words on the scan count; Pillow judges the rest
        msg = first_line(e)
        return msg if msg.startswith(("Corrupt JPEG data", "Premature end of JPEG")) else None
    return None


def made_by_srpie(path: Path) -> bool:
    """Whether the photo file at ``path`` is an output of srpie: every output names it in its
    EXIF Software tag ("srpie <version>"; IFD0 of a TIFF). Reads the header only."""
    kind = format_of(path)
    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                tag = tf.pages.first.tags.get(metadata.SOFTWARE_TAG)
                software = tag.value if tag is not None else None
        elif kind in ("jpeg", "webp", "png"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    raw = im.info.get("exif") if kind != "png" else _png_exif(path)
            software = metadata.software_of(raw)
        else:
            return False
    except Exception:  # unreadable, not an image: not one of srpie's
        return False
    if isinstance(software, bytes):
        software = software.decode("latin-1")
    return isinstance(software, str) and software.startswith("srpie ")


def _png_exif(path: Path) -> bytes | None:
    """The eXIf chunk of a PNG, read without decoding the pixels (Pillow's getexif would)."""
    with open(path, "rb") as f:
        f.seek(8)
        while head := f.read(8):
            if len(head) < 8:
                return None
            n, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return f.read(n)
            if kind in (b"IDAT", b"IEND"):
                return None
            f.seek(n + 4, os.SEEK_CUR)
    return None


def _png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The full 16 bits of an RGB(A) PNG (Pillow holds no RGB deeper than 8), through
    imagecodecs; Pillow's 8-bit pixels, with a note, where that cannot be done."""
    try:
        import imagecodecs

        a = imagecodecs.png_decode(path.read_bytes())
    except Exception as e:
        notes.append(f"16-bit RGB PNG read at 8 bits ({first_line(e)})")
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
            notes.append(f"CMYK converted to sRGB with its ICC profile {metadata.icc_name(icc)!r}")
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
            xmp = metadata.xmp_bytes(tags[700].value) if 700 in tags else None
            irb = metadata.tag_bytes(tags, 34377, tf.byteorder) or metadata.iptc_as_irb(metadata.tag_bytes(tags, 33723, tf.byteorder))
            photometric = int(page.photometric)
            extrasamples = tuple(page.extrasamples) if page.extrasamples is not None else ()
            a = page.asarray()
    except SrpieError:
        raise
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, OSError, struct.error, NotImplementedError) as e:
        # compressions tifffile cannot decode without imagecodecs (LZW, JPEG...): Pillow reads 8-bit ones
        try:
            photo = _read_pillow(path, max_megapixels)
        except Refused:
            raise
        except SrpieError:
            raise SrpieError(f"{path}: corrupt or unsupported TIFF ({first_line(e)})") from None
        if bits > photo.bits:  # Pillow holds no RGB deeper than 8 bits: say so, never silently
            photo.notes.append(f"{bits}-bit TIFF read at {photo.bits} bits ({first_line(e)})")
        if photo.exif is None:  # Pillow keeps a TIFF's EXIF out of im.info (it did orient the pixels)
            photo.exif = metadata.tiff_exif(path, photo.notes)
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
    exif = metadata.tiff_exif(path, notes)
    o = metadata.orientation_of(exif)
    rgb = orient(np.ascontiguousarray(rgb), o)
    alpha = orient(np.ascontiguousarray(alpha), o) if alpha is not None else None
    return Photo(rgb, alpha, exif, metadata.rgb_icc(icc, notes), xmp, "tiff", metadata.clean_irb(irb, notes), notes)


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
            _check_raw_data(path, s.raw_width * s.raw_height)
            rgb = raw.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=True,
                                  output_color=rawpy.ColorSpace.sRGB)
    except SrpieError:
        raise
    except rawpy.LibRawIOError:  # LibRaw ran past the end of the file, or the read failed
        raise SrpieError(f"{path}: the RAW file is cut short or unreadable (LibRaw: input/output error)") from None
    except (rawpy.LibRawError, OSError, ValueError) as e:
        why = e.args[0].decode("latin-1") if e.args and isinstance(e.args[0], bytes) else first_line(e)
        raise SrpieError(f"{path}: not a RAW file LibRaw can develop ({why})") from None
    exif, xmp = metadata.raw_metadata(path, notes)
    return Photo(np.ascontiguousarray(rgb), None, exif, srgb_profile(), xmp, "raw", notes=notes)


RAW_MIN_BITS = 0.1  # bits a RAW file holds per pixel at the least; see _check_raw_data


def _check_raw_data(path: Path, pixels: int) -> None:
    """Refuse a RAW file too small to hold its pixels: metadata whose pixel data was cut off
    or stripped (a 13 KB file that says 8 MP). LibRaw develops such files without an error,
    into noise or black. Lossless RAW compressions (Huffman-coded differences) spend at
    least one bit a pixel; a lossy DNG of a black frame stays above a tenth of a bit."""
    size = path.stat().st_size
    if size * 8 < pixels * RAW_MIN_BITS:
        raise SrpieError(f"{path}: the RAW's pixel data is missing: {size / 1e3:.0f} KB cannot hold "
                         f"{pixels / 1e6:.1f} MP (cut short, or metadata only)")


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """The sRGB ICC profile LibRaw's output is in, with a fixed creation date (bytes 24-35)
    so the same input always gives the same output bytes."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(icc)


# ----------------------------------------------------------------------------- writing

def output_format(source: str, requested: str | None) -> str:
    """jpeg -> jpeg, png -> png, tiff -> tiff, webp -> webp, raw -> tiff, heif and avif -> jpeg
    (what every client opens); ``requested`` wins."""
    if requested:
        return requested
    return {"raw": "tiff", "heif": "jpeg", "avif": "jpeg"}.get(source, source)


def write_photo(path: str | os.PathLike, photo: Photo, fmt: str, quality: int = DEFAULT_QUALITY) -> list[str]:
    """Write ``photo`` atomically as ``fmt``; returns notes about metadata not carried over.
    JPEG and WebP are 8-bit (16-bit data is rounded to 8, with a note); PNG is 8-bit RGB;
    TIFF keeps the photo's bit depth. What was written is checked before it is renamed into
    place (a full disk can cut a file short without an error). OSError (a full disk)
    propagates as it is; anything else the encoders raise on odd metadata becomes an
    SrpieError naming the file."""
    path = Path(path)
    notes: list[str] = []
    atomic_write(path, lambda f: _encode(f, path, photo, fmt, quality, notes), verify=lambda f: verify(f, fmt))
    return notes


def check_writable(path: str | os.PathLike, photo: Photo, fmt: str, quality: int = DEFAULT_QUALITY) -> None:
    """Encode an 8 x 8 stand-in of ``photo`` with all its metadata, in memory: whatever would
    make the real write fail (a format that cannot hold alpha, metadata an encoder refuses)
    fails here, before the network has run. Raises SrpieError with the reason."""
    small = Photo(np.ascontiguousarray(photo.pixels[:8, :8]),
                  None if photo.alpha is None else np.ascontiguousarray(photo.alpha[:8, :8]),
                  photo.exif, photo.icc, photo.xmp, photo.source_format, photo.iptc)
    _encode(io.BytesIO(), Path(path), small, fmt, quality, [])


def _encode(f, path: Path, photo: Photo, fmt: str, quality: int, notes: list[str]) -> None:
    w, h = photo.size
    if fmt == "jpeg" and photo.alpha is not None:
        raise SrpieError(f"{path.name}: has an alpha channel, which JPEG cannot hold: use --format png or tiff")
    if photo.iptc and fmt not in ("jpeg", "tiff"):
        notes.append(f"IPTC not carried over ({fmt.upper()} cannot hold it)")
    exif = metadata.clean_exif(photo.exif, w, h, notes)
    xmp = metadata.clean_xmp(photo.xmp, w, h)
    writer = {"jpeg": _write_pillow, "png": _write_pillow, "webp": _write_pillow, "tiff": _write_tiff}[fmt]
    try:
        writer(f, photo, fmt, quality, exif, xmp, notes)
    except (OSError, MemoryError):
        raise
    except Exception as e:
        raise SrpieError(f"{path.name}: cannot encode ({type(e).__name__}: {first_line(e)})") from None


FULL_DISK_BYTES = 1 << 20  # less free space than this after a write that came out short: the disk is full


def verify(f, fmt: str) -> None:
    """Check that the file ``f`` holds a whole ``fmt`` file: its size on disk is what was
    written and it ends where the format says it ends. OSError (ENOSPC-like) when not."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(16)
    f.seek(max(size - 12, 0))
    tail = f.read(12)
    if fmt == "jpeg":
        whole = head[:2] == b"\xff\xd8" and tail.endswith(b"\xff\xd9")
    elif fmt == "png":
        whole = head[:8] == b"\x89PNG\r\n\x1a\n" and tail[-8:] == b"IEND\xaeB`\x82"
    elif fmt == "webp":
        whole = head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == size
    else:
        whole = _tiff_whole(f, size)
    if not whole:
        # A full disk is the usual cause (Pillow on a full tmpfs returns without an error and
        # a file cut at a block boundary); it stops the batch like ENOSPC. With room left the
        # cause is something else, and only this photo fails.
        try:
            free = os.fstatvfs(f.fileno()).f_bavail * os.fstatvfs(f.fileno()).f_frsize
        except (OSError, AttributeError):  # no statvfs (Windows)
            free = 0
        full = free < FULL_DISK_BYTES
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      f"the written {fmt.upper()} file is incomplete ({size} bytes)"
                      + (": the disk is full" if full else ""))


_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}


def _tiff_whole(f, size: int) -> bool:
    """IFD0, the Exif, GPS and Interop IFDs, every tag value and every strip of the TIFF in
    ``f`` lie inside its ``size``: a file cut short anywhere, the EXIF appended last included,
    is not."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[:4] not in (b"II*\0", b"MM\0*"):
        return False
    bo = "<" if head[:2] == b"II" else ">"
    ifd0 = struct.unpack(bo + "I", head[4:])[0]
    todo, end, seen = [ifd0], 8, set()
    while todo:
        at = todo.pop()
        if at in seen:
            return False
        seen.add(at)
        f.seek(at)
        raw = f.read(2)
        if len(raw) < 2:
            return False
        n = struct.unpack(bo + "H", raw)[0]
        entries = f.read(12 * n + 4)
        if len(entries) < 12 * n + 4:
            return False
        end = max(end, at + 2 + 12 * n + 4)
        for k in range(n):
            tag, kind, count, value = struct.unpack(bo + "HHII", entries[12 * k:12 * k + 12])
            if count * _TIFF_TYPE_SIZE.get(kind, 1) > 4:
                end = max(end, value + count * _TIFF_TYPE_SIZE.get(kind, 1))
            if tag in (34665, 34853, 40965):  # the Exif, GPS and Interop IFDs
                todo.append(value)
    try:
        import tifffile

        f.seek(0)
        with tifffile.TiffFile(f) as tf:
            page = tf.pages.first
            end = max([end] + [o + n for o, n in zip(page.dataoffsets, page.databytecounts)])
    except Exception:
        return False
    return end <= size


def atomic_write(path: Path, fill: Callable, verify: Callable | None = None) -> None:
    """Call ``fill(file)`` on a temporary file beside ``path``, fsync, ``verify(file)`` when
    given, then rename it into place. Any failure (a full disk, an interrupt, a file found
    incomplete) removes the temporary file. The temporary name is short, so a photo whose
    name is at the file system's limit can still be written."""
    fd, tmp = tempfile.mkstemp(prefix=".srpie-", suffix=TMP_MARK, dir=path.parent)
    try:
        os.close(fd)
        with open(tmp, "w+b") as f:  # by name: tifffile wants a named file
            fill(f)
            f.flush()
            os.fsync(f.fileno())
            if verify is not None:
                verify(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def to8(a: np.ndarray) -> np.ndarray:
    """uint8 or uint16 pixels as uint8 (16-bit rounded to nearest)."""
    if a.dtype == np.uint8:
        return a
    return np.rint(a / np.float32(257.0)).astype(np.uint8)  # 65535 / 255 = 257 exactly


def _write_pillow(f, photo: Photo, fmt: str, quality: int, exif: dict, xmp: bytes | None, notes: list[str]) -> None:
    rgb = to8(photo.pixels)
    if photo.alpha is not None:
        im = Image.fromarray(np.dstack([rgb, to8(photo.alpha)]), "RGBA")
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
    exif_bytes = metadata.dump_exif(exif, notes, limit=65000 if fmt == "jpeg" else None)
    if exif_bytes:
        kw["exif"] = exif_bytes
    if fmt == "jpeg" and photo.iptc:
        app13 = metadata.PS_HEADER + photo.iptc
        if len(app13) <= 65533:  # one segment; its length field counts itself
            kw["extra"] = b"\xff\xed" + struct.pack(">H", 2 + len(app13)) + app13
        else:
            notes.append("IPTC dropped (larger than a JPEG segment holds)")
    im.save(f, format=fmt.upper(), **kw)


def _write_tiff(f, photo: Photo, fmt: str, quality: int, exif: dict, xmp: bytes | None, notes: list[str]) -> None:
    """tifffile writes the pixels (8 or 16-bit, deflate) with IFD0's descriptive tags; the
    Exif and GPS IFDs are appended after it and their pointers patched in."""
    import tifffile

    data = photo.pixels if photo.alpha is None else np.dstack([photo.pixels, photo.alpha])
    fields = metadata.tiff_fields(exif, notes)
    extratags = fields.pop("extratags")
    if photo.icc:
        extratags.append((34675, 7, len(photo.icc), photo.icc, True))
    if xmp:
        extratags.append((700, 1, len(xmp), xmp, True))
    if photo.iptc:
        extratags.append((34377, 7, len(photo.iptc), photo.iptc, True))
        if iptc := metadata.irb_iptc(photo.iptc):
            extratags.append((33723, 7, len(iptc), iptc, True))
    sub = {k: exif[k] for k in ("Exif", "GPS", "Interop") if exif.get(k)}
    for name in sub.keys() & metadata.PLACEHOLDER.keys():
        extratags.append((metadata.PLACEHOLDER[name], 4, 1, 0, True))  # patched below
    start = f.tell()
    tifffile.imwrite(
        f, data, photometric="rgb", planarconfig="contig", byteorder=">", compression="zlib",
        predictor=True, extrasamples=("unassalpha",) if photo.alpha is not None else None,
        metadata=None, extratags=extratags, **fields,
    )
    if sub:
        metadata.append_ifds(f, start, sub)


