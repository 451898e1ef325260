"""int8 convolutions on a CPU with VNNI: the network's feature convolutions in 8-bit integers.

Most of a tile's time on a CPU is convolutions (77% of a compiled bfloat16 tile of
``srpie-x2-fast``), and oneDNN runs an int8 convolution (uint8 input, int8 weights, int32
sums) up to twice as fast as the same one in bfloat16 on AVX512-VNNI. What it takes:

* **Weights**: each output channel's kernel scaled to -127..127 (symmetric, per channel). They
  are the network's kernels as it computes them (``model.py`` folds some layers into one
  kernel at run time), read once by a small forward pass in float32 (``kernels``) and packed
  for oneDNN once when the network is prepared.
* **Inputs**: a feature map is quantised to uint8 over one fixed range per convolution, its
  *calibration*: the least and largest values that convolution saw on real photos in float32
  (``calibrate``), stored beside the weights file
  (``weights/<model>.int8.json``, written by ``srpie calibrate``). Stored, not measured per
  run: a photo's output never depends on which photos came before it, so ``--jobs`` and a
  rerun give the same bytes. The ranges are not widened: the calibration's synthetic extremes
  (``extremes``: black, white, saturated stripes, full-range noise) already reach beyond what
  its photos do, and a wider range costs precision (an eighth wider on srpie-x2-fast: 52.8 dB
  from float32 on a tile of benchmarks/shoot.py's synthetic photo instead of 54.9).
* **Which convolutions**: the 3x3 and 5x5 ones reading feature maps (``quantised``). The ones
  reading the photo (3 channels) or its decomposition (6) keep bfloat16: 256 levels over a
  feature's range would lose the photo's own gradations. Depthwise and 1x1 convolutions keep
  it too: too little arithmetic for their input's quantising to pay. DUNet's first
  convolutions read the image beside 32 feature channels (``du_features``): they are
  quantised over the one range of both, which the measured PSNR includes.

The network's forward pass is unchanged: every convolution it makes goes through
``torch.nn.functional.conv2d``, and a ``TorchFunctionMode`` hands the n-th one to the n-th
packed int8 convolution (``Int8Convs``). torch.compile traces through the mode, so the
quantising of an input fuses into the loop that made it. Call order and kernel shapes are
checked against the calibration: a different network is refused, never run wrong.

What it costs in accuracy is measured (benchmarks/RESULTS.md): the output's PSNR from float32
on held-out photos, against the issue's floor of 45 dB.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

FORMAT = "srpie-int8-1"
IMAGE_CHANNELS = 6  # convolutions reading at most this many channels (the photo, its decomposition) stay as they are


def quantised(cin: int, groups: int, kernel: int) -> bool:
    """Whether a convolution reading ``cin`` channels in ``groups`` groups with a ``kernel`` x
    ``kernel`` kernel runs in int8. Not a 1x1 one: it does too little arithmetic a pixel to pay
    for quantising its input (a 352 px tile of srpie-x2-fast compiled ran 1.08x faster
    with its 1x1 convolutions left in bfloat16 than with them in int8)."""
    return groups == 1 and cin > IMAGE_CHANNELS and kernel > 1


def vnni_support() -> str | None:
    """None when this CPU runs int8 convolutions natively (AVX512-VNNI or AMX), else why not."""
    cpu = getattr(torch, "cpu", None)
    if not any(getattr(cpu, f, lambda: False)() for f in ("_is_vnni_supported", "_is_amx_tile_supported")):
        return "this CPU has neither AVX512-VNNI nor AMX"
    if not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return "this PyTorch has no oneDNN int8 convolution"
    return None


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


class _Convs(TorchFunctionMode):
    """Hands every 2-D convolution of the forward passes run inside it to ``on_conv(index, x,
    weight, bias, stride, padding, dilation, groups)``, counting from 0; everything else runs
    as it is."""

    def __init__(self, on_conv: Callable):
        super().__init__()
        self.on_conv, self.index = on_conv, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.conv2d:  # F.conv2d is torch.conv2d; nn.Conv2d calls it too
            return func(*args, **(kwargs or {}))
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        a = dict(zip(names, args)) | (kwargs or {})
        index, self.index = self.index, self.index + 1
        return self.on_conv(index, a["input"], a["weight"], a.get("bias"), a.get("stride", 1),
                            a.get("padding", 0), a.get("dilation", 1), a.get("groups", 1))


def fingerprint(net: nn.Module) -> str:
    """A hash of ``net``'s weights: a calibration belongs to these weights and no others."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def calibrate(net: nn.Module, tiles: Iterable[torch.Tensor]) -> list[dict]:
    """Run ``net`` (float32, eager) on each tile and return, for each convolution in call
    order, its kernel's shape and the range of the inputs it saw (``lo`` <= 0 <= ``hi``: zero,
    the padding, is always exact)."""
    seen: list[dict] = []

    def see(i, x, w, b, stride, padding, dilation, groups):
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        if i == len(seen):
            seen.append({"weight": list(w.shape), "lo": lo, "hi": hi})
        else:
            seen[i]["lo"], seen[i]["hi"] = min(seen[i]["lo"], lo), max(seen[i]["hi"], hi)
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    with torch.inference_mode():
        for tile in tiles:
            with _Convs(see):
                net(tile)
    return seen


