"""Tiled inference with blended overlaps.

A photo is far larger than one forward pass can hold (a 24 MP frame is 1.5 G floats per
64-channel feature map), so the network runs tile by tile. Tiles overlap; each tile's output
is weighted by a window that ramps smoothly to ~0 at borders shared with a neighbour, and
``sum(tile * w) / sum(w)`` joins them: no seams, no tone steps. The image is padded by
reflection first, so the network's own zero padding never touches a real image edge.

The work happens where the image is. On a GPU ``upload`` puts the photo there once (8 or
16 bits, converted to float there) and everything else stays on the device: the reflection
padding, cutting the tiles, the blend weights, the weighted sum and its normalisation, the
clamp, and ``download``'s rounding to the output's bit depth; one array comes back. An
image left on the host with the model on a GPU (the path before, kept for benchmarks and
callers that hold host tensors) copies every batch of tiles over and its results back. On a
CPU both are the same code.

Pure functions from tensor to tensor; errors propagate (CUDA out-of-memory halves the tile
and starts the image again, and says so through ``on_retry``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srpie_cli import SrpieError, defaults
from srpie_cli.model import context_thumbnail, wants_context

DEFAULT_TILE = defaults.CUDA_TILE  # input pixels; tiles of the same size run as one batch
CPU_TILE = defaults.CPU_TILE  # smaller tiles run faster per pixel on a CPU (defaults.py)
DEFAULT_OVERLAP = defaults.OVERLAP
MIN_TILE = 32  # below this an out-of-memory retry gives up
# torch.OutOfMemoryError is new in 2.5; older versions raise torch.cuda.OutOfMemoryError
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


@dataclass(frozen=True)
class TileOptions:
    tile: int = DEFAULT_TILE  # 0: the whole image in one pass
    overlap: int = DEFAULT_OVERLAP
    tile_batch: int = defaults.TILE_BATCH  # tiles per forward pass
    tta: bool = False  # self-ensemble over the four flips (the paper's "Deep SR-PIE+")
    half: bool = False  # float16 autocast (CUDA only)
    fit: bool = True  # shrink tiles to the smallest size that keeps their count (False: one shape always)


def to_tensor(a) -> torch.Tensor:
    """The one boundary from pixels to the network: H x W x 3 float32 (numpy) -> 1 x 3 x H x W."""
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def to_pixels(y: torch.Tensor):
    """And back: 1 x 3 x H x W (CPU) -> H x W x 3 float32 numpy (a view: no copy)."""
    return y[0].permute(1, 2, 0).numpy()


def upload(pixels, device: torch.device) -> torch.Tensor:
    """H x W x 3 uint8 or uint16 pixels (numpy) -> 1 x 3 x H x W float32 in [0, 1] on
    ``device``: the integers cross the bus (a quarter of the float bytes for 8-bit, pinned and
    asynchronous on CUDA) and become float there, rounded as ``images.to_float`` rounds."""
    top = {torch.uint8: 255.0, torch.uint16: 65535.0}
    with warnings.catch_warnings():  # a decoded photo is read-only, and nothing here writes to it
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        a = torch.from_numpy(pixels)
    if a.dtype not in top:
        raise TypeError(f"upload takes uint8 or uint16 pixels, not {a.dtype}")
    if device.type == "cuda":
        a = a.pin_memory()
    x = a.to(device, non_blocking=True).permute(2, 0, 1)[None]
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(top[a.dtype])  # planar, as to_tensor


def download(y: torch.Tensor, bits: int):
    """1 x 3 x H x W float on any device -> H x W x 3 uint8 or uint16 numpy (C order),
    clamped to [0, 1] and rounded to nearest where ``y`` is, as ``images.from_float`` rounds:
    a 24 MP photo's 2x output comes back as 288 MB of bytes, not 1.2 GB of floats. ``y`` is
    overwritten."""
    q = y[0].clamp_(0.0, 1.0).mul_(255.0 if bits == 8 else 65535.0).round_()
    return q.to(torch.uint8 if bits == 8 else torch.uint16).permute(1, 2, 0).contiguous().cpu().numpy()


FIT_ALIGN = 8  # fitted tiles stay multiples of 8 (PENet works at 1/8 and would pad otherwise)
# A compiled network keeps one window per axis; it may be a step below the tile where that
# covers the axis with less slack (a 24 MP photo in 352 px tiles: 26.8 MP through the network;
# in 320 px ones 28.7). Steps of 32 keep the sides multiples of 32, at which oneDNN's kernels
# ran at the same speed per pixel from 288 to 352 (benchmarks/RESULTS.md). Two sizes an axis
# make at most four tile shapes, each compiled once, whatever the sizes of a shoot's photos.
SHAPE_STEP = 32


def _windows(length: int, tile: int, overlap: int) -> int:
    return math.ceil((length - overlap) / (tile - overlap))


def spans(length: int, tile: int, overlap: int, fit: bool = False) -> list[tuple[int, int]]:
    """Cover [0, length) with equal windows of at most ``tile`` that overlap by at least
    ``overlap``; the last window is aligned to the end; a short axis gives one window.

    The fewest windows of ``tile`` that cover the axis usually leave slack, which equal
    windows spread as extra overlap (3000 px in 384 px tiles: 9 windows, 456 px of overlap
    where 192 would do). ``fit`` shrinks the windows to the smallest multiple of 8 that keeps
    their count, so the network runs on fewer pixels (a 12 MP photo in 384 px tiles: +13%
    instead of +29%). Without it every window of an axis has one size, which a compiled
    network wants (a new tile shape compiles again): ``tile`` or ``SHAPE_STEP`` below it,
    whichever covers the axis with the fewest pixels (on a tie the larger: fewer windows)."""
    if tile <= 0 or tile >= length:
        return [(0, length)]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    if fit:
        n = _windows(length, tile, overlap)
        tile = min(tile, -(-(math.ceil((length - overlap) / n) + overlap) // FIT_ALIGN) * FIT_ALIGN)
    else:
        sizes = (tile, tile - SHAPE_STEP) if tile - SHAPE_STEP > 2 * overlap else (tile,)
        tile = min(sizes, key=lambda t: (_windows(length, t, overlap) * t, -t))
        n = _windows(length, tile, overlap)
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)] if n > 1 else [0]
    return [(s, s + tile) for s in starts]


def ramp(length: int, lo: int, hi: int) -> torch.Tensor:
    """1-D blend weights: a raised-cosine rise over the first ``lo`` pixels and a fall over
    the last ``hi`` (edges shared with a neighbour; 0 for an unshared edge), 1 in between."""
    w = torch.ones(length, dtype=torch.float32)
    if lo > 0:
        lo = min(lo, length)
        w[:lo] = torch.sin(0.5 * math.pi * (torch.arange(lo, dtype=torch.float32) + 0.5) / lo) ** 2
    if hi > 0:
        hi = min(hi, length)
        fall = torch.sin(0.5 * math.pi * (torch.arange(hi, dtype=torch.float32) + 0.5) / hi).flip(0) ** 2
        w[length - hi:] = torch.minimum(w[length - hi:], fall)
    return w


def _shared(sp: list[tuple[int, int]], i: int) -> tuple[int, int]:
    """How many pixels window i shares with its previous and next neighbour."""
    lo = sp[i - 1][1] - sp[i][0] if i > 0 else 0
    hi = sp[i][1] - sp[i + 1][0] if i + 1 < len(sp) else 0
    return max(lo, 0), max(hi, 0)


def _weights(sp: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """The blend ramp of every window of one axis, in output pixels."""
    return [ramp((b - a) * scale, lo * scale, hi * scale) for (a, b), (lo, hi) in
            ((s, _shared(sp, i)) for i, s in enumerate(sp))]


def _axis_norm(sp: list[tuple[int, int]], ws: list[torch.Tensor], scale: int, margin: int, length: int) -> torch.Tensor:
    """Sum of the ramps of one axis over the cropped output [0, length * scale)."""
    norm = torch.zeros((length + 2 * margin) * scale)
    for (a, b), w in zip(sp, ws):
        norm[a * scale:b * scale] += w
    return norm[margin * scale:(margin + length) * scale]


def _clip(a: int, b: int, scale: int, margin: int, length: int) -> tuple[slice, slice]:
    """Window [a, b) of the padded axis -> (slice of the cropped output, slice of the tile)."""
    lo, hi = (a - margin) * scale, (b - margin) * scale
    o0, o1 = max(lo, 0), min(hi, length * scale)
    return slice(o0, o1), slice(o0 - lo, o1 - lo)


def run_tiled(model: nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int,
              tile_batch: int = 4, half: bool = False, fit: bool = True,
              on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Apply ``model`` to ``x`` (1 x 3 x H x W, float32) tile by tile on the model's device;
    returns 1 x 3 x sH x sW float32 where ``x`` is, unclamped. A network with a global
    context gets the thumbnail of the whole of ``x`` with every tile.

    Where ``x`` is, the work is (the module docstring): on the model's device nothing crosses
    the bus; on the host with the model on a GPU each batch of tiles is copied over and back.
    Memory where ``x`` is: the reflection-padded input and the output itself (a 24 MP photo
    at 2x: 96 MP x 3 x 4 bytes = 1.2 GB, on a GPU as on the host), besides the tiles in
    flight. Each tile adds its part inside the image straight into the output (the padding
    is never written), and the weights are separable (tile (i, j) is ``wy_i (x) wx_j``), so
    their sum is ``ny (x) nx``: two vectors instead of a full-size normaliser.
    ``on_tile(done, total)`` is told after every batch of tiles (progress within a photo)."""
    device = next(model.parameters()).device
    home = x.device
    _, c, h, w = x.shape
    margin = min(overlap, h - 1, w - 1)  # the same in whole-image mode, so both agree at the edges
    xp = F.pad(x, (margin,) * 4, mode="reflect") if margin else x
    hp, wp = xp.shape[-2:]
    ys, xs = spans(hp, tile, overlap, fit), spans(wp, tile, overlap, fit)
    wys, wxs = _weights(ys, scale), _weights(xs, scale)
    ny, nx = _axis_norm(ys, wys, scale, margin, h).to(home), _axis_norm(xs, wxs, scale, margin, w).to(home)
    wys, wxs = [r.to(home) for r in wys], [r.to(home) for r in wxs]  # vectors: made on the host, sent
    out = torch.zeros(1, c, h * scale, w * scale, dtype=torch.float32, device=home)
    # every window of an axis has the same length (spans aligns the last one to the end),
    # so all tiles share one shape and any run of them can go through the network together
    jobs = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    step = max(1, tile_batch)
    autocast = torch.autocast("cuda", dtype=torch.float16) if (half and device.type == "cuda") else nullcontext()
    context = context_thumbnail(x).to(device) if wants_context(model) else None
    for k in range(0, len(jobs), step):
        chunk = jobs[k:k + step]
        inp = torch.cat([xp[..., ys[i][0]:ys[i][1], xs[j][0]:xs[j][1]] for i, j in chunk])
        if inp.device != device:  # the image on the host, the model on a GPU: the path before
            inp = inp.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else inp.to(device)
        with torch.inference_mode(), autocast:
            res = (model(inp) if context is None else model(inp, context)).float().to(home)
        for t, (i, j) in zip(res, chunk):
            oy, ty = _clip(*ys[i], scale, margin, h)
            ox, tx = _clip(*xs[j], scale, margin, w)
            wt = wys[i][ty, None] * wxs[j][None, tx]
            out[0, :, oy, ox].addcmul_(t[:, ty, tx], wt)
        if on_tile is not None:
            on_tile(k + len(chunk), len(jobs))
    out.div_(ny[:, None]).div_(nx)
    return out


