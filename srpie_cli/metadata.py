"""Photo metadata: what is carried from an input to its output, and how.

EXIF (as a ``piexif`` dict), XMP, the ICC profile and the Photoshop image resources that
hold IPTC are read by ``images`` with the pixels; here they are cleaned for the output
(orientation 1, the new pixel size, srpie named as the software, the stale thumbnail
dropped), read out of RAW containers (TIFF-based ones, CR3, RAF), and written into TIFF
files, whose Exif and GPS IFDs tifffile cannot write itself.

Rule: metadata that an output format cannot hold is converted or dropped with a note that
names it; it never fails the photo.

Why piexif and this module, not libexiv2 (PyPI ``exiv2``): it would replace the TIFF IFD
patching, the RAW container readers and the XMP edits here, and salvages more of a broken
EXIF block; but it is GPL (srpie is MIT), its wheel is 48 MB with a network stack (libcurl,
OpenSSL, Kerberos) bundled, and it could not read the CR3 sample that ``_cr3_exif`` reads.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import piexif

from srpie_cli import __version__, first_line

# IFD0 tags that describe the old file's layout, not the photo: never carried over.
_LAYOUT_TAGS = {254, 255, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
                330, 338, 339, 513, 514, 700, 33421, 33422, 33723, 34377, 34665, 34853, 34675}


ORIENTATION_TAG, SOFTWARE_TAG = 274, 305


_PIXEL_X, _PIXEL_Y = 40962, 40963


def parse_exif(raw: bytes | None, notes: list[str]) -> dict | None:
    if not raw:
        return None
    try:
        d = piexif.load(raw if raw[:4] == b"Exif" or raw[:2] in (b"II", b"MM") else b"Exif\0\0" + raw)
    except (ValueError, KeyError, IndexError, TypeError, struct.error, piexif.InvalidImageDataError) as e:
        notes.append(f"EXIF unreadable, not carried over ({type(e).__name__}: {first_line(e)})")
        return None
    return d


def software_of(raw: bytes | None):
    """IFD0's Software value of raw EXIF bytes, or None."""
    if not raw:
        return None
    from PIL import Image

    exif = Image.Exif()
    exif.load(raw if raw[:4] == b"Exif" else b"Exif\0\0" + raw)
    return exif.get(SOFTWARE_TAG)


def pillow_exif(exif, notes: list[str]) -> dict | None:
    """IFD0 of an EXIF block piexif refused, as far as Pillow's more forgiving reader got
    (``Image.getexif()``): the orientation above all, so the photo still comes out upright.
    The note ``parse_exif`` left becomes one that names what was kept and what was lost.
    None when Pillow read nothing either."""
    ifd0 = {}
    for tag, value in dict(exif or {}).items():
        info = piexif.TAGS["Image"].get(tag)
        if info is None or tag in _LAYOUT_TAGS:
            continue
        if info["type"] == 2 and isinstance(value, str):
            value = value.encode("utf-8")
        elif info["type"] in (5, 10):  # Pillow's IFDRational -> piexif's (numerator, denominator)
            value = tuple(_rational(v) for v in value) if isinstance(value, tuple) else _rational(value)
        ifd0[tag] = value
    if not ifd0:
        return None
    why = next((n for n in reversed(notes) if n.startswith("EXIF unreadable")), None)
    if why is not None:
        notes.remove(why)
    reason = why[why.index("("):] if why and "(" in why else ""
    kept = ", ".join(piexif.TAGS["Image"][t]["name"] for t in sorted(ifd0))
    head = f"EXIF partly unreadable {reason}".strip()
    notes.append(f"{head}: kept only {kept} from the main IFD; the Exif and GPS IFDs are lost")
    return {"0th": ifd0, "Exif": {}, "GPS": {}, "Interop": {}, "1st": {}, "thumbnail": None}


