"""XMP sidecars: the culling a photographer did in Lightroom, darktable or Capture One.

A RAW's rating, colour label, pick or reject flag, title and keywords live beside it in
``IMG_0001.xmp`` (Lightroom, Capture One) or ``IMG_0001.CR2.xmp`` (darktable). ``find``
locates a photo's sidecar, ``read`` parses what srpie carries, and ``merge`` writes those
fields into the output's XMP packet, so the delivered file keeps the culling. A frame
rejected there (xmp:Rating -1, or a reject pick flag) is never enhanced; ``--min-rating N``
keeps only frames rated N or more.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from srpie_cli import first_line

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "xmpDM": "http://ns.adobe.com/xmp/1.0/DynamicMedia/",
    "darktable": "http://darktable.sf.net/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)
# darktable's colour labels, by number (src/common/colorlabels.h), as Lightroom names them
DARKTABLE_LABELS = ("Red", "Yellow", "Green", "Blue", "Purple")


def _q(name: str) -> str:
    prefix, local = name.split(":")
    return f"{{{NS[prefix]}}}{local}"


@dataclass
class Culling:
    """What a sidecar says about a frame."""

    path: Path
    rating: int | None = None  # 0-5; -1 rejected
    label: str | None = None  # "Red", "Green", ...
    pick: int | None = None  # 1 picked, -1 rejected, 0 neither (xmpDM:pick)
    title: str | None = None
    keywords: list[str] = field(default_factory=list)
    hierarchy: list[str] = field(default_factory=list)  # lr:hierarchicalSubject, "Places|France|Paris"

    @property
    def rejected(self) -> str | None:
        """Why the frame counts as rejected, or None."""
        if self.rating is not None and self.rating < 0:
            return f"rejected (xmp:Rating {self.rating} in {self.path.name})"
        if self.pick is not None and self.pick < 0:
            return f"rejected (pick flag in {self.path.name})"
        return None

    def fields(self) -> list[str]:
        """The names of what it carries, for a note."""
        have = [("rating", self.rating is not None), ("label", self.label), ("pick flag", self.pick is not None),
                ("title", self.title), ("keywords", self.keywords or self.hierarchy)]
        return [name for name, present in have if present]


def find(photo: Path, listing: dict[str, Path] | None = None) -> Path | None:
    """The sidecar of ``photo``: ``IMG_0001.CR2.xmp``, else ``IMG_0001.xmp``, else the sidecar
    of the other file of its RAW+JPEG pair (``IMG_0001.*.xmp``); any case. ``listing``: the
    folder's ``{lower-case name: path}``, to look once per folder."""
    if listing is None:
        listing = folder_listing(photo.parent)
    name = photo.name.lower()
    stem = photo.stem.lower()
    for candidate in (f"{name}.xmp", f"{stem}.xmp"):
        if candidate in listing:
            return listing[candidate]
    others = sorted(k for k in listing if k.endswith(".xmp") and k.startswith(stem + ".") and k.count(".") == 2)
    return listing[others[0]] if others else None


class Finder:
    """``find`` with each folder listed once (a shoot folder of thousands of frames)."""

    def __init__(self):
        self.listings: dict[Path, dict[str, Path]] = {}

    def __call__(self, photo: Path) -> Path | None:
        if photo.parent not in self.listings:
            self.listings[photo.parent] = folder_listing(photo.parent)
        listing = self.listings[photo.parent]
        return find(photo, listing) if listing else None


def folder_listing(folder: Path) -> dict[str, Path]:
    try:
        return {p.name.lower(): p for p in folder.iterdir() if p.suffix.lower() == ".xmp"}
    except OSError:
        return {}


def _values(el: ET.Element) -> list[str]:
    """The text of a property: its rdf:li items (Bag, Seq, Alt), or its own text."""
    items = el.findall(".//rdf:li", NS)
    if items:
        return [(li.text or "").strip() for li in items if (li.text or "").strip()]
    return [el.text.strip()] if el.text and el.text.strip() else []


def _props(root: ET.Element) -> dict[str, list[str]]:
    """Every property of every rdf:Description, attribute or element, by qualified name."""
    out: dict[str, list[str]] = {}
    for desc in root.iter(_q("rdf:Description")):
        for k, v in desc.attrib.items():
            out.setdefault(k, []).append(v)
        for child in desc:
            out.setdefault(child.tag, []).extend(_values(child))
    return out


def read(path: Path) -> Culling:
    """Parse a sidecar. ValueError with the reason when it is not XMP."""
    try:
        return parse(path.read_bytes(), path)
    except OSError as e:
        raise ValueError(f"{path.name}: not a readable XMP sidecar ({first_line(e)})") from None


