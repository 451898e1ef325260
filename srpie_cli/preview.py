"""Sheets for judging srpie before a run: one photo's before/after (bicubic 2x beside srpie 2x
at one or several strengths, and below them the same crop of each, magnified), or a contact
sheet of a whole folder, every frame before and after, captioned.

A sheet's name ends in ``_srpie_preview`` and its EXIF names srpie as the software, so a
later ``srpie enhance`` of the folder never takes it for a photo of the shoot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from srpie_cli import SrpieError, __version__, images, metadata
from srpie_cli.batch import PREVIEW_SUFFIX
from srpie_cli.inference import Settings, load

GAP = 8  # pixels between panels
LABEL_H = 18  # caption band above each panel
BG = (32, 32, 32)


def bicubic2x(photo: images.Photo, scale: int = 2) -> np.ndarray:
    """The plain bicubic upscale, the same interpolation as the network's own skip."""
    from srpie_cli.model import upsample_bicubic
    from srpie_cli.tiling import to_pixels, to_tensor

    y = upsample_bicubic(to_tensor(images.to_float(photo.pixels)), scale).clamp_(0, 1)
    return images.from_float(to_pixels(y), 8)


def crop_box(w: int, h: int, size: int, at: tuple[float, float] | None) -> tuple[int, int, int, int]:
    """A square of ``size`` (at most the image) centred at fractional ``at`` (default centre)."""
    size = min(size, w, h)
    cx, cy = at or (0.5, 0.5)
    x0 = int(round(min(max(cx * w - size / 2, 0), w - size)))
    y0 = int(round(min(max(cy * h - size / 2, 0), h - size)))
    return x0, y0, x0 + size, y0 + size


def sheet(before: np.ndarray, after: np.ndarray | list[tuple[str, np.ndarray]], crop: int = 128, zoom: int = 3,
          at: tuple[float, float] | None = None, max_side: int = 1200) -> Image.Image:
    """Compose the comparison image from 8-bit RGB arrays of the same size: ``before`` (the
    bicubic 2x) and ``after``, one array or several labelled ones (one per strength)."""
    named = [("bicubic 2x", before)] + ([("srpie 2x", after)] if isinstance(after, np.ndarray) else list(after))
    h, w = named[0][1].shape[:2]
    box = crop_box(w, h, crop, at)
    f = min(1.0, max_side / max(w, h))
    small = (max(1, round(w * f)), max(1, round(h * f)))
    side = box[2] - box[0]
    col_w = max(small[0], side * zoom)
    top_h = LABEL_H + small[1]
    out = Image.new("RGB", (len(named) * (col_w + GAP) + GAP, top_h + LABEL_H + side * zoom + 3 * GAP), BG)
    draw = ImageDraw.Draw(out)
    for i, (name, a) in enumerate(named):
        x = GAP + i * (col_w + GAP)
        im = Image.fromarray(a)
        draw.text((x, GAP + 2), name, fill=(230, 230, 230))
        out.paste(im.resize(small, Image.Resampling.LANCZOS) if f < 1 else im, (x, GAP + LABEL_H))
        # where the crop comes from
        r = [round(v * f) for v in box]
        draw.rectangle((x + r[0], GAP + LABEL_H + r[1], x + r[2] - 1, GAP + LABEL_H + r[3] - 1), outline=(255, 200, 0))
        y = 2 * GAP + top_h
        draw.text((x, y + 2), f"{name}, crop x{zoom}", fill=(230, 230, 230))
        out.paste(im.crop(box).resize((side * zoom, side * zoom), Image.Resampling.NEAREST), (x, y + LABEL_H))
    return out


def _save(img: Image.Image, output: Path, fmt: str) -> None:
    """Atomically, with EXIF naming srpie as the software (``images.made_by_srpie``)."""
    exif = Image.Exif()
    exif[metadata.SOFTWARE_TAG] = f"srpie {__version__} preview"
    kw = {"quality": 92} if fmt == "jpeg" else {}
    images.atomic_write(output, lambda f: img.save(f, format=fmt.upper(), exif=exif.tobytes(), **kw))


def _sheet_format(output: Path, photo: Path | None = None) -> str:
    if photo is not None and output.resolve() == photo.resolve():
        raise SrpieError(f"{output}: would overwrite the photo")
    fmt = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(output.suffix.lower())
    if fmt is None:
        raise SrpieError(f"{output}: the preview is written as .png or .jpg")
    return fmt


def _strength_name(s: float) -> str:
    return f"srpie 2x, strength {s:g}"


