"""Inference on one photo: the settings, a model loaded for them, and the per-photo work.

``load(settings)`` gives an ``Enhancer``: the network on its device, ready (threads set, the
tile chosen for the device, compiled where it pays). ``Enhancer.enhance(photo)`` runs it on
one decoded photo; ``Enhancer.process(src, dst, fmt)`` is the whole per-photo job (decode,
check, enhance, write) and the one function a worker process or a cluster actor calls. The
batch (``batch.py``) decides which files to process; this module never walks folders.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from srpie_cli import SrpieError, defaults, images
from srpie_cli.images import Photo


@dataclass(frozen=True)
class Settings:
    """How every photo of a run is made (defaults: ``defaults.py``). ``model`` None: the
    device's default (``defaults.CPU_MODEL`` on a CPU, ``defaults.MODEL`` on CUDA), named on
    creation, so the report, the estimate and every worker see the model that runs."""

    model: str | None = None
    device: str = defaults.DEVICE
    tile: int | None = None  # None: tiling.default_tile (by device and precision)
    compile: str = defaults.COMPILE  # torch.compile: "on", "off", or "auto"
    overlap: int = defaults.OVERLAP
    tta: bool = False
    half: bool = False
    quality: int = defaults.QUALITY
    max_megapixels: float = defaults.MAX_MEGAPIXELS
    threads: int = 0  # CPU threads for the network (0: PyTorch's default, all cores)
    strength: float = defaults.STRENGTH  # how much of the model's look to apply (model.with_strength)
    scale: int = defaults.SCALE  # output size: the model's (2x), or 1: the look alone at the input's size
    precision: str = defaults.PRECISION  # "auto", "float32", "bfloat16" or "int8" (load resolves auto)
    # tiles cut, blended and rounded to the output's bits on the network's device, the photo
    # crossing the bus once each way (tiling.upload); None: on any device but the CPU (load
    # resolves it); False: on the host, each batch of tiles copied over and back (the path before)
    on_device: bool | None = None
    io_threads: int = 0  # threads decoding and encoding beside the network (0: defaults.IO_THREADS by device)

    def __post_init__(self):
        if self.model is None:
            object.__setattr__(self, "model", default_model(self.device))


def default_model(device: str) -> str:
    """The model a run on ``device`` gets when the user names none (``defaults.CPU_MODEL`` on a
    CPU, ``defaults.MODEL`` on CUDA); torch is imported only for "auto"."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return defaults.CPU_MODEL if device == "cpu" else defaults.MODEL


def pick_precision(settings: Settings, device, warn: Callable[[str], None]) -> str:
    """What the network runs in: "float32", "bfloat16", "int8" or "float16" (``--half``, CUDA
    only). auto: on a CPU, int8 where it runs natively (``int8.vnni_support``) and the model
    has a calibration (``int8.calibration_file``), else bfloat16 where that runs natively
    (``accel.bf16_support``), else float32; on CUDA ``--half`` decides, as before. A precision
    the device or model lacks: the next one down (int8, bfloat16, float32), said. int8 is
    bfloat16 with the feature convolutions of compiled tiles in int8 (``int8.py``)."""
    from srpie_cli.accel import bf16_support
    from srpie_cli.int8 import calibration_file, vnni_support

    asked = settings.precision
    if asked not in defaults.PRECISIONS:
        raise SrpieError(f"unknown precision {asked!r}: use {', '.join(defaults.PRECISIONS)}")
    if settings.half and asked != "auto":
        warn(f"--half is ignored with --precision {asked}")
    if settings.half and asked == "auto" and device.type == "cuda":
        return "float16"
    if settings.half and device.type != "cuda":
        warn("--half needs a CUDA device; ignored on the CPU")
    lacks = bf16_support(device) if asked != "float32" else "float32 asked for"
    if asked in ("auto", "int8") and not lacks:
        no_int8 = ("int8 runs on the CPU only" if device.type != "cpu" else vnni_support()
                   or (None if calibration_file(settings.model) else
                       f"{settings.model} has no int8 calibration (srpie calibrate makes one)"))
        if no_int8 is None:
            return "int8"
        if asked == "int8":
            warn(f"--precision int8: {no_int8}; running in bfloat16")
    if asked == "int8":
        asked = "bfloat16"  # the next one down
    if asked == "bfloat16" and lacks:
        warn(f"--precision {settings.precision}: {lacks}; running in float32")
    auto_ok = asked == "auto" and device.type == "cpu"
    return "bfloat16" if not lacks and (asked == "bfloat16" or auto_ok) else "float32"


