"""Tiled inference with blended overlaps.

A photo is far larger than one forward pass can hold (a 24 MP frame is 1.5 G floats per
64-channel feature map), so the network runs tile by tile. Tiles overlap; each tile's output
is weighted by a window that ramps smoothly to ~0 at borders shared with a neighbour, and
``sum(tile * w) / sum(w)`` joins them: no seams, no tone steps. The image is padded by
reflection first, so the network's own zero padding never touches a real image edge.

Pure functions from tensor to tensor; errors propagate (CUDA out-of-memory halves the tile
and starts the image again, and says so through ``on_retry``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srpie_cli import SrpieError

DEFAULT_TILE = 384  # input pixels; tiles of the same size run as one batch
DEFAULT_OVERLAP = 24  # input pixels shared by neighbouring tiles (the blending ramp)
MIN_TILE = 32  # below this an out-of-memory retry gives up


@dataclass(frozen=True)
class TileOptions:
    tile: int = DEFAULT_TILE  # 0: the whole image in one pass
    overlap: int = DEFAULT_OVERLAP
    tile_batch: int = 4  # tiles per forward pass
    tta: bool = False  # self-ensemble over the four flips (the paper's "Deep SR-PIE+")
    half: bool = False  # float16 autocast (CUDA only)


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Cover [0, length) with windows of ``tile`` that overlap by at least ``overlap``.
    The last window is aligned to the end; a short axis gives one window."""
    if tile <= 0 or tile >= length:
        return [(0, length)]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    n = math.ceil((length - overlap) / (tile - overlap))
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


def _tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]]:
    ys, xs = spans(h, tile, overlap), spans(w, tile, overlap)
    for i, ysp in enumerate(ys):
        for j, xsp in enumerate(xs):
            yield ysp, xsp, _shared(ys, i), _shared(xs, j)


def run_tiled(model: nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int,
              tile_batch: int = 4, half: bool = False) -> torch.Tensor:
    """Apply ``model`` to ``x`` (1 x 3 x H x W, float32, on the CPU) tile by tile on the
    model's device; returns 1 x 3 x sH x sW float32 on the CPU, unclamped."""
    device = next(model.parameters()).device
    _, c, h, w = x.shape
    margin = min(overlap, h - 1, w - 1)  # the same in whole-image mode, so both agree at the edges
    xp = F.pad(x, (margin,) * 4, mode="reflect") if margin else x
    hp, wp = xp.shape[-2:]
    out = torch.zeros(1, c, hp * scale, wp * scale, dtype=torch.float32)
    norm = torch.zeros(1, 1, hp * scale, wp * scale, dtype=torch.float32)
    jobs = list(_tiles(hp, wp, tile, overlap))
    # tiles of equal size go through the network together
    by_size: dict[tuple[int, int], list] = {}
    for job in jobs:
        (y0, y1), (x0, x1) = job[0], job[1]
        by_size.setdefault((y1 - y0, x1 - x0), []).append(job)
    autocast = torch.autocast("cuda", dtype=torch.float16) if (half and device.type == "cuda") else _null()
    for group in by_size.values():
        for k in range(0, len(group), max(1, tile_batch)):
            chunk = group[k:k + tile_batch]
            inp = torch.cat([xp[..., y0:y1, x0:x1] for (y0, y1), (x0, x1), _, _ in chunk])
            if device.type == "cuda":
                inp = inp.pin_memory().to(device, non_blocking=True)
            with torch.inference_mode(), autocast:
                res = model(inp.to(device)).float().cpu()
            for t, ((y0, y1), (x0, x1), (ylo, yhi), (xlo, xhi)) in zip(res, chunk):
                wy = ramp((y1 - y0) * scale, ylo * scale, yhi * scale)
                wx = ramp((x1 - x0) * scale, xlo * scale, xhi * scale)
                wt = wy[:, None] * wx[None, :]
                ys, xs = slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale)
                out[0, :, ys, xs] += t * wt
                norm[0, :, ys, xs] += wt
    out /= norm
    if margin:
        m = margin * scale
        out = out[..., m:m + h * scale, m:m + w * scale]
    return out


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


FLIPS = ((), (-1,), (-2,), (-2, -1))  # identity, h, v, hv


def upscale(model: nn.Module, x: torch.Tensor, opts: TileOptions = TileOptions(),
            on_retry: Callable[[str], None] | None = None) -> torch.Tensor:
    """Enhance and upscale one image: 1 x 3 x H x W in [0, 1] (CPU) -> 1 x 3 x sH x sW in
    [0, 1] (CPU). Self-ensemble averages the four flips when ``opts.tta``."""
    scale = model.scale
    device = next(model.parameters()).device
    tile = opts.tile
    while True:
        try:
            acc = None
            for dims in (FLIPS if opts.tta else FLIPS[:1]):
                xi = x.flip(dims) if dims else x
                y = run_tiled(model, xi, scale, tile, opts.overlap, opts.tile_batch, opts.half)
                y = y.flip(dims) if dims else y
                acc = y if acc is None else acc.add_(y)
            return (acc / (4 if opts.tta else 1)).clamp_(0, 1)
        except torch.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            size = tile or max(x.shape[-2:])
            if size // 2 < MIN_TILE:
                raise SrpieError(f"out of GPU memory even with {size}px tiles") from None
            tile = size // 2
            if on_retry:
                on_retry(f"CUDA out of memory; retrying with {tile}px tiles")


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
