"""srpie CUDA benchmark: the network and the tiled photo path on a GPU, beside the peers.

    python benchmarks/bench_cuda.py                  # the full run
    python benchmarks/bench_cuda.py --json out.json  # also write every figure as JSON
    python benchmarks/bench_cuda.py --smoke          # tiny sizes, runs on a CPU too (tests)

Measured in one process, interleaved, synchronised: the matrix-unit peaks (float32, TF32,
float16), each network alone on a batch of default tiles in float32 and float16 autocast
(srpie presets, RRDBNet x2, SRVGGNetCompact, IMDN), ``upscale`` of a 12 MP photo held on the
host (the path before) by tile size and tiles per batch, the same photo's path on the device
(what ``srpie enhance`` takes now), tiled against whole-image on the GPU, the float16 output's distance from float32 with the shipped
weights, and the device and host peak memory of a 24 MP photo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import flops_per_pixel, peak_rss_gb, srpie  # noqa: E402
from benchmarks.bench import timed as bench_timed  # noqa: E402
from benchmarks.peers import PEERS  # noqa: E402
from srpie_cli.accel import prepare  # noqa: E402
from srpie_cli.tiling import DEFAULT_TILE, TileOptions, download, upload, upscale  # noqa: E402

DEV = torch.device("cuda")
SMOKE = False  # tiny sizes on whatever device (the test suite runs this on a CPU)


def _prepare(model, device):
    """``accel.prepare`` as ``srpie enhance`` does it on the device (eager on CUDA)."""
    return prepare(model, device, compile=False if DEV.type == "cpu" else None)


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """``bench.timed`` with the device synchronised around every call: best seconds per
    call, and each median under ``"<name> (median)"``."""

    def synced(fn):
        def run():
            sync()
            fn()
            sync()
        return run

    res = bench_timed({k: synced(fn) for k, fn in fns.items()}, reps)
    return {k: r["best"] for k, r in res.items()} | {f"{k} (median)": r["median"] for k, r in res.items()}


def matmul_peaks() -> dict[str, float]:
    """TFLOP/s of an 8192^3 product in float32 (no TF32), TF32 and float16, random data."""
    n, res = (256 if SMOKE else 8192), {}
    a, b = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
    kinds = (("float32", torch.float32, False), ("tf32", torch.float32, True), ("float16", torch.float16, False))
    for label, dtype, tf32 in kinds[:1] if DEV.type == "cpu" else kinds:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = a.to(dtype), b.to(dtype)
        res[label] = 2 * n**3 / timed({"mm": lambda x=x, y=y: x @ y}, 5)["mm"] / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    return res


def forward(model, x, half: bool):
    def fn():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
            return model(x)
    return fn


def networks_alone(batch: int, side: int, reps: int) -> dict:
    """Each network on ``batch`` tiles of ``side`` px: input MP/s and achieved TFLOP/s. The
    ``tf32`` rows are float32 tensors, whose convolutions cuDNN runs in TF32 (PyTorch's
    default); ``float16`` is autocast."""
    models = {"srpie paper": srpie("paper"), "srpie fast": srpie("fast")}
    models |= {name: cls().eval() for name, cls in PEERS.items()}
    fpp = {name: flops_per_pixel(m) for name, m in models.items()}
    x = torch.rand(batch, 3, side, side, device=DEV).contiguous(memory_format=torch.channels_last)
    fns = {}
    for name, m in models.items():
        p = _prepare(m, DEV)
        fns[f"{name}, tf32"] = forward(p, x, False)
        fns[f"{name}, float16"] = forward(p, x, True)
    t = timed(fns, reps)
    px = batch * side * side
    rows = {}
    for k in fns:
        name = k.rsplit(",", 1)[0]
        rows[k] = {"mp_s": px / 1e6 / t[k], "mp_s_median": px / 1e6 / t[f"{k} (median)"],
                   "tflops": fpp[name] * px / t[k] / 1e12, "gflop_per_mp": fpp[name] / 1e3}
    return rows


def compiled_vs_eager(batch: int, side: int, reps: int) -> dict:
    """srpie's presets eager and through ``torch.compile`` (Inductor, freezing), float16."""
    x = torch.rand(batch, 3, side, side, device=DEV).contiguous(memory_format=torch.channels_last)
    fns = {}
    for preset in ("paper", "fast"):
        fns[f"{preset}: eager"] = forward(prepare(srpie(preset), DEV, compile=False), x, True)
        fns[f"{preset}: torch.compile"] = forward(prepare(srpie(preset), DEV, compile=True), x, True)
    t = timed(fns, reps)
    return {k: {"mp_s": batch * side * side / 1e6 / t[k]} for k in fns}


def tiled_photo(h: int, w: int, reps: int) -> dict:
    """``upscale`` of an h x w photo held on the host, float16, by tile and tiles per batch,
    the whole image in one pass on the GPU (the tiling overhead there), and the photo's path
    on the device (``srpie enhance`` on a GPU): 8-bit pixels uploaded, tiled and blended
    there, rounded to 8 bits there and downloaded."""
    x = torch.rand(1, 3, h, w)
    px = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    rows, fns = {}, {}
    for preset in ("paper", "fast"):
        p = _prepare(srpie(preset), DEV)
        o = TileOptions(tile=32 if SMOKE else DEFAULT_TILE, half=True)
        fns[f"{preset}: on the device, tile {o.tile} x{o.tile_batch}"] = (
            lambda p=p, o=o: download(upscale(p, upload(px, DEV), o), 8))
        for tile, tb in ((DEFAULT_TILE, 4), (DEFAULT_TILE, 16), (768, 4)):
            tile = 32 if SMOKE else tile
            fns[f"{preset}: tile {tile} x{tb}"] = (lambda p=p, o=TileOptions(tile=tile, tile_batch=tb, half=True):
                                                   upscale(p, x, o))
        fns[f"{preset}: whole image"] = lambda p=p: upscale(p, x, TileOptions(tile=0, half=True))
    t = timed(fns, reps)
    for k in fns:
        rows[k] = {"mp_s": h * w / 1e6 / t[k], "seconds": t[k]}
    return rows