FLIPS = ((), (-1,), (-2,), (-2, -1))  # identity, h, v, hv


def upscale(model: nn.Module, x: torch.Tensor, opts: TileOptions = TileOptions(),
            on_retry: Callable[[str], None] | None = None,
            on_tile: Callable[[int, int], None] | None = None, overwrite: bool = False) -> torch.Tensor:
    """Enhance and upscale one image: 1 x 3 x H x W in [0, 1] -> 1 x 3 x sH x sW in [0, 1],
    where ``x`` is: on the host (the CPU, or a GPU's tiles copied over and back), or on the
    model's device (``upload``: everything stays there). Self-ensemble averages the four flips
    when ``opts.tta`` (a second output-sized buffer). ``on_tile(done, total)``: progress in
    tiles, the four flips counted as one run. ``overwrite``: ``x`` is the caller's to lose (a
    global look is then applied in place: ``apply_look``)."""
    device = next(model.parameters()).device
    model, look = look_first(model)
    if look is not None:
        with torch.inference_mode():
            x = apply_look(look, x, overwrite)
    tile = opts.tile
    while True:
        try:
            return _ensemble(model, x, tile, opts, on_tile).clamp_(0, 1)
        except OUT_OF_MEMORY:
            if device.type != "cuda":
                raise
        # out of the except block: its traceback held the failed attempt's buffers
        torch.cuda.empty_cache()
        size = tile or max(x.shape[-2:])
        if size // 2 < MIN_TILE:
            raise SrpieError(f"out of GPU memory even with {size}px tiles")
        tile = size // 2
        if on_retry:
            on_retry(f"CUDA out of memory; retrying with {tile}px tiles")