def preview(*, photo: Path, output: Path | None = None, settings: Settings = Settings(), crop: int = 128,
            zoom: int = 3, at: tuple[float, float] | None = None, log=lambda m: None,
            strengths: list[float] | None = None) -> Path:
    """Write the comparison sheet for ``photo`` (PNG or JPEG by the output's extension) and
    return its path; default ``<name>_srpie_preview.png`` beside the photo. ``strengths``:
    one srpie panel per strength, side by side (default: the settings' strength alone)."""
    photo = Path(photo)
    output = Path(output) if output else photo.with_name(f"{photo.stem}{PREVIEW_SUFFIX}.png")
    fmt = _sheet_format(output, photo)
    src = images.read_photo(photo, settings.max_megapixels)
    panels = []
    for s in strengths or [settings.strength]:
        enhancer = load(replace(settings, strength=s), log, src.megapixels)
        after = enhancer.enhance(src)
        panels.append((_strength_name(s) if strengths else "srpie 2x", images.from_float(images.to_float(after.pixels), 8)))
        del after
    before = bicubic2x(src, enhancer.model.scale)
    img = sheet(before, panels, crop=crop * enhancer.model.scale, zoom=zoom, at=at)
    _save(img, output, fmt)
    return output


CELL = 240  # side of a frame's panels on a contact sheet, pixels
COLUMNS = 3  # frames (before and after) per row of a contact sheet


def contact_sheet(*, folder: Path, output: Path | None = None, settings: Settings = Settings(),
                  log=lambda m: None, cell: int = CELL, columns: int = COLUMNS) -> tuple[Path, list[str]]:
    """One sheet of every frame below ``folder``: before (bicubic) and after (srpie), captioned
    with the name, model and strength. The network runs on each frame reduced to ``cell`` /
    2 pixels (its output fills the cell): the sheet judges colour and tone across a shoot;
    ``preview PHOTO`` judges detail. Returns its path and what was left out, with why.
    Default path: ``<folder>_srpie_preview.jpg`` beside the folder."""
    from srpie_cli.batch import FileResult, walk

    folder = Path(folder)
    output = Path(output) if output else folder.resolve().parent / f"{folder.resolve().name}{PREVIEW_SUFFIX}.jpg"
    fmt = _sheet_format(output)
    left_out: list[FileResult] = []
    frames = [f for f in walk(folder, set(), left_out) if not images.made_by_srpie(f)]
    if not frames:
        raise SrpieError(f"{folder}: no photos to preview")
    enhancer = load(settings, log)
    name = enhancer.meta.get("name") or Path(settings.model).stem
    caption = f"{name}, strength {settings.strength:g}"
    cells = []
    for f in frames:
        try:
            src = images.read_photo(f, settings.max_megapixels)
        except SrpieError as e:
            left_out.append(FileResult(str(f), "failed", reason=str(e)))
            continue
        small = _reduced(src, max(8, cell // enhancer.model.scale))
        after = images.from_float(images.to_float(enhancer.enhance(small).pixels), 8)
        cells.append((f.relative_to(folder).as_posix(), bicubic2x(small, enhancer.model.scale), after))
    img = _grid(cells, caption, cell, columns)
    _save(img, output, fmt)
    return output, [f"{r.input}: {r.reason}" for r in left_out]


def _reduced(photo: images.Photo, side: int) -> images.Photo:
    """The photo at most ``side`` pixels on its long side, 8-bit (Lanczos)."""
    im = Image.fromarray(images.to8(photo.pixels))
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    return images.Photo(np.asarray(im), source_format=photo.source_format)


def _grid(cells: list[tuple[str, np.ndarray, np.ndarray]], caption: str, cell: int, columns: int) -> Image.Image:
    """Frames in rows of ``columns``: before | after, the name and the caption below."""
    pair_w = 2 * cell + GAP
    rows = -(-len(cells) // columns)
    cell_h = cell + 2 * LABEL_H
    out = Image.new("RGB", (columns * (pair_w + 2 * GAP) + GAP, rows * (cell_h + 2 * GAP) + GAP), BG)
    draw = ImageDraw.Draw(out)
    for k, (name, before, after) in enumerate(cells):
        x0 = GAP + (k % columns) * (pair_w + 2 * GAP)
        y0 = GAP + (k // columns) * (cell_h + 2 * GAP)
        for i, a in enumerate((before, after)):
            im = Image.fromarray(a)
            im.thumbnail((cell, cell), Image.Resampling.LANCZOS)
            out.paste(im, (x0 + i * (cell + GAP) + (cell - im.width) // 2, y0 + (cell - im.height) // 2))
        draw.text((x0, y0 + cell + 2), f"{name}  (before | after)", fill=(230, 230, 230))
        draw.text((x0, y0 + cell + LABEL_H), caption, fill=(170, 170, 170))
    return out
