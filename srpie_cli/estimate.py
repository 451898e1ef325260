"""What a run will cost before it starts: each photo's size from its header, the tiles the
network will run on it, and a short calibration of the chosen model on this machine.

The network's time for one photo is ``a * calls + b * pixels``: ``calls`` the forward passes
its tile layout needs (``tiling.spans``, batches of ``TileOptions.tile_batch``), ``pixels``
the input pixels of all its tiles, overlaps and reflection padding included. ``a`` and ``b``
come from running the loaded model on two synthetic images (a small one, and one full tile),
a few seconds; they are kept under the user's cache
folder (``$XDG_CACHE_HOME/srpie``) keyed by model file, device, threads, torch version and
tile, so the next estimate on this machine needs no network at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from srpie_cli import SrpieError, defaults, first_line, images

# torch.compile (a CPU run of defaults.COMPILE_MIN_MP or more) saves about a third of the time
# per megapixel and costs tens of seconds once (benchmarks/RESULTS.md); the calibration runs eager
COMPILED_SHARE = 0.67
# a compiled bfloat16 copy against eager bfloat16 autocast, one 192 px tile of srpie-x2-fast on
# a 2-core AVX512-BF16 CPU: 0.182 s against 1.36 s (accel.py; a busy machine, one measurement)
COMPILED_SHARE_BF16 = 0.134
# int8 convolutions in the compiled tiles (int8.py): a 24 MP photo of srpie-x2-fast through the
# network in 34.8 s against 46.0 in bfloat16 in one run, 36.3 against 42.7 in another
# (benchmarks/RESULTS.md)
COMPILED_SHARE_INT8 = COMPILED_SHARE_BF16 * 0.8
COMPILE_SECONDS = 30.0
SMALL = 40  # side of the small calibration image, input pixels
CALIBRATION_SECONDS = 4.0  # a timing is repeated (best of three) while the repeats cost less than half this


@dataclass(frozen=True)
class Cost:
    """Seconds per forward pass (``a``), per input pixel of a tile (``b``), to load the model;
    ``batch``: tiles per forward pass (1 on a CPU, where ``accel.Prepared`` runs a batch tile
    by tile)."""

    a: float
    b: float
    load: float = 0.0
    batch: int = 1
    compiled_share: float = COMPILED_SHARE  # a compiled run's time over the eager one timed


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/srpie`` (``~/.cache/srpie``): what can be measured again at will."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "srpie"


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels. SrpieError with the
    reason when the header cannot be read."""
    kind = images.format_of(path)
    try:
        if kind == "raw":
            import rawpy

            with rawpy.imread(str(path)) as raw:
                s = raw.sizes
                return (s.height, s.width) if s.flip in (5, 6) else (s.width, s.height)
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.pages.first
                return int(page.imagewidth), int(page.imagelength)
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise SrpieError(f"{path}: header unreadable ({type(e).__name__}: {first_line(e)})") from None


def layout(w: int, h: int, tile: int, overlap: int, tile_batch: int, fit: bool = True) -> tuple[int, int]:
    """(forward passes, input pixels of all tiles) of a ``w`` x ``h`` photo, as
    ``tiling.run_tiled`` cuts it."""
    from srpie_cli.tiling import spans

    margin = min(overlap, h - 1, w - 1)
    ys = spans(h + 2 * margin, tile, overlap, fit)
    xs = spans(w + 2 * margin, tile, overlap, fit)
    n = len(ys) * len(xs)
    return math.ceil(n / max(1, tile_batch)), n * (ys[0][1] - ys[0][0]) * (xs[0][1] - xs[0][0])


def _model_key(settings) -> str:
    from srpie_cli.weights import resolve

    path = resolve(settings.model)
    if path is None:
        return f"{settings.model} (untrained)"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_key(settings, device: str, threads: int) -> str:
    import torch

    from srpie_cli.tiling import TileOptions

    parts = [_model_key(settings), device, threads, torch.__version__, settings.tile, settings.overlap,
             settings.half, TileOptions().tile_batch, settings.precision, settings.scale]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _cache_file() -> Path:
    return cache_dir() / "calibration.json"


def cached(key: str) -> Cost | None:
    try:
        entry = json.loads(_cache_file().read_text()).get(key)
        return Cost(**entry) if isinstance(entry, dict) else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def remember(key: str, cost: Cost) -> None:
    """Keep a calibration; a cache that cannot be written only costs the next run a few seconds."""
    path = _cache_file()
    try:
        doc = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    doc[key] = asdict(cost)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(doc, indent=1).encode()
        images.atomic_write(path, lambda f: f.write(data))
    except OSError:
        pass


