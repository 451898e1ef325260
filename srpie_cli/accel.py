"""Inference-only speed-ups: a trained network, made fast for the device it runs on.

``prepare(model, device)`` returns a module that ``tiling.upscale`` runs like the model
itself (same outputs within float32 rounding). What it does, each kept because the benchmark
(``benchmarks/bench.py``) measured it paying on a CPU:

* ``torch.compile`` (Inductor) with freezing: weights become constants, convolutions are
  prepacked for oneDNN in channels-last layout, and the cats, adds, activations and the
  guided filter are fused into a few C++ loops instead of one memory pass each: 1.9x the
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
  MP/s against 34 eager, benchmarks/bench_cuda.py), but the photo path is bound by the
  host-side tiling and blending (14.5 MP/s for 12 MP), so it does not yet pay end to end.

Not kept: channels-last for the eager model (slower on the CPU: the guided filter, cats and
pixel shuffles run in NCHW kernels, so tensors are converted back and forth; Inductor picks
channels-last for its convolutions by itself) and ``torch.jit.freeze`` +
``optimize_for_inference`` (no faster than eager here).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch
from torch import nn


class Prepared(nn.Module):
    """A network ready for inference.

    Args:
        model: the network in eval mode (``DeepSRPIE`` or any module with ``scale``).
        compiled: its compiled form, or None for eager.
        split: run a batch one sample at a time (the CPU choice, see the module docstring).
        on_fallback: told why, once, if the compiled form fails and eager takes over.
    """

    def __init__(self, model: nn.Module, compiled: Callable | None, split: bool,
                 on_fallback: Callable[[str], None] | None = None):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: the weights are the model's
        self.split = split
        self.on_fallback = on_fallback

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def cfg(self):
        return getattr(self.model, "cfg", None)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """``context``: the global context of networks that take one (``model.wants_context``)."""
        if self.split and x.shape[0] > 1:
            return torch.cat([self._run(x[k:k + 1], *context) for k in range(x.shape[0])])
        return self._run(x, *context)

    def _run(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(x, *context)
            except torch._dynamo.exc.TorchDynamoException as e:
                object.__setattr__(self, "_compiled", None)
                if self.on_fallback:
                    self.on_fallback(f"torch.compile failed, running eager: {str(e).splitlines()[0][:160]}")
        return self.model(x, *context)


def can_compile(device: torch.device) -> str | None:
    """None when torch.compile can work here, else the reason it cannot."""
    if not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH (Inductor builds its CPU kernels with one)"
    return None


def prepare(model: nn.Module, device: torch.device | str = "cpu", *, compile: bool | None = None,
            threads: int | None = None, on_fallback: Callable[[str], None] | None = None) -> Prepared:
    """Move ``model`` to ``device`` in eval mode and wrap it for fast inference.

    Args:
        model: the network (its weights are not copied; do not train it afterwards).
        device: where it runs.
        compile: torch.compile it; None: on the CPU yes, on CUDA no (see above).
        threads: intra-op threads for the CPU (None: PyTorch's default, one per core).
        on_fallback: told why when compiling is skipped or fails and eager runs instead.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every tile has the same shape: autotune once
    want = device.type == "cpu" if compile is None else compile
    compiled = None
    if want:
        reason = can_compile(device)
        if reason is None:
            # freezing: weights are constants (prepacked convolutions, folded layout changes);
            # dynamic=False: one graph per tile shape, and tiles all share one shape
            compiled = torch.compile(model, dynamic=False, options={"freezing": True})
        elif on_fallback:
            on_fallback(f"not compiling: {reason}")
    return Prepared(model, compiled, split=device.type == "cpu", on_fallback=on_fallback)