def kernels(net: nn.Module) -> list[tuple]:
    """Every convolution ``net`` (float32) makes, in call order: (weight, bias, stride,
    padding, dilation, groups), the weights as the forward pass computes them (folds included)."""
    found = []

    def keep(i, x, w, b, *geometry):
        found.append((w.detach().float().clone(), None if b is None else b.detach().float().clone(), *geometry))
        return F.conv2d(x, w, b, *geometry)

    with torch.inference_mode(), _Convs(keep):
        net(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    return found


class QConv:
    """One convolution in int8: its kernel quantised and packed for oneDNN, its input's range."""

    def __init__(self, weight, bias, stride, padding, dilation, groups, lo: float, hi: float):
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero, the padding, is always exact
        self.scale = max(hi - lo, 1e-8) / 255
        self.zero = int(round(-lo / self.scale))
        self.w_scale = weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127
        w8 = (weight / self.w_scale[:, None, None, None]).round().clamp(-127, 127).to(torch.int8)
        self.geometry = (_pair(stride), _pair(padding), _pair(dilation), groups)
        self.packed = torch.ops.onednn.qconv_prepack(w8, self.w_scale, self.scale, self.zero, *self.geometry, None)
        self.w_zero = torch.zeros(len(weight), dtype=torch.long)
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = (x.float() / self.scale).round().add(self.zero).clamp(0, 255).to(torch.uint8)
        return torch.ops.onednn.qconv2d_pointwise(q, self.scale, self.zero, self.packed, self.w_scale, self.w_zero,
                                                  self.bias, *self.geometry, 1.0, 0, x.dtype, "none", [], None)


class Int8Convs(nn.Module):
    """``net`` with its feature convolutions in int8 (the rest as ``net`` is: bfloat16 for a
    bfloat16 copy). ``reference``: the float32 network ``net`` was copied from, which gives the
    kernels; ``calibration``: ``calibrate``'s list for it. ValueError when they do not match."""

    def __init__(self, net: nn.Module, reference: nn.Module, calibration: list[dict]):
        super().__init__()
        self.net = net
        found = kernels(reference)
        if len(found) != len(calibration) or any(list(k[0].shape) != c["weight"] for k, c in zip(found, calibration)):
            raise ValueError("the int8 calibration is for another network (its convolutions differ; "
                             "srpie calibrate makes a new one)")
        self.plan = [QConv(*k, c["lo"], c["hi"]) if quantised(k[0].shape[1] * k[5], k[5], k[0].shape[-1]) else None
                     for k, c in zip(found, calibration)]

    def _conv(self, i, x, w, b, stride, padding, dilation, groups):
        q = self.plan[i]
        return F.conv2d(x, w, b, stride, padding, dilation, groups) if q is None else q(x)

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        with _Convs(self._conv):
            return self.net(x, *context)


# ----------------------------------------------------------------------------- calibration files

def calibration_path(weights_file: Path) -> Path:
    """Where a weights file's calibration lives: ``name.int8.json`` beside ``name.pt``."""
    return weights_file.with_suffix(".int8.json")


def calibration_file(model: str) -> Path | None:
    """The calibration file of a model name or weights file (``calibration_path``), or None."""
    from srpie_cli import SrpieError
    from srpie_cli.weights import resolve

    try:
        path = resolve(model)
    except SrpieError:
        return None
    path = path and calibration_path(path)
    return path if path is not None and path.is_file() else None


def save(path: Path, net: nn.Module, convs: list[dict], about: dict) -> None:
    """Write a calibration (``about``: how it was made: photos, command)."""
    head = {"format": FORMAT, "weights": fingerprint(net), **about}
    lines = ",\n".join(f"  {json.dumps(c)}" for c in convs)  # one convolution a line
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(head, indent=1)[:-2] + f',\n "convs": [\n{lines}\n ]\n}}\n')
    tmp.replace(path)