@dataclass
class Done:
    """What one processed photo reports: its size, where the time went, and notes (metadata
    not carried over, decoder remarks, retries)."""

    megapixels: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Enhancer:
    """A model ready on its device with the settings it runs with.

    Args:
        model: the prepared network (``accel.prepare``).
        meta: the weights file's metadata (name, scores, training).
        device: where it runs.
        settings: the run's settings, with the tile resolved for the device.
    """

    def __init__(self, model, meta: dict, device, settings: Settings):
        self.model, self.meta, self.device, self.settings = model, meta, device, settings

    def enhance(self, photo: Photo, on_retry: Callable[[str], None] | None = None,
                on_tile: Callable[[int, int], None] | None = None) -> Photo:
        """The network on the pixels; see ``enhance_photo``."""
        return enhance_photo(self.model, photo, self.settings, on_retry=on_retry, on_tile=on_tile)

    def decode(self, src: Path) -> Photo:
        return images.read_photo(src, self.settings.max_megapixels)

    def check(self, dst: Path, photo: Photo, fmt: str) -> None:
        """Whether the output can be written (``images.check_writable``), before the network."""
        images.check_writable(dst, photo, fmt, self.settings.quality)

    def process(self, src: Path, dst: Path, fmt: str, side: Path | None = None) -> Done:
        """Decode ``src`` (with its XMP sidecar ``side`` carried into its XMP), check that its
        output can be written, enhance it and write ``dst`` atomically. Raises SrpieError (or
        OSError for the disk) with the reason; returns what to report. Idempotent: running it
        twice writes the same file."""
        from srpie_cli import sidecar

        done = Done()
        t = time.perf_counter()
        photo = self.decode(src)
        if side is not None:
            sidecar.carry(photo, side)
        done.megapixels, done.timings["decode"] = round(photo.megapixels, 3), round(time.perf_counter() - t, 3)
        done.notes += photo.notes
        self.check(dst, photo, fmt)
        t = time.perf_counter()
        out = self.enhance(photo, on_retry=done.notes.append)
        done.timings["enhance"] = round(time.perf_counter() - t, 3)
        del photo
        t = time.perf_counter()
        done.notes += images.write_photo(dst, out, fmt, self.settings.quality)
        done.timings["encode"] = round(time.perf_counter() - t, 3)
        return done


def load(settings: Settings, warn: Callable[[str], None] = lambda m: None, megapixels: float = 0.0) -> Enhancer:
    """The model of ``settings`` ready for inference: threads set, the tile chosen for the
    device, the precision resolved (``pick_precision``: bfloat16 on a CPU that has it, int8
    convolutions where it has VNNI and the model a calibration, read here before ``--strength``
    edits the weights; ``--half`` dropped with a warning off CUDA), torch.compile on a CPU when the run is large
    enough (``megapixels``), an untrained model announced through ``warn``, and where the tiles
    are blended (``on_device``) and how many threads decode and encode (``io_threads``) chosen
    for the device. ``meta`` gains ``precision`` and ``default_for`` (the device type when the
    model is its default)."""
    import torch  # imported here: planning and --help stay fast

    from srpie_cli.accel import prepare
    from srpie_cli.model import with_strength
    from srpie_cli.tiling import default_tile, pick_device
    from srpie_cli.weights import load_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    model, meta = load_model(settings.model)
    asked, precision = settings.precision, pick_precision(settings, device, warn)
    # read before --strength changes the look's last layers: a calibration is for the file's weights
    calibration = _calibration(settings, model, warn) if precision == "int8" else None
    with_strength(model, settings.strength)
    settings = replace(settings, half=precision == "float16", precision=precision)
    meta = {**meta, "precision": precision, "default_for": device.type
            if settings.model == default_model(device.type) else None}
    if settings.tile is None:
        settings = replace(settings, tile=default_tile(device, precision))
    if settings.on_device is None:
        settings = replace(settings, on_device=device.type != "cpu")
    if not settings.io_threads:
        settings = replace(settings, io_threads=defaults.IO_THREADS.get(device.type, defaults.IO_THREADS["cpu"]))
    auto = device.type == "cpu" and megapixels >= defaults.COMPILE_MIN_MP
    want = {"on": True, "off": False}.get(settings.compile, auto)
    if precision == "int8" and calibration is not None and not want and asked == "int8":
        warn("--precision int8: int8 runs in compiled tiles only (--compile on); running in bfloat16")
    model = prepare(model, device, compile=want, on_fallback=warn, bf16=precision in ("bfloat16", "int8"),
                    int8=calibration)
    if precision == "int8" and not model.runs_int8:  # no calibration, not compiled, or it did not fit: said
        precision = "bfloat16"
        settings, meta = replace(settings, precision=precision), {**meta, "precision": precision}
    if meta.get("untrained"):
        warn(f"model {meta.get('name')} is UNTRAINED (its weights file is not installed): the output "
             "is a plain bicubic 2x upscale, not an enhancement")
    return Enhancer(model, meta, device, settings)


def _calibration(settings: Settings, model, warn: Callable[[str], None]) -> list[dict] | None:
    """The int8 calibration ``model`` runs with under ``settings``, or None (said why)."""
    from srpie_cli.int8 import calibration_file, read
    from srpie_cli.model import penet_is_look

    try:
        calibration = read(calibration_file(settings.model), model)
    except ValueError as e:
        warn(f"not running int8: {e}; bfloat16 instead")
        return None
    if calibration is not None and settings.strength != 1 and penet_is_look(model):
        # --strength scales PENet's output, which the tiles' int8 convolutions read
        warn("not running int8: its calibration is for --strength 1 on this model; bfloat16 instead")
        return None
    return calibration