def calibrate(enhancer, load_seconds: float = 0.0) -> Cost:
    """Time the loaded network on a small one-tile image and on one full tile (eager: the
    compiled form would compile first), and solve for ``Cost``. Each is timed again while that
    is cheap (the best of up to three), so one hiccup of a busy machine does not count."""
    import torch

    from srpie_cli.tiling import TileOptions, upscale

    prepared = enhancer.model  # eager, with the precision the run uses (bfloat16 autocast where it does)
    model = prepared.eager() if hasattr(prepared, "eager") else prepared
    share = COMPILED_SHARE_BF16 if getattr(prepared, "bf16", False) else COMPILED_SHARE
    s = enhancer.settings
    tile = s.tile or 0
    big = tile - 2 * s.overlap if tile > 2 * s.overlap + 2 * SMALL else 256
    opts = TileOptions(tile=tile, overlap=s.overlap, half=s.half)
    gen = torch.Generator().manual_seed(0)

    def timed(side: int) -> float:
        x = torch.rand(1, 3, side, side, generator=gen)
        best, spent = math.inf, 0.0
        for _ in range(3):
            t = time.perf_counter()
            upscale(model, x, opts)
            if enhancer.device.type == "cuda":
                torch.cuda.synchronize()
            took = time.perf_counter() - t
            best, spent = min(best, took), spent + took
            if spent > CALIBRATION_SECONDS / 2:
                break
        return best

    timed(SMALL)  # the first passes allocate and warm up
    t1, t2 = timed(SMALL), timed(big)
    (c1, p1), (c2, p2) = (layout(n, n, tile, s.overlap, 1) for n in (SMALL, big))  # one tile each
    det = c1 * p2 - c2 * p1
    a = (t1 * p2 - t2 * p1) / det if det else 0.0
    b = (c1 * t2 - c2 * t1) / det if det else t2 / p2
    if a < 0 or b <= 0:  # timing noise on a busy machine: all of it per pixel
        a, b = 0.0, t2 / p2
    return Cost(a, b, load_seconds, 1 if enhancer.device.type == "cpu" else opts.tile_batch, share)


def seconds(cost: Cost, sizes, settings, tile: int, compiled: bool) -> float:
    """The network's seconds for photos of ``sizes`` ((w, h) each), plus loading the model."""
    total = 0.0
    for w, h in sizes:  # a compiled run keeps one tile shape a photo (tiling.spans), an eager one fits its tiles
        calls, pixels = layout(w, h, tile, settings.overlap, cost.batch, fit=not compiled)
        total += cost.a * calls + cost.b * pixels
    total *= 4 if settings.tta else 1
    if compiled:
        total = total * cost.compiled_share + COMPILE_SECONDS
    return total + cost.load


def cost_for(settings, megapixels: float, warn=lambda m: None) -> tuple[Cost, bool, int, str]:
    """The calibration for ``settings`` on this machine: (cost, whether the run compiles, the
    tile it runs, how it was found). Cached; else the model is loaded and timed."""
    import torch

    from srpie_cli.inference import load, pick_precision
    from srpie_cli.tiling import default_tile, pick_device

    device = pick_device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    precision = pick_precision(settings, device, lambda m: None)
    tile = settings.tile if settings.tile is not None else default_tile(device, precision)
    compiled = {"on": True, "off": False}.get(settings.compile, device.type == "cpu"
                                                and megapixels >= defaults.COMPILE_MIN_MP)
    # keyed as a run keys it: the tile and the precision resolved as ``inference.load`` does
    key = cache_key(replace(settings, tile=tile, half=precision == "float16", precision=precision), str(device), threads)
    if (cost := cached(key)) is not None:
        return cost, compiled, tile, "calibration cached"

    # imported before the clock starts: a real run has them already
    import srpie_cli.accel
    import srpie_cli.weights  # noqa: F401

    t = time.perf_counter()
    enhancer = load(replace(settings, compile="off"), warn)
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    cost = calibrate(enhancer, loaded)  # eager bfloat16 (int8 runs in compiled tiles only)
    if precision == "int8":
        cost = replace(cost, compiled_share=COMPILED_SHARE_INT8)
    remember(key, cost)
    return cost, compiled, tile, f"calibrated now in {time.perf_counter() - t:.1f} s"
