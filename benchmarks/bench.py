"""srpie speed benchmark: throughput, achieved FLOP/s, peers, tiling overhead, peak memory.

    python benchmarks/bench.py --quick          # CI smoke run: tiny sizes, seconds
    python benchmarks/bench.py                  # full run by hand
    python benchmarks/bench.py --json out.json  # also write every figure as JSON
    python benchmarks/bench.py --cpu-default --threads 2  # the CPU default against IMDN x2, per MP

Everything that is compared is measured in this one process, interleaved round-robin
(A B C A B C ...), and the best of the repeats is reported next to the median: on a
shared or noisy machine the ratios hold even where the absolute figures drop.
Peak memory is the exception: each figure is the peak resident set of a child process that
runs one image through ``upscale``, so the figures do not contaminate each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import PEERS  # noqa: E402
from srpie_cli.accel import prepare  # noqa: E402
from srpie_cli.model import DeepSRPIE, config_for, count_parameters  # noqa: E402
from srpie_cli.tiling import CPU_TILE, DEFAULT_OVERLAP, DEFAULT_TILE, TileOptions, spans, upscale  # noqa: E402

PRESETS = ("paper", "fast")


@dataclass(frozen=True)
class Sizes:
    """What one run measures; QUICK and FULL below."""

    tile: int  # side of the network-alone input (the default tile in full mode)
    peer: int  # side of the peers' input (RRDBNet is huge: per-megapixel figures suffice)
    image: tuple[int, int]  # (h, w) of the end-to-end photo and of tiled vs whole
    tile_opts: TileOptions  # tiling of that photo
    bicubic: tuple[int, int]  # (h, w) for the Pillow floor
    matmul: int  # side of the float32 matmul that measures the peak
    reps: int  # timed repeats of everything (interleaved), after one warm-up
    memory: tuple[tuple[str, int, int, str], ...] = ()  # (label, h, w, preset) child runs
    compile: bool = True
    name: str = "full"
    sweep: tuple[int, ...] = ()  # tile sides for the cache sweep
    cpu_tile: int = CPU_TILE  # the tile srpie picks on a CPU when none is named


QUICK = Sizes(name="quick", sweep=(32, 48), cpu_tile=32, tile=48, peer=32, image=(72, 96), tile_opts=TileOptions(tile=48, overlap=8), bicubic=(256, 256),
              matmul=256, reps=2, memory=(("tiny", 40, 56, "fast"),), compile=False)
FULL = Sizes(sweep=(128, 192, 256, 384, 512), tile=DEFAULT_TILE, peer=128, image=(640, 832), tile_opts=TileOptions(), bicubic=(3000, 4000),
             matmul=2048, reps=3, memory=(("12 MP", 3000, 4000, "fast"), ("24 MP", 4000, 6000, "fast")))


# ----------------------------------------------------------------------------- measuring

def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, dict]:
    """Seconds per call of every function: one warm-up each (its time is reported as
    ``first``, which includes any compiling), then ``reps`` rounds interleaved."""
    out = {name: {"first": _seconds(fn), "runs": []} for name, fn in fns.items()}
    for _ in range(reps):
        for name, fn in fns.items():
            out[name]["runs"].append(_seconds(fn))
    for r in out.values():
        r["best"], r["median"] = min(r["runs"]), statistics.median(r["runs"])
    return out


def _seconds(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_pixel(model: torch.nn.Module, size: int = 32) -> float:
    """FLOPs (2 per multiply-add) per input pixel, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / (size * size)