def embedded(photo: Path) -> Culling | None:
    """The culling in the photo's own XMP (Lightroom writes a JPEG's rating into the JPEG), or
    None when it has none or it cannot be read. Reads the header only; RAW files have none."""
    from srpie_cli import images

    kind = images.format_of(photo)
    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(photo) as tf:
                tag = tf.pages.first.tags.get(700)
                xmp = tag.value if tag is not None else None
        elif kind in ("jpeg", "png", "webp", "heif", "avif"):
            from PIL import Image

            with Image.open(photo) as im:
                xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
        else:
            return None
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8")
        return parse(re.sub(rb"<\?xpacket[^>]*\?>", b"", xmp).strip(b"\0 \r\n\t"), photo) if xmp else None
    except Exception:  # unreadable here: the run names the photo if it cannot be decoded
        return None


def parse(data: bytes, path: Path) -> Culling:
    """What an XMP packet says (``path``: where it came from, for messages). ValueError when
    it is not XMP."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"{path.name}: not readable XMP ({first_line(e)})") from None
    props = _props(root)

    def one(name: str) -> str | None:
        v = props.get(_q(name))
        return v[0] if v else None

    c = Culling(path)
    try:
        c.rating = int(float(one("xmp:Rating"))) if one("xmp:Rating") is not None else None
        c.pick = int(one("xmpDM:pick")) if one("xmpDM:pick") is not None else None
    except ValueError:
        raise ValueError(f"{path.name}: an XMP rating or pick flag that is not a number") from None
    c.label = one("xmp:Label")
    if c.label is None and (dt := props.get(_q("darktable:colorlabels"))):
        c.label = next((DARKTABLE_LABELS[int(v)] for v in dt if v.isdigit() and int(v) < len(DARKTABLE_LABELS)), None)
    c.title = one("dc:title")
    c.keywords = props.get(_q("dc:subject"), [])
    c.hierarchy = props.get(_q("lr:hierarchicalSubject"), [])
    if not c.keywords and c.hierarchy:  # darktable writes only the hierarchy: its leaves are the keywords
        c.keywords = list(dict.fromkeys(h.split("|")[-1] for h in c.hierarchy))
    return c


def _carried(c: Culling) -> ET.Element:
    """An rdf:Description holding what srpie carries from the sidecar."""
    desc = ET.Element(_q("rdf:Description"), {_q("rdf:about"): ""})
    if c.rating is not None:
        desc.set(_q("xmp:Rating"), str(c.rating))
    if c.label:
        desc.set(_q("xmp:Label"), c.label)
    if c.pick is not None:
        desc.set(_q("xmpDM:pick"), str(c.pick))
    if c.title:
        alt = ET.SubElement(ET.SubElement(desc, _q("dc:title")), _q("rdf:Alt"))
        ET.SubElement(alt, _q("rdf:li"), {"{http://www.w3.org/XML/1998/namespace}lang": "x-default"}).text = c.title
    for name, items in (("dc:subject", c.keywords), ("lr:hierarchicalSubject", c.hierarchy)):
        if items:
            bag = ET.SubElement(ET.SubElement(desc, _q(name)), _q("rdf:Bag"))
            for item in items:
                ET.SubElement(bag, _q("rdf:li")).text = item
    return desc


CARRIED = ("xmp:Rating", "xmp:Label", "xmpDM:pick", "dc:title", "dc:subject", "lr:hierarchicalSubject")


def merge(xmp: bytes | None, c: Culling, notes: list[str]) -> bytes:
    """``xmp`` (the photo's own packet, or None) with the sidecar's fields written over the
    same fields; everything else in the packet kept."""
    root = None
    if xmp:
        try:
            root = ET.fromstring(re.sub(rb"<\?xpacket[^>]*\?>", b"", xmp).strip(b"\0 \r\n\t"))
        except ET.ParseError as e:
            notes.append(f"the photo's own XMP could not be read ({first_line(e)}): replaced by its sidecar's fields")
    if root is None:
        root = ET.Element(_q("x:xmpmeta"))
        ET.SubElement(root, _q("rdf:RDF"))
    rdf = root if root.tag == _q("rdf:RDF") else root.find("rdf:RDF", NS)
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf:RDF"))
    for desc in rdf.findall("rdf:Description", NS):
        for name in CARRIED:
            desc.attrib.pop(_q(name), None)
            for child in desc.findall(name, NS):
                desc.remove(child)
    rdf.append(_carried(c))
    body = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body + b'\n<?xpacket end="w"?>'


def carry(photo, path: Path) -> None:
    """The sidecar's rating, label, pick flag, title and keywords into the photo's XMP."""
    try:
        c = read(path)
    except ValueError as e:
        photo.notes.append(f"nothing carried from its sidecar: {e}")
        return
    photo.xmp = merge(photo.xmp, c, photo.notes)
    if fields := c.fields():
        photo.notes.append(f"{', '.join(fields)} carried from {path.name}")