def _rational(v) -> tuple[int, int]:
    n, d = getattr(v, "numerator", v), getattr(v, "denominator", 1)
    return (int(n), int(d)) if d else (0, 1)


def orientation_of(exif: dict | None) -> int:
    v = (exif or {}).get("0th", {}).get(ORIENTATION_TAG, 1)
    if isinstance(v, (tuple, list)):
        v = v[0] if v else 1
    return v if isinstance(v, int) and 1 <= v <= 8 else 1


def rgb_icc(icc: bytes | None, notes: list[str]) -> bytes | None:
    """Keep an ICC profile only when it describes RGB data (a grey, CMYK or Lab profile
    would mislabel the RGB output); the note names the profile dropped."""
    if not icc:
        return None
    if len(icc) < 20 or icc[16:20] != b"RGB ":
        space = icc[16:20].decode("latin-1").strip() if len(icc) >= 20 else ""
        notes.append(f"ICC profile {icc_name(icc)!r} for {space or 'unknown'} data dropped (the output is RGB)")
        return None
    return icc


def icc_name(icc: bytes) -> str:
    """An ICC profile's description ("sRGB IEC61966-2.1", "U.S. Web Coated (SWOP) v2")."""
    import io

    from PIL import ImageCms

    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.profile_description.strip() or "unnamed"
    except Exception:
        return "unreadable"


def clean_exif(exif: dict | None, width: int, height: int, notes: list[str] | None = None) -> dict:
    """The EXIF to write with an output of ``width`` x ``height``: layout tags and the stale
    thumbnail dropped, orientation 1, pixel dimensions and Software updated; tags piexif
    cannot write (unknown or malformed) left out, and counted in ``notes``. An input without
    EXIF gets those four tags alone, so every output names srpie and its size."""
    exif = exif or {}
    out: dict = {"0th": {}, "Exif": {}, "GPS": {}, "Interop": {}, "1st": {}, "thumbnail": None}
    unknown, malformed = [], []
    for ifd in ("0th", "Exif", "GPS", "Interop"):
        kind = "Image" if ifd == "0th" else ifd
        for tag, value in (exif.get(ifd) or {}).items():
            if not isinstance(tag, int) or tag not in piexif.TAGS[kind]:
                unknown.append(f"{ifd} 0x{tag:04x}" if isinstance(tag, int) else f"{ifd} {tag!r}")
                continue
            if ifd == "0th" and (tag in _LAYOUT_TAGS or 50000 <= tag < 53000):  # 50xxx-52xxx: DNG private
                continue
            if ifd == "Exif" and tag == piexif.ExifIFD.InteroperabilityTag:
                continue  # a pointer: piexif writes it when the Interop IFD is kept
            try:
                piexif.dump({"Exif": {}, ifd: {tag: value}})  # an Interop IFD hangs off the Exif IFD
            except (ValueError, TypeError, struct.error, KeyError, NameError):  # NameError: piexif on odd types
                malformed.append(piexif.TAGS[kind][tag]["name"])
                continue
            out[ifd][tag] = value
    out["0th"][ORIENTATION_TAG] = 1
    out["0th"][SOFTWARE_TAG] = f"srpie {__version__}".encode()
    out["Exif"][_PIXEL_X] = int(width)
    out["Exif"][_PIXEL_Y] = int(height)
    if notes is not None:
        if malformed:
            notes.append(f"malformed EXIF tags not carried over: {', '.join(malformed)}")
        if unknown:
            notes.append(f"EXIF tags unknown to the writer not carried over: {', '.join(unknown)}")
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


PS_HEADER = b"Photoshop 3.0\0"  # opens a JPEG APP13 segment of Photoshop image resources


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


def iptc_as_irb(iptc: bytes | None) -> bytes | None:
    """A bare IPTC-NAA record (TIFF tag 33723) as one image resource."""
    if not iptc:
        return None
    return b"8BIM" + struct.pack(">HHI", _IRB_IPTC, 0, len(iptc)) + iptc + b"\0" * (len(iptc) & 1)