def read(path: Path | None, net: nn.Module) -> list[dict] | None:
    """The calibration at ``path`` for ``net``'s weights; None when there is none. ValueError
    when the file is not one, or is for other weights."""
    if path is None or not path.is_file():
        return None
    try:
        blob = json.loads(path.read_text())
        convs = blob["convs"] if blob.get("format") == FORMAT else None
        ok = isinstance(convs, list) and all(isinstance(c["weight"], list) and float(c["lo"]) <= 0 <= float(c["hi"])
                                             for c in convs)
    except (ValueError, OSError, AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an int8 calibration ({e})") from None
    if not ok:
        raise ValueError(f"{path}: not an int8 calibration (expected format {FORMAT!r})")
    if blob.get("weights") != fingerprint(net):
        raise ValueError(f"{path}: the calibration is for other weights (srpie calibrate makes a new one)")
    return convs


# ----------------------------------------------------------------------------- calibrating on photos

CALIBRATION_TILE = 256  # side of the tiles a calibration runs (float32, eager)
CALIBRATION_TILES = 4  # tiles a photo: its centre and three spread across it


def tiles_of(x: torch.Tensor, side: int = CALIBRATION_TILE, n: int = CALIBRATION_TILES) -> list[torch.Tensor]:
    """Up to ``n`` tiles of ``x`` (1 x 3 x H x W) at fixed places: the centre, then along the
    diagonals (a photo smaller than a tile is one tile)."""
    h, w = x.shape[-2:]
    if h <= side or w <= side:
        return [x]
    spots = [(0.5, 0.5), (0.2, 0.2), (0.8, 0.8), (0.2, 0.8), (0.8, 0.2)][:n]
    return [x[..., round(fy * (h - side)):round(fy * (h - side)) + side, round(fx * (w - side)):round(fx * (w - side)) + side]
            for fy, fx in spots]


def extremes(side: int = CALIBRATION_TILE) -> list[torch.Tensor]:
    """Synthetic tiles at the edges of what a photo holds: black, white, saturated primaries
    in hard stripes and full-range noise, so a calibration covers them whatever its photos."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, side)
    stripes = torch.zeros(1, 3, side, side)
    for c in range(3):
        stripes[0, c] = ((torch.arange(side)[:, None] // 8 + c) % 3 == 0).float() * ramp[None, :]
    return [torch.zeros(1, 3, side, side), torch.ones(1, 3, side, side), stripes,
            torch.rand(1, 3, side, side, generator=g)]


def calibrate_photos(model: nn.Module, photos: Iterable[Path],
                     warn: Callable[[str], None] = lambda m: None) -> tuple[list[dict], int]:
    """``calibrate`` for ``model`` (a ``DeepSRPIE``, float32) on the tiles its runs would see:
    each photo decoded, the global look applied to the whole of it (``tiling.apply_look``),
    ``tiles_of`` it, and the ``extremes``. A photo that cannot be read is passed to ``warn``.
    Returns the calibration and the number of photos it saw."""
    from srpie_cli import SrpieError, images
    from srpie_cli.model import Upscaler
    from srpie_cli.tiling import apply_look, to_tensor

    model = model.float().eval()
    tiles, seen = extremes(), 0
    for path in photos:
        try:
            x = to_tensor(images.to_float(images.read_photo(path).pixels))
        except (SrpieError, OSError) as e:
            warn(f"skipped: {e}")
            continue
        if model.global_look is not None:
            with torch.inference_mode():
                x = apply_look(model.global_look, x, overwrite=True)
        tiles += [t.clone() for t in tiles_of(x)]  # copies: the whole photo is not kept
        seen += 1
    return calibrate(Upscaler(model), tiles), seen
