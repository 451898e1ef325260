"""A before/after sheet for judging one photo: bicubic 2x beside srpie 2x, and below them the
same crop of each, magnified, so detail and tone can be compared at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from srpie_cli import SrpieError, images
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


def sheet(before: np.ndarray, after: np.ndarray, crop: int = 128, zoom: int = 3,
          at: tuple[float, float] | None = None, max_side: int = 1200) -> Image.Image:
    """Compose the comparison image from two 8-bit RGB arrays of the same size."""
    h, w = after.shape[:2]
    box = crop_box(w, h, crop, at)
    f = min(1.0, max_side / max(w, h))
    small = (max(1, round(w * f)), max(1, round(h * f)))
    panels = [Image.fromarray(a).resize(small, Image.Resampling.LANCZOS) if f < 1 else Image.fromarray(a)
              for a in (before, after)]
    side = box[2] - box[0]
    crops = [Image.fromarray(a).crop(box).resize((side * zoom, side * zoom), Image.Resampling.NEAREST)
             for a in (before, after)]
    col_w = max(small[0], side * zoom)
    top_h = LABEL_H + small[1]
    out = Image.new("RGB", (2 * col_w + 3 * GAP, top_h + LABEL_H + side * zoom + 3 * GAP), BG)
    draw = ImageDraw.Draw(out)
    for i, (name, panel, c) in enumerate(zip(("bicubic 2x", "srpie 2x"), panels, crops)):
        x = GAP + i * (col_w + GAP)
        draw.text((x, GAP + 2), name, fill=(230, 230, 230))
        out.paste(panel, (x, GAP + LABEL_H))
        # where the crop comes from
        r = [round(v * f) for v in box]
        draw.rectangle((x + r[0], GAP + LABEL_H + r[1], x + r[2] - 1, GAP + LABEL_H + r[3] - 1), outline=(255, 200, 0))
        y = 2 * GAP + top_h
        draw.text((x, y + 2), f"{name}, crop x{zoom}", fill=(230, 230, 230))
        out.paste(c, (x, y + LABEL_H))
    return out


def preview(*, photo: Path, output: Path | None = None, settings: Settings = Settings(), crop: int = 128,
            zoom: int = 3, at: tuple[float, float] | None = None, log=lambda m: None) -> Path:
    """Write the comparison sheet for ``photo`` (PNG or JPEG by the output's extension) and
    return its path; default ``<name>_srpie_preview.png`` beside the photo."""
    photo = Path(photo)
    output = Path(output) if output else photo.with_name(f"{photo.stem}{PREVIEW_SUFFIX}.png")
    if output.resolve() == photo.resolve():
        raise SrpieError(f"{output}: would overwrite the photo")
    fmt = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(output.suffix.lower())
    if fmt is None:
        raise SrpieError(f"{output}: the preview is written as .png or .jpg")
    src = images.read_photo(photo, settings.max_megapixels)
    enhancer = load(settings, log, src.megapixels)
    after = enhancer.enhance(src)
    before = bicubic2x(src, enhancer.model.scale)
    a8 = images.from_float(images.to_float(after.pixels), 8)
    img = sheet(before, a8, crop=crop * enhancer.model.scale, zoom=zoom, at=at)
    images.atomic_write(output, lambda f: img.save(f, format=fmt.upper(), **({"quality": 92} if fmt == "jpeg" else {})))
    return output