def irb_iptc(irb: bytes) -> bytes | None:
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


def tag_bytes(tags, code: int, byteorder: str) -> bytes | None:
    """A TIFF tag's raw value bytes: BYTE/UNDEFINED, or LONG as Photoshop types 33723."""
    if code not in tags:
        return None
    tag = tags[code]
    if isinstance(tag.value, bytes):
        return tag.value
    if tag.dtype == 4 and isinstance(tag.value, tuple):
        return struct.pack(f"{byteorder}{len(tag.value)}I", *tag.value)
    return None


def xmp_bytes(x) -> bytes | None:
    if not x:
        return None
    return x.encode("utf-8") if isinstance(x, str) else bytes(x)


def tiff_exif(path: Path, notes: list[str]) -> dict | None:
    """IFD0 (with its Exif and GPS IFDs) of a TIFF file, as a piexif dict."""
    try:
        return parse_exif(path.read_bytes(), notes)
    except OSError as e:
        notes.append(f"EXIF unreadable ({first_line(e)})")
        return None


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
            exif = parse_exif(data, notes)
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
            return parse_exif(jpeg[at:at - 2 + seg], notes), None
    except (struct.error, ValueError, IndexError) as e:
        notes.append(f"EXIF of the RAW container unreadable ({first_line(e)})")
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


def dump_exif(exif: dict | None, notes: list[str], limit: int | None = None) -> bytes | None:
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