def look_first(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(what runs tile by tile, the global look to apply to the whole photo first or None).
    A network with a global look (``model.GlobalLook``) runs as its ``Upscaler`` (within
    ``accel.Prepared``: its prepared ``upscaler``), the look once per photo (``apply_look``)."""
    from srpie_cli.model import Upscaler

    net = getattr(model, "model", model)  # inside accel.Prepared
    look = getattr(net, "global_look", None)
    if look is None:
        return model, None
    up = getattr(model, "upscaler", None)
    return (up if up is not None else Upscaler(net)), look


BAND = 256  # rows of a photo the global look maps at a time (13 polynomial terms a pixel)
BAND_MARGIN = 16  # rows each band borrows from its neighbours (the tone stage reaches 11)


def apply_look(look: nn.Module, x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The global look (``model.GlobalLook``) on the whole of ``x`` (1 x 3 x H x W, where it
    is), with the settings of the whole photo (``photo_settings``: the tone stage skipped on a
    photo that is not dark), a band of rows at a time on the look's device, in float32. The
    tone stage's blur and denoiser see across bands. Returns a new tensor where ``x`` is, or
    with ``overwrite`` ``x`` itself, written over band by band (each band's original rows
    that the next one borrows kept aside): a 24 MP photo needs no second 288 MB copy."""
    device = next(look.parameters()).device
    settings = look.photo_settings(context_thumbnail(x).to(device, torch.float32))
    y = x if overwrite else torch.empty_like(x)
    h, above = x.shape[-2], None  # above: the original rows just above the band (overwritten in y)
    for r in range(0, h, BAND):
        a, b = max(r - BAND_MARGIN, 0), min(r + BAND + BAND_MARGIN, h)
        src = x[..., a:b, :].to(device, torch.float32, copy=True)
        if overwrite and above is not None:
            src[..., :r - a, :] = above
        if overwrite:
            above = x[..., max(r + BAND - BAND_MARGIN, 0):r + BAND, :].to(device, torch.float32, copy=True)
        band = look.with_settings(src, *settings)
        y[..., r:r + BAND, :] = band[..., r - a:r - a + min(BAND, h - r), :].to(x.device, x.dtype)
    return y


def _ensemble(model: nn.Module, x: torch.Tensor, tile: int, opts: TileOptions,
              on_tile: Callable[[int, int], None] | None) -> torch.Tensor:
    """``run_tiled`` of ``x``, or with ``opts.tta`` the mean of its four flips."""
    acc = None
    flips = FLIPS if opts.tta else FLIPS[:1]
    for f, dims in enumerate(flips):
        xi = x.flip(dims) if dims else x
        told = None if on_tile is None else \
            (lambda done, n, f=f, k=len(flips): on_tile(f * n + done, k * n))
        y = run_tiled(model, xi, model.scale, tile, opts.overlap, opts.tile_batch, opts.half, opts.fit, told)
        y = y.flip(dims) if dims else y
        acc = y if acc is None else acc.add_(y)
        del y  # a 24 MP output is 1.2 GB: never hold two besides the sum
    if opts.tta:
        acc.div_(len(FLIPS))
    return acc


def default_tile(device: torch.device, precision: str = "float32") -> int:
    """The tile to use when the user names none: on a CPU ``CPU_TILE`` (``CPU_TILE_BF16`` in
    bfloat16), else ``DEFAULT_TILE``."""
    if device.type != "cpu":
        return DEFAULT_TILE
    return defaults.CPU_TILE_BF16 if precision in ("bfloat16", "int8") else CPU_TILE


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present; ``cpu``; ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SrpieError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SrpieError(f"device {name}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise SrpieError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    return dev
