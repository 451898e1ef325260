"""What one training step costs: the whole network against ``--look-only``.

A look-only fine-tune (``srpie train --look-only``) trains PENet and the global context and
leaves the upscaler (the shallow feature, MBFNet, DUNet) frozen: MBFNet runs forward without
keeping activations and has no backward pass. This prints seconds per step of both, on the
same batch in the same process, and their ratio, for each preset (untrained networks in
``srpie-x2``'s configuration: DUNet features, global context, PENet's own input; the cost
does not depend on the weights).

    python benchmarks/train_step.py                   # batch 16 of 64 px, hybrid loss, 2 threads
    python benchmarks/train_step.py --threads 1 --batch-size 8 --patch 48 --steps 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from srpie_cli.losses import HybridLoss, LossWeights  # noqa: E402
from srpie_cli.model import DeepSRPIE, config_for  # noqa: E402
from srpie_cli.train import TrainConfig, trainable  # noqa: E402


def seconds_per_step(preset: str, look_only: bool, batch_size: int, patch: int, steps: int) -> tuple[float, int]:
    """(median wall time of ``steps`` optimiser steps after one warm-up step, the number of
    parameters trained)."""
    torch.manual_seed(0)
    model = DeepSRPIE(config_for(preset, du_features=True, global_context=True, own_look_input=True))
    params = trainable(model, TrainConfig(out=None, run_dir=None, look_only=look_only))
    model.to(memory_format=torch.channels_last)
    loss_fn = HybridLoss(LossWeights.preset("hybrid"), None)
    opt = torch.optim.Adam(params, lr=1e-5)
    x = torch.rand(batch_size, 3, patch, patch).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch_size, 3, 2 * patch, 2 * patch)
    ctx = torch.rand(batch_size, 3, 64, 64)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss, _ = loss_fn(model(x, ctx), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])
    return times[len(times) // 2], sum(p.numel() for p in params)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--preset", action="append", choices=["paper", "fast"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"training step, batch {args.batch_size} of {args.patch} px, hybrid loss, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    report = {}
    for preset in args.preset or ["paper", "fast"]:
        whole, whole_n = seconds_per_step(preset, False, args.batch_size, args.patch, args.steps)
        look, look_n = seconds_per_step(preset, True, args.batch_size, args.patch, args.steps)
        report[preset] = {"whole_s": whole, "look_only_s": look, "speedup": whole / look,
                          "whole_params": whole_n, "look_only_params": look_n}
        print(f"{preset:6s} whole network {whole:6.2f} s/step ({whole_n:,} parameters)   "
              f"--look-only {look:6.2f} s/step ({look_n:,})   {whole / look:.1f}x", flush=True)
    return report


if __name__ == "__main__":
    main()