_TIFF_DATETIME = re.compile(r"\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}")
_ASCII_FOLD = {"\u00a9": "(c)", "\u00ae": "(R)", "\u2122": "(TM)", "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE",
               "\u00f8": "o", "\u00d8": "O", "\u0153": "oe", "\u0152": "OE", "\u0142": "l", "\u0141": "L",
               "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}


def tiff_ascii(value, name: str, notes: list[str]) -> str | None:
    """An EXIF ASCII value as TIFF can hold it: 7-bit text, NULs trimmed. Accents and
    symbols are folded (e acute -> e, a copyright sign -> (c)) with a note naming the tag;
    None, with a note, when nothing is left."""
    import unicodedata

    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.split("\0", 1)[0].strip() if "\0" in text else text
    if text.isascii():
        return text or None
    folded = "".join(_ASCII_FOLD.get(c, c) for c in text)
    folded = unicodedata.normalize("NFKD", folded).encode("ascii", "ignore").decode("ascii")
    notes.append(f"EXIF {name}: non-ASCII characters folded to ASCII for TIFF ({folded!r})")
    return folded or None


def tiff_fields(exif: dict, notes: list[str]) -> dict:
    """IFD0 of a cleaned EXIF (``clean_exif``) as ``tifffile.imwrite`` arguments: software,
    description, datetime, resolution and the rest as ``extratags``. What TIFF cannot hold
    is converted or dropped with a note naming the tag: a DateTime that is empty, NUL-filled
    or not ``YYYY:MM:DD HH:MM:SS``, and text that is not ASCII."""
    ifd0 = dict(exif["0th"])
    fields: dict = {"software": ifd0.pop(SOFTWARE_TAG).decode("latin-1")}
    if (desc := ifd0.pop(270, None)) is not None:
        fields["description"] = tiff_ascii(desc, "ImageDescription", notes)
    if (dt := ifd0.pop(306, None)) is not None:
        text = dt.decode("latin-1", "replace").strip("\0 ") if isinstance(dt, bytes) else str(dt)
        if _TIFF_DATETIME.fullmatch(text):
            fields["datetime"] = text
        else:
            notes.append(f"EXIF DateTime {text!r} is not a date (YYYY:MM:DD HH:MM:SS), not carried into the TIFF")
    res, yres = ifd0.get(282), ifd0.get(283)
    if isinstance(res, tuple) and len(res) == 2 and res[1] and isinstance(yres, tuple) and len(yres) == 2 and yres[1]:
        fields["resolution"] = (res, yres)
        if ifd0.get(296) in (1, 2, 3):
            fields["resolutionunit"] = ifd0[296]
    extratags = []
    for tag, value in sorted(ifd0.items()):
        if tag in (282, 283, 296):  # resolution: passed to tifffile above
            continue
        info = piexif.TAGS["Image"][tag]
        if info["type"] == 2:
            value = tiff_ascii(value, info["name"], notes)
            if value is None:
                continue
        extratags.append(tifftag(tag, info["type"], value))
    fields["extratags"] = extratags
    return fields


def tifftag(tag: int, t: int, value) -> tuple:
    if t == 2:  # ASCII (made 7-bit by tiff_ascii)
        return (tag, "s", 0, str(value), True)
    if t == 7:
        v = value if isinstance(value, bytes) else bytes(value)
        return (tag, 7, len(v), v, True)
    vals = value if isinstance(value, tuple) else (value,)
    if t in (5, 10):
        flat = tuple(x for pair in (vals if isinstance(vals[0], tuple) else (vals,)) for x in pair)
        return (tag, t, len(flat) // 2, flat, True)
    return (tag, t, len(vals), vals, True)


# tifffile refuses to write the Exif and GPS pointer tags: it writes these unused neighbours,
# which sort the same, and append_ifds renames them once the IFDs exist.
PLACEHOLDER = {"Exif": 34664, "GPS": 34854}


_POINTER = {"Exif": 34665, "GPS": 34853}


def append_ifds(f, start: int, sub: dict[str, dict]) -> None:
    """Append Exif/GPS IFDs (piexif's encoder, big-endian) at the end of the TIFF in ``f``
    and turn IFD0's placeholders into 34665/34853 pointers to them. An ``Interop`` IFD
    (the camera's colour-space index) is appended after the Exif IFD, which points to it."""
    import tifffile
    from piexif._dump import _dict_to_bytes

    f.seek(start)
    with tifffile.TiffFile(f) as tf:
        tags = tf.pages.first.tags
        where = {name: tags[code].valueoffset for name, code in PLACEHOLDER.items() if code in tags}
    f.seek(0, os.SEEK_END)
    interop_entry = None  # where the Exif IFD's pointer to the Interop IFD is, patched last
    for name in ("Exif", "GPS", "Interop"):
        if not sub.get(name) or (name == "Interop" and "Exif" not in sub):
            continue
        ifd = dict(sub[name])
        pointer = name == "Exif" and bool(sub.get("Interop"))
        if pointer:  # counted by piexif, which leaves the entry itself to its caller
            ifd[piexif.ExifIFD.InteroperabilityTag] = 0
        if f.tell() % 2:
            f.write(b"\0")
        at = f.tell() - start
        entries, values = _dict_to_bytes(ifd, name, at - 8 + 4)  # piexif adds 8; +4: next-IFD pointer
        if pointer:
            chunks = [entries[k:k + 12] for k in range(2, len(entries), 12)]
            chunks.append(struct.pack(">HHII", piexif.ExifIFD.InteroperabilityTag, 4, 1, 0))
            chunks.sort()  # TIFF wants entries in tag order; big-endian tags sort as bytes
            k = chunks.index(struct.pack(">HHII", piexif.ExifIFD.InteroperabilityTag, 4, 1, 0))
            interop_entry = at + 2 + 12 * k
            entries = entries[:2] + b"".join(chunks)
        f.write(entries + b"\0\0\0\0" + values)
        end = f.tell()
        if name == "Interop":
            f.seek(start + interop_entry + 8)  # the entry's value: the Interop IFD's offset
            f.write(struct.pack(">I", at))
        else:
            f.seek(start + where[name] - 8)  # the 12-byte entry: tag, type, count, value
            f.write(struct.pack(">HHII", _POINTER[name], 4, 1, at))
        f.seek(end)