def machine() -> dict:
    """nproc, CPU model and SIMD, torch version, load, and the theoretical float32 peak
    where the CPU model allows deriving it (cores x GHz x FLOPs per cycle)."""
    info = {"nproc": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["cpu"] = fields.get("model name", info["cpu"])
    flags = set(fields.get("flags", "").split())
    info["simd"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags)
    mhz = float(fields.get("cpu MHz", 0) or 0)
    info["mhz"] = mhz
    # float32 FLOPs per cycle per core: two FMA pipes of 8 (AVX2, and Zen 4's double-pumped
    # AVX-512) or 16 lanes (AVX-512 with two 512-bit FMA units); 2 FLOPs per FMA
    if "fma" in flags and mhz:
        lanes = 8
        amd = fields.get("vendor_id") == "AuthenticAMD"
        if "avx512f" in flags and not amd:
            lanes = 16  # Intel server cores with two 512-bit FMA units (one on some SKUs)
        info["flops_per_cycle"] = 2 * 2 * lanes
        info["peak_gflops_theory"] = (os.cpu_count() or 1) * mhz / 1e3 * info["flops_per_cycle"]
    try:
        info["loadavg"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def matmul_peak(n: int, reps: int) -> float:
    """Achievable float32 GFLOP/s: the best of a few n x n matmuls."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    best = min(timed({"mm": lambda: a @ b}, reps)["mm"]["runs"])
    return 2 * n ** 3 / best / 1e9


def srpie(preset: str) -> DeepSRPIE:
    torch.manual_seed(0)
    return DeepSRPIE(config_for(preset)).eval()


# ----------------------------------------------------------------------------- sections

def network_alone(sz: Sizes, peak: float) -> dict:
    """The network on one tile, no tiling: each inference setting, interleaved."""
    x = torch.rand(1, 3, sz.tile, sz.tile)
    x4 = torch.rand(4, 3, sz.tile, sz.tile)
    rows = {}
    for preset in PRESETS:
        m = srpie(preset)
        mcl = srpie(preset).to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        prepared = prepare(srpie(preset), "cpu", compile=sz.compile)
        fns = {
            "eager, no_grad (naive)": _no_grad(m, x),
            "eager, inference_mode": _inference(m, x),
            "eager, 4 tiles a batch (per tile)": _inference(m, x4),
            "channels_last": _inference(mcl, xcl),
            "1 thread": _one_thread(m, x),
            "prepared" + (" (torch.compile)" if prepared.compiled else " (eager)"): _inference(prepared, x),
        }
        res = timed(fns, sz.reps)
        batch4 = "eager, 4 tiles a batch (per tile)"
        for k in ("first", "best", "median"):
            res[batch4][k] /= 4
        fpp = flops_per_pixel(m)
        for name, r in res.items():
            rows[f"{preset}: {name}"] = _rates(r, sz.tile * sz.tile, fpp, peak)
    return rows


def tile_sweep(sz: Sizes, peak: float) -> dict:
    """Eager speed per processed pixel by tile side (cache: a 64-channel 384 px feature map
    is 38 MB, a 192 px one 9 MB), and net of the overlap a 12 MP photo then costs."""
    rows = {}
    for preset in PRESETS:
        m = srpie(preset)
        fpp = flops_per_pixel(m)
        res = timed({t: _inference(m, torch.rand(1, 3, t, t)) for t in sz.sweep}, sz.reps)
        for t, r in res.items():
            row = _rates(r, t * t, fpp, peak)
            row["mp_s_12mp"] = row["mp_s"] / tile_overhead(3000, 4000, t)  # input MP/s of a 12 MP photo
            rows[f"{preset}: tile {t}"] = row
    return rows


def peers_alone(sz: Sizes, peak: float) -> dict:
    x = torch.rand(1, 3, sz.peer, sz.peer)
    models = {name: cls().eval() for name, cls in PEERS.items()}
    models["srpie paper"] = srpie("paper")
    models["srpie fast"] = srpie("fast")
    res = timed({name: _inference(m, x) for name, m in models.items()}, sz.reps)
    return {name: {**_rates(res[name], sz.peer * sz.peer, flops_per_pixel(m), peak),
                   "params": count_parameters(m)} for name, m in models.items()}


def tiled_runs(sz: Sizes, peak: float) -> dict:
    """``upscale`` on a photo-sized tensor: the naive baseline (eager, the default batch of
    4 tiles), the prepared model, and the whole image in one pass (the tiling overhead)."""
    h, w = sz.image
    x = torch.rand(1, 3, h, w)
    whole = TileOptions(tile=0, overlap=sz.tile_opts.overlap)
    fns, fpp = {}, {}
    for preset in PRESETS:
        m = srpie(preset)
        p = prepare(srpie(preset), "cpu", compile=sz.compile)
        fpp[preset] = flops_per_pixel(m)
        fns[f"{preset}: eager (naive)"] = _upscale(m, x, sz.tile_opts)
        one_shape = replace(sz.tile_opts, fit=not p.compiled)  # as srpie enhance tiles for this model
        fns[f"{preset}: prepared"] = _upscale(p, x, one_shape)
        fns[f"{preset}: eager, whole image"] = _upscale(m, x, whole)
        if sz.cpu_tile != sz.tile_opts.tile:
            fns[f"{preset}: prepared, tile {sz.cpu_tile}"] = _upscale(p, x, replace(one_shape, tile=sz.cpu_tile))
    res = timed(fns, sz.reps)
    return {name: _rates(r, h * w, fpp[name.split(":")[0]], peak) for name, r in res.items()}


def end_to_end(sz: Sizes, peak: float) -> dict:
    """Decode a camera JPEG (EXIF, ICC), run the prepared network tiled, encode the JPEG with
    its metadata: the work ``srpie enhance`` does per photo (batch overlaps decode and
    encode with inference on worker threads; here they are timed one after the other)."""
    from srpie_cli import images
    from srpie_cli.inference import Settings, enhance_photo

    h, w = sz.image
    rng = np.random.default_rng(0)
    pixels = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    photo = Image.fromarray(pixels).resize((w, h), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS R6", 1  # Make, Model, Orientation
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.jpg", Path(tmp) / "out.jpg"
        photo.save(src, "JPEG", quality=95, exif=exif)
        t = sz.tile_opts
        settings = Settings(tile=t.tile, overlap=t.overlap)
        for preset in PRESETS:
            model = prepare(srpie(preset), "cpu", compile=sz.compile)
            enhance_photo(model, images.read_photo(src), settings)  # warm-up (compiles)
            stages = {"decode": [], "inference": [], "encode": []}
            for _ in range(sz.reps):
                t0 = time.perf_counter()
                ph = images.read_photo(src)
                t1 = time.perf_counter()
                out = enhance_photo(model, ph, settings)
                t2 = time.perf_counter()
                images.write_photo(dst, out, "jpeg", 95)
                t3 = time.perf_counter()
                for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
                    stages[k].append(v)
            total = [sum(s) for s in zip(*stages.values())]
            best = min(range(len(total)), key=total.__getitem__)
            rows[preset] = {"mp_s": h * w / 1e6 / total[best], "seconds": total[best],
                            **{k: v[best] for k, v in stages.items()},
                            "io_share": 1 - stages["inference"][best] / total[best]}
    return rows


def bicubic_floor(sz: Sizes) -> dict:
    h, w = sz.bicubic
    im = Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8))
    r = timed({"bicubic": lambda: im.resize((2 * w, 2 * h), Image.BICUBIC)}, sz.reps)["bicubic"]
    return {"mp_s": h * w / 1e6 / r["best"], "seconds": r["best"], "size": f"{w}x{h}"}


def tile_overhead(h: int, w: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, fit: bool = True) -> float:
    """Pixels the network processes tiled / pixels it processes in one pass (both padded by
    the overlap), from the tile layout alone: the FLOP overhead of tiling. ``fit``: the
    fitted layout eager runs use; without, the one-shape layout of a compiled network."""
    hp, wp = h + 2 * overlap, w + 2 * overlap
    tiled = (sum(b - a for a, b in spans(hp, tile, overlap, fit)) *
             sum(b - a for a, b in spans(wp, tile, overlap, fit)))
    return tiled / (hp * wp)


def cuda_runs(sz: Sizes) -> dict:
    """CUDA, when present: the prepared model tiled in float32 and in float16 autocast, the
    default batch of tiles; the image stays on the host, so the device holds tiles only."""
    dev = torch.device("cuda")
    h, w = sz.image
    x = torch.rand(1, 3, h, w)
    fns, fpp = {}, {}
    for preset in PRESETS:
        fpp[preset] = flops_per_pixel(srpie(preset))
        p = prepare(srpie(preset), dev)
        fns[f"{preset}: cuda float32"] = _upscale(p, x, sz.tile_opts)
        fns[f"{preset}: cuda float16"] = _upscale(p, x, replace(sz.tile_opts, half=True))
    torch.cuda.reset_peak_memory_stats(dev)
    res = timed(fns, sz.reps)
    rows = {name: _rates(r, h * w, fpp[name.split(":")[0]], float("nan")) for name, r in res.items()}
    rows["device peak GB"] = torch.cuda.max_memory_allocated(dev) / 1e9
    rows["device"] = torch.cuda.get_device_name(dev)
    return rows


def peak_memory(h: int, w: int, preset: str, compile: bool) -> dict:
    """Peak resident memory of a child process running one h x w image through ``upscale``
    at the default tile with the prepared model."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", str(h), str(w), preset,
           "--no-compile" if not compile else "--compile", "--threads", str(torch.get_num_threads())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_gb() -> float:
    """Peak resident set of this process image. Linux: VmHWM, the high-water mark of the
    address space since exec. ``ru_maxrss`` would do elsewhere, but on Linux it keeps the
    parent's resident set at fork (exec accounts the forked copy), which here is the
    benchmark's own gigabytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _child_memory(h: int, w: int, preset: str, compile: bool, naive: bool = False) -> None:
    base = peak_rss_gb()
    model = prepare(srpie(preset), "cpu", compile=compile) if not naive else srpie(preset)
    x = torch.rand(1, 3, h, w)
    t = time.perf_counter()
    y = upscale(model, x)
    seconds = time.perf_counter() - t
    print(json.dumps({"peak_gb": peak_rss_gb(), "before_gb": base, "seconds": seconds,
                      "output_gb": y.numel() * 4 / 1e9, "compiled": getattr(model, "compiled", False)}))


# ----------------------------------------------------------------------------- helpers

def _rates(r: dict, pixels: int, fpp: float, peak: float) -> dict:
    gflops = fpp * pixels / r["best"] / 1e9
    return {"mp_s": pixels / 1e6 / r["best"], "mp_s_median": pixels / 1e6 / r["median"], "seconds": r["best"],
            "first_s": r["first"], "gflop_per_mp": fpp * 1e6 / 1e9, "gflops": gflops,
            "of_peak": gflops / peak if peak else float("nan")}


def _inference(model, x):
    def fn():
        with torch.inference_mode():
            return model(x)
    return fn


def _no_grad(model, x):
    def fn():
        with torch.no_grad():
            return model(x)
    return fn


def _one_thread(model, x):
    def fn():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return model(x)
        finally:
            torch.set_num_threads(n)
    return fn


def _upscale(model, x, opts):
    return lambda: upscale(model, x, opts)


def cpu_default_vs_peer(side: int = 2 * CPU_TILE - DEFAULT_OVERLAP, reps: int = 3, out=print) -> dict:
    """The CPU default (``srpie enhance`` with no model named: the shipped weights, compiled,
    in the precision ``auto`` picks) against IMDN x2 (random weights) per megapixel, both
    through ``upscale`` in 192 px tiles of one shape on a ``side`` x ``side`` image: IMDN
    eager, as its authors run it, and prepared the same way as srpie (compiled, the same
    precision). Interleaved, best of ``reps``."""
    from benchmarks.peers import IMDN
    from srpie_cli.inference import Settings, load

    e = load(Settings(device="cpu", compile="on"))
    bf16 = e.settings.precision == "bfloat16"
    x = torch.rand(1, 3, side, side)
    opts = TileOptions(tile=CPU_TILE, fit=False)
    fns = {f"srpie {e.settings.model} ({e.settings.precision}, compiled)": _upscale(e.model, x, opts),
           "IMDN x2 (float32, eager)": _upscale(prepare(IMDN(), "cpu", compile=False), x, opts),
           f"IMDN x2 ({e.settings.precision}, compiled)": _upscale(prepare(IMDN(), "cpu", compile=True, bf16=bf16),
                                                                   x, opts)}
    res = timed(fns, reps)
    rows = {name: {"mp_s": side * side / 1e6 / r["best"], "seconds": r["best"], "first_s": r["first"]}
            for name, r in res.items()}
    first = next(iter(rows.values()))["mp_s"]
    for name, r in rows.items():
        out(f"{name:40s} {r['mp_s']:.4g} input MP/s  ({r['seconds']:.3g} s a run, first {r['first_s']:.3g} s)"
            f"  srpie against it: {first / r['mp_s']:.3g}x")
    return rows


# ----------------------------------------------------------------------------- report

def run(sz: Sizes, out: Callable[[str], None] = print) -> dict:
    """Measure everything for ``sz``; prints the report through ``out`` and returns the
    figures as a dict."""
    report: dict = {"machine": machine(), "cpu_tile": sz.cpu_tile, "tile": sz.tile_opts.tile}
    mach = report["machine"]
    out(f"# srpie benchmark ({sz.name})")
    out(f"machine: {mach['cpu']}, nproc {mach['nproc']}, torch {mach['torch']} ({mach['threads']} threads), "
        f"{mach.get('simd', '')}, load average {mach.get('loadavg', float('nan')):.1f}")
    peak = report["peak_gflops"] = matmul_peak(sz.matmul, sz.reps + 1)
    theory = mach.get("peak_gflops_theory")
    out(f"float32 peak: {peak:.0f} GFLOP/s measured ({sz.matmul}^2 matmul)"
        + (f"; theoretical {theory:.0f} = {mach['nproc']} cores x {mach['mhz'] / 1e3:.2f} GHz x "
           f"{mach['flops_per_cycle']} FLOP/cycle" if theory else ""))

    out(f"\n## network alone, one {sz.tile}x{sz.tile} tile (input MP/s, best of {sz.reps})")
    report["network"] = network_alone(sz, peak)
    _table(out, report["network"])

    if sz.sweep:
        out("\n## tile size (cache), eager; last column: input MP/s of a 12 MP photo net of the overlap")
        report["sweep"] = tile_sweep(sz, peak)
        _table(out, report["sweep"], extra="mp_s_12mp")

    out(f"\n## peers, {sz.peer}x{sz.peer} input, eager inference_mode")
    report["peers"] = peers_alone(sz, peak)
    _table(out, report["peers"], params=True)

    h, w = sz.image
    out(f"\n## tiled upscale of a {w}x{h} image (tile {sz.tile_opts.tile}, overlap {sz.tile_opts.overlap})")
    report["tiled"] = tiled_runs(sz, peak)
    _table(out, report["tiled"])

    out(f"\n## end to end: JPEG decode + prepared network + JPEG encode with EXIF, {w}x{h}")
    report["e2e"] = end_to_end(sz, peak)
    for preset, r in report["e2e"].items():
        out(f"{preset:6s} {r['mp_s']:8.4f} MP/s  {r['seconds']:7.2f} s  decode {r['decode']:.3f} s, "
            f"inference {r['inference']:.2f} s, encode {r['encode']:.3f} s (I/O {100 * r['io_share']:.1f}%)")

    if torch.cuda.is_available():
        out(f"\n## CUDA: tiled upscale of a {w}x{h} image")
        report["cuda"] = cuda_runs(sz)
        out(f"device {report['cuda']['device']}, device peak {report['cuda']['device peak GB']:.2f} GB")
        _table(out, {k: v for k, v in report["cuda"].items() if isinstance(v, dict)})

    report["bicubic"] = b = bicubic_floor(sz)
    out(f"\nbicubic floor (Pillow, {b['size']}): {b['mp_s']:.1f} MP/s")

    sizes = (("12 MP 4000x3000", 3000, 4000), ("24 MP 6000x4000", 4000, 6000), (f"{w}x{h}", h, w))
    for fit, what in ((True, "fitted tiles (eager)"), (False, "one tile shape (compiled)")):
        report["tile_overhead" if fit else "tile_overhead_one_shape"] = o = {
            label: tile_overhead(hh, ww, fit=fit) for label, hh, ww in sizes}
        out(f"\ntiling overhead from the layout, {what}, {DEFAULT_TILE} px (pixels through the network, tiled / whole):")
        out(", ".join(f"{k}: +{100 * (v - 1):.1f}%" for k, v in o.items()))

    if sz.memory:
        out("\n## peak resident memory, child process, default tile, prepared model")
        report["memory"] = {}
        for label, mh, mw, preset in sz.memory:
            r = report["memory"][label] = {**peak_memory(mh, mw, preset, sz.compile), "preset": preset}
            out(f"{label} ({mw}x{mh}, {preset}): peak {r['peak_gb']:.2f} GB (after imports {r['before_gb']:.2f} GB, "
                f"output tensor {r['output_gb']:.2f} GB, "
                f"{r['seconds']:.0f} s{', compiled' if r['compiled'] else ''})")

    report["ratios"] = ratios(report)
    out("\n## against the targets")
    for k, v in report["ratios"].items():
        out(f"{k}: {v:.2f}")
    return report


def ratios(rep: dict) -> dict:
    net, tiled, peers = rep["network"], rep["tiled"], rep["peers"]
    cpu, tile = rep["cpu_tile"], rep["tile"]
    prepared = next(k for k in net if k.startswith("paper: prepared"))
    fast_prepared = next(k for k in net if k.startswith("fast: prepared"))
    r = {
        "paper prepared / eager naive, tiled upscale (target >= 2)":
            tiled["paper: prepared"]["mp_s"] / tiled["paper: eager (naive)"]["mp_s"],
        "paper prepared / eager naive, network alone":
            net[prepared]["mp_s"] / net["paper: eager, no_grad (naive)"]["mp_s"],
        "fast / paper, prepared, tiled upscale (target >= 3)":
            tiled["fast: prepared"]["mp_s"] / tiled["paper: prepared"]["mp_s"],
        "fast / paper, prepared, network alone": net[fast_prepared]["mp_s"] / net[prepared]["mp_s"],
        "paper eager / RRDBNet x2 eager, per MP (target >= 5)":
            peers["srpie paper"]["mp_s"] / peers["RRDBNet x2 (Real-ESRGAN x2plus)"]["mp_s"],
        "paper prepared (tile) / RRDBNet x2 eager (peer input), per MP":
            net[prepared]["mp_s"] / peers["RRDBNet x2 (Real-ESRGAN x2plus)"]["mp_s"],
        "tiled / whole image time, paper eager (target <= 1.15)":
            tiled["paper: eager, whole image"]["mp_s"] / tiled["paper: eager (naive)"]["mp_s"],
        "paper prepared GFLOP/s / measured peak": net[prepared]["of_peak"],
    }
    if f"paper: prepared, tile {cpu}" in tiled:
        r[f"paper prepared at the CPU tile {cpu} / eager naive at {tile}, tiled upscale (target >= 2)"] = \
            tiled[f"paper: prepared, tile {cpu}"]["mp_s"] / tiled["paper: eager (naive)"]["mp_s"]
    if "memory" in rep:
        r.update({f"peak GB, {k} {v['preset']} (target < 3 for 24 MP)": v["peak_gb"] for k, v in rep["memory"].items()})
    return r


def _table(out, rows: dict, params: bool = False, extra: str | None = None) -> None:
    out(f"{'':44s} {'MP/s':>8s} {'median':>8s} {'s':>7s} {'first s':>8s} {'GFLOP/MP':>9s} {'GFLOP/s':>8s} {'of peak':>8s}"
        + (f" {'params':>9s}" if params else "") + (f" {extra:>10s}" if extra else ""))
    for name, r in rows.items():
        out(f"{name:44s} {r['mp_s']:8.4f} {r['mp_s_median']:8.4f} {r['seconds']:7.2f} {r['first_s']:8.2f} "
            f"{r['gflop_per_mp']:9.0f} {r['gflops']:8.1f} {100 * r['of_peak']:7.1f}%"
            + (f" {r['params'] / 1e6:8.2f}M" if params else "") + (f" {r[extra]:10.4f}" if extra else ""))


def main(argv: list[str] | None = None, sizes: Sizes | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run (seconds)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                    help="prepared model without torch.compile")
    ap.add_argument("--compile", dest="compile", action="store_true", help="prepared model with torch.compile")
    ap.add_argument("--threads", type=int, help="intra-op CPU threads (default: PyTorch's, one per core)")
    ap.add_argument("--child-memory", nargs=3, metavar=("H", "W", "PRESET"), help=argparse.SUPPRESS)
    ap.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)  # child: the eager model, unprepared
    ap.add_argument("--cpu-default", action="store_true", help="only the CPU default against IMDN x2, per MP")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_default:
        return cpu_default_vs_peer()
    if args.child_memory:
        h, w, preset = args.child_memory
        _child_memory(int(h), int(w), preset, bool(args.compile), args.naive)
        return {}
    sz = sizes or (QUICK if args.quick else FULL)
    if args.compile is not None:
        sz = Sizes(**{**sz.__dict__, "compile": args.compile})
    report = run(sz)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