def half_error() -> dict:
    """PSNR of float16 autocast output against float32 with the shipped SR weights."""
    from PIL import Image

    from srpie_cli.weights import load_model

    model, _ = load_model("srpie-x2-sr")
    model = _prepare(model, DEV)
    img = np.asarray(Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    if SMOKE:
        x = x[..., :64, :64]
    a = upscale(model, x, TileOptions(half=False))
    b = upscale(model, x, TileOptions(half=True))
    mse = float(((a - b) ** 2).mean())
    return {"psnr_half_vs_float32": 10 * np.log10(1 / max(mse, 1e-20)),
            "max_abs_8bit": float((a - b).abs().max() * 255)}


def memory_24mp() -> dict:
    """Device peak and host resident peak while upscaling a 24 MP photo, paper, float16."""
    p = _prepare(srpie("paper"), DEV)
    x = torch.rand(1, 3, *((60, 90) if SMOKE else (4000, 6000)))
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    t = time.perf_counter()
    y = upscale(p, x, TileOptions(half=True))
    seconds = time.perf_counter() - t
    dev_peak = torch.cuda.max_memory_allocated(DEV) / 1e9 if DEV.type == "cuda" else float("nan")
    return {"device_peak_gb": dev_peak, "host_peak_gb": peak_rss_gb(),
            "seconds": seconds, "output_gb": y.numel() * 4 / 1e9}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks that it runs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compiled", action="store_true", help="only: eager against torch.compile (compiles for minutes)")
    args = ap.parse_args(argv)
    global DEV, SMOKE
    DEV, SMOKE = torch.device(args.device), args.smoke
    if DEV.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark measures the GPU path (benchmarks/bench.py measures the CPU)")
    rep: dict = {"device": torch.cuda.get_device_name(DEV) if DEV.type == "cuda" else "cpu", "torch": torch.__version__}
    print(f"# srpie CUDA benchmark: {rep['device']}, torch {rep['torch']}", flush=True)
    if args.compiled:
        batch, side = (2, 32) if SMOKE else (8, DEFAULT_TILE)
        rep["compiled"] = compiled_vs_eager(batch, side, args.reps)
        for k, r in rep["compiled"].items():
            print(f"{k:40s} {r['mp_s']:8.2f} MP/s", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rep, indent=1))
        return rep
    rep["peak_tflops"] = matmul_peaks()
    print("matmul peak TFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rep["peak_tflops"].items()), flush=True)

    batch, side = (2, 32) if SMOKE else (8, DEFAULT_TILE)
    rep["network"] = networks_alone(batch, side, args.reps)
    print(f"\n## network alone, {batch} tiles of {side} px")
    print(f"{'':40s} {'MP/s':>8s} {'median':>8s} {'GFLOP/MP':>9s} {'TFLOP/s':>8s}")
    for k, r in rep["network"].items():
        print(f"{k:40s} {r['mp_s']:8.2f} {r['mp_s_median']:8.2f} {r['gflop_per_mp']:9.0f} {r['tflops']:8.2f}", flush=True)

    rep["tiled_12mp"] = tiled_photo(*((48, 64) if SMOKE else (3000, 4000)), max(2, args.reps // 2))
    print("\n## upscale of a 12 MP photo held on the host or on the device, float16")
    for k, r in rep["tiled_12mp"].items():
        print(f"{k:40s} {r['mp_s']:8.2f} MP/s {r['seconds']:7.3f} s", flush=True)

    rep["half"] = half_error()
    print(f"\nfloat16 vs float32 (srpie-x2-sr, astronaut.jpg): {rep['half']['psnr_half_vs_float32']:.1f} dB, "
          f"max {rep['half']['max_abs_8bit']:.2f} levels", flush=True)
    rep["memory_24mp"] = m = memory_24mp()
    print(f"24 MP paper float16: device peak {m['device_peak_gb']:.2f} GB, host peak {m['host_peak_gb']:.2f} GB "
          f"(process so far), {m['seconds']:.1f} s", flush=True)

    net = rep["network"]
    rep["ratios"] = {
        "paper / RRDBNet x2, float16, per MP": net["srpie paper, float16"]["mp_s"]
        / net["RRDBNet x2 (Real-ESRGAN x2plus), float16"]["mp_s"],
        "paper / RRDBNet x2, tf32, per MP": net["srpie paper, tf32"]["mp_s"]
        / net["RRDBNet x2 (Real-ESRGAN x2plus), tf32"]["mp_s"],
        "fast / paper, float16": net["srpie fast, float16"]["mp_s"] / net["srpie paper, float16"]["mp_s"],
        "paper float16 / tf32": net["srpie paper, float16"]["mp_s"] / net["srpie paper, tf32"]["mp_s"],
        "paper tiled (384 x4) / whole image, 12 MP time": rep["tiled_12mp"]["paper: whole image"]["mp_s"]
        / next(v for k, v in rep["tiled_12mp"].items() if k.startswith("paper: tile"))["mp_s"],
        "paper on the device / on the host (384 x4), 12 MP speed": next(
            v for k, v in rep["tiled_12mp"].items() if k.startswith("paper: on the device"))["mp_s"]
        / next(v for k, v in rep["tiled_12mp"].items() if k.startswith("paper: tile"))["mp_s"],
    }
    print("\n## ratios")
    for k, v in rep["ratios"].items():
        print(f"{k}: {v:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    main()
