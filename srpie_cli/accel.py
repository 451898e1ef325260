"""Inference-only speed-ups: a trained network, made fast for the device it runs on.

``prepare(model, device)`` returns a module that ``tiling.upscale`` runs like the model
itself (same outputs within float32 rounding). What it does, each kept because the benchmark
(``benchmarks/bench.py``) measured it paying on a CPU:

* ``torch.compile`` (Inductor): convolutions run through oneDNN in channels-last layout, and
  the cats, adds, activations and the guided filter are fused into a few C++ loops instead
  of one memory pass each (Inductor's freezing, which would fold the weights in as constants
  and prepack the convolutions, ran a 352 px tile of ``srpie-x2-fast`` in bfloat16 no faster
  here, so it is not asked for; an earlier ``options={"freezing": True}`` never took effect,
  as the generated code showed): 1.9x the
  network alone over eager PyTorch on a 2-core EPYC, 2.1x to 2.6x on a whole photo
  (benchmarks/RESULTS.md; the network is bound by memory traffic, not FLOPs).
  Compiling costs seconds to a minute once per tile shape and process (Inductor caches
  kernels on disk), so it pays on a photo, not on a thumbnail. If compiling fails (no C++
  compiler, an unsupported op) the first call says why through ``on_fallback`` and the
  eager model runs instead; nothing else changes.
* On the CPU, tiles go through the network one at a time: the convolutions of one
  384 px tile are already large, so a batch of four gains no speed and costs four times
  the activation memory (and a second compiled graph for a short last batch).
* On CUDA: cuDNN autotuning (the tiles of a photo share one shape). Compiling is opt-in
  there (``compile=True``): on an H200 it doubled the network alone in float16 (paper 75
  MP/s against 34 eager, benchmarks/bench_cuda.py), but the photo path was then bound by
  host-side tiling and blending (14.5 MP/s for 12 MP). The path now stays on the device
  (``tiling.upload``); whether compiling pays end to end there is not yet measured
  (``benchmarks/shoot.py --variants now now+compile``).

* bfloat16 (``precision="bfloat16"``, what ``--precision auto`` picks on a CPU with AVX512-BF16
  or AMX): the compiled graph is built from a bfloat16 copy of the network (its tiles go in and
  come out as float32), so oneDNN runs every convolution in bfloat16 and Inductor's fused loops
  move half the bytes; an eager run (a small photo) autocasts instead. On the 2-core EPYC
  (avx512_bf16) of benchmarks/RESULTS.md, ``srpie-x2-fast`` compiled: 1.9x float32 compiled
  per photo through ``srpie enhance`` (3.8x on one 192 px tile alone), 54 dB PSNR from float32
  on a tile, 46 dB between the two JPEG outputs. Autocast around the float32 compiled graph
  gained less on ``srpie-x2-fast`` (1.8x a tile; 2.1x on ``srpie-x2``, measured once on a busy
  machine); eager autocast 1.4x (``srpie-x2-fast``), channels-last no more.

Not kept: channels-last for the eager model (slower on the CPU: the guided filter, cats and
pixel shuffles run in NCHW kernels, so tensors are converted back and forth; Inductor picks
channels-last for its convolutions by itself) and ``torch.jit.freeze`` +
``optimize_for_inference`` (no faster than eager here).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable

import torch
from torch import nn

from srpie_cli.int8 import Int8Convs
from srpie_cli.model import Upscaler


class Prepared(nn.Module):
    """A network ready for inference.

    Args:
        model: the network in eval mode (``DeepSRPIE`` or any module with ``scale``).
        compiled: its compiled form, or None for eager.
        split: run a batch one sample at a time (the CPU choice, see the module docstring).
        on_fallback: told why, once, if the compiled form fails and eager takes over.
        bf16: run in bfloat16: ``compiled`` was built from a bfloat16 copy (inputs are cast to
            it, outputs back to float32); eager runs autocast.
    """

    def __init__(self, model: nn.Module, compiled: Callable | None, split: bool,
                 on_fallback: Callable[[str], None] | None = None, bf16: bool = False,
                 upscaler: Prepared | None = None, int8: bool = False):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: the weights are the model's
        object.__setattr__(self, "upscaler", upscaler)
        self.split = split
        self.on_fallback = on_fallback
        self.bf16 = bf16
        self.int8 = int8  # ``compiled`` runs int8 convolutions (int8.Int8Convs)

    def eager(self) -> Prepared:
        """The same network and precision without the compiled form (a tile shape of its own)."""
        up = self.upscaler.eager() if self.upscaler is not None else None
        return Prepared(self.model, None, self.split, self.on_fallback, self.bf16, up)

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def cfg(self):
        return getattr(self.model, "cfg", None)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @property
    def runs_int8(self) -> bool:
        """Whether the tiles run int8 convolutions (compiled, and not fallen back to eager)."""
        tiles = self.upscaler if self.upscaler is not None else self
        return tiles.int8 and tiles.compiled

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """``context``: the global context of networks that take one (``model.wants_context``)."""
        if self.split and x.shape[0] > 1:
            return torch.cat([self._run(x[k:k + 1], *context) for k in range(x.shape[0])])
        return self._run(x, *context)

    def _run(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                if self.bf16:
                    return self._compiled(x.bfloat16(), *(c.bfloat16() for c in context)).float()
                return self._compiled(x, *context)
            except torch._dynamo.exc.TorchDynamoException as e:
                object.__setattr__(self, "_compiled", None)
                if self.on_fallback:
                    self.on_fallback(f"torch.compile failed, running eager: {str(e).splitlines()[0][:160]}")
        if self.bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.model(x, *context).float()
        return self.model(x, *context)


def bf16_support(device: torch.device) -> str | None:
    """None when ``device`` runs bfloat16 natively, else the reason it does not (a CPU needs
    AVX512-BF16 or AMX: elsewhere oneDNN emulates it, slower than float32)."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16"
    cpu = getattr(torch, "cpu", None)
    native = any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    if not (native and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "this CPU has neither AVX512-BF16 nor AMX"
    return None


def can_compile(device: torch.device) -> str | None:
    """None when torch.compile can work here, else the reason it cannot."""
    if not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH (Inductor builds its CPU kernels with one)"
    return None


def prepare(model: nn.Module, device: torch.device | str = "cpu", *, compile: bool | None = None,
            threads: int | None = None, on_fallback: Callable[[str], None] | None = None,
            bf16: bool = False, int8: list[dict] | None = None) -> Prepared:
    """Move ``model`` to ``device`` in eval mode and wrap it for fast inference.

    Args:
        model: the network (its weights are not copied; do not train it afterwards).
        device: where it runs.
        compile: torch.compile it; None: on the CPU yes, on CUDA no (see above).
        threads: intra-op threads for the CPU (None: PyTorch's default, one per core).
        on_fallback: told why when compiling is skipped or fails and eager runs instead.
        bf16: run in bfloat16 (see the module docstring; the caller checks ``bf16_support``).
        int8: with ``bf16`` and compiled, the network's calibration (``int8.read``): the
            compiled tiles run their feature convolutions in int8 (``int8.Int8Convs``; the
            caller checks ``int8.vnni_support``). A calibration that does not fit the network
            is said through ``on_fallback``, and bfloat16 runs.

    A network with a global look also gets ``upscaler``: the same network without its look
    (``model.Upscaler``), prepared the same way, which ``tiling.upscale`` runs tile by tile
    after applying the look to the whole photo once. torch.compile compiles on the first
    call, so only the form that runs costs a compilation.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every tile has the same shape: autotune once
    want = device.type == "cpu" if compile is None else compile
    net = None
    if want:
        reason = can_compile(device)
        if reason is None:
            net = copy.deepcopy(model).to(torch.bfloat16) if bf16 else model
        elif on_fallback:
            on_fallback(f"not compiling: {reason}")
    split = device.type == "cpu"
    quant = None  # the tiles' compiled form with int8 convolutions (a compiled module has no truth value: compare to None)
    if net is not None and int8 is not None and bf16:
        try:
            quant = _compiled(Int8Convs(Upscaler(net), Upscaler(model), int8))
        except ValueError as e:
            if on_fallback:
                on_fallback(f"not running int8: {e}; bfloat16 instead")
    whole = _compiled(net) if net is not None else None
    if getattr(model, "global_look", None) is None:  # the network itself runs the tiles
        return Prepared(model, quant if quant is not None else whole, split, on_fallback, bf16, int8=quant is not None)
    # the whole network (look and all) stays bfloat16: it runs on thumbnails; its upscaler runs the tiles
    tiles = quant if quant is not None else _compiled(Upscaler(net)) if net is not None else None
    upscaler = Prepared(Upscaler(model), tiles, split, on_fallback, bf16, int8=quant is not None)
    return Prepared(model, whole, split, on_fallback, bf16, upscaler)


def _compiled(net: nn.Module) -> Callable:
    # dynamic=False: one graph per tile shape, and a photo's tiles all share one shape
    return torch.compile(net, dynamic=False)