def enhance_photo(model, photo: Photo, settings: Settings, on_retry: Callable[[str], None] | None = None,
                  on_tile: Callable[[int, int], None] | None = None) -> Photo:
    """The network on the pixels (2x, enhanced); alpha upscaled bicubic, not enhanced. A
    black-and-white photo (``images.is_monochrome``) comes back neutral grey: the output's
    luma (BT.601) in all three channels, so no model can tint it. SrpieError when the
    network's output is not finite (broken weights): no black photo is written.
    ``on_tile(done, total)``: progress within the photo, in tiles (``tiling.upscale``).
    ``settings.on_device`` (None: unless the network is on the CPU): the photo uploaded as it
    is, worked on and rounded to its bits on the network's device, and downloaded once
    (``tiling.upload``, ``download``; on a CPU the same numbers as the host path); else
    converted and rounded on the host."""
    import torch

    from srpie_cli.model import upsample_bicubic
    from srpie_cli.tiling import TileOptions, download, to_pixels, to_tensor, upload

    # a compiled network keeps one of four tile shapes (each new shape compiles again:
    # tiling.spans); eager ones fit. A photo that does not fill a tile both ways would be a
    # shape of its own: it runs eager, so a folder of small photos of many sizes never
    # compiles once per size.
    compiled = getattr(model, "compiled", False)
    if compiled and not fills_tile(photo.size, settings.tile, settings.overlap):
        model, compiled = model.eager(), False
    opts = TileOptions(tile=settings.tile, overlap=settings.overlap, tta=settings.tta, half=settings.half,
                       fit=not compiled)
    device = next(model.parameters()).device
    on_device = device.type != "cpu" if settings.on_device is None else settings.on_device
    if on_device:
        x = upload(photo.pixels, device)
    else:
        x = to_tensor(images.to_float(photo.pixels))
    y = at_scale(model, x, settings.scale, opts, on_retry=on_retry, on_tile=on_tile, overwrite=True)  # x is ours
    # the sum, not isfinite(y): that makes a full-size temporary (1.6 GB at 24 MP, the run's
    # peak); a NaN anywhere makes the sum NaN, and y is clamped, so no infinity is left
    if not bool(torch.isfinite(y.sum())):
        raise SrpieError("the network's output is not finite (NaN or infinity): the model's weights are broken")
    if images.is_monochrome(photo.pixels):  # in place: a 24 MP output is 1.2 GB of float32
        r, g, b = y[0]
        r.mul_(0.299).add_(g, alpha=0.587).add_(b, alpha=0.114)
        g.copy_(r)
        b.copy_(r)
    if on_device:
        pixels = download(y, photo.bits)
    else:
        pixels = images.from_float(to_pixels(y), photo.bits, overwrite=True)  # y is ours
    del y, x
    alpha = None
    if photo.alpha is not None and settings.scale == 1:
        alpha = photo.alpha
    elif photo.alpha is not None:
        a = torch.from_numpy(images.to_float(photo.alpha))[None, None]
        alpha = images.from_float(upsample_bicubic(a, model.scale)[0, 0].numpy(), photo.bits)
    return replace(photo, pixels=pixels, alpha=alpha, notes=list(photo.notes))


def at_scale(model, x, scale: int, opts, overwrite: bool = False, **kw):
    """The output at ``scale``: the model's own (``tiling.upscale``), or 1: the look alone at
    the input's size. A global look (``model.GlobalLook``) is applied directly
    (``tiling.apply_look``); another model's look is its 2x output downscaled (antialiased),
    the same look at a quarter of the pixels written. ``overwrite``: ``x`` is the caller's to
    lose (``tiling.upscale``)."""
    import torch
    import torch.nn.functional as F

    from srpie_cli.tiling import apply_look, look_first, upscale

    if scale == model.scale:
        return upscale(model, x, opts, overwrite=overwrite, **kw)
    if scale != 1:
        raise SrpieError(f"--scale {scale}: this model writes x{model.scale} or, with --scale 1, the input's size")
    look = look_first(model)[1]
    if look is None:
        y = upscale(model, x, opts, **kw)
        return F.interpolate(y, size=x.shape[-2:], mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    with torch.inference_mode():
        return apply_look(look, x, overwrite)


def fills_tile(size: tuple[int, int], tile: int | None, overlap: int) -> bool:
    """Whether a photo of ``size`` (w, h) is tiled with tiles of exactly ``tile`` on both
    axes (``tiling.run_tiled`` pads each side by up to ``overlap``)."""
    w, h = size
    margin = min(overlap, h - 1, w - 1)
    return bool(tile) and tile < w + 2 * margin and tile < h + 2 * margin
