"""A whole shoot end to end: decode, network, encode and metadata, as `srpie enhance` runs it.

    python benchmarks/shoot.py --smoke                      # seconds: tiny photos, CI
    python benchmarks/shoot.py --photos 4 --megapixels 2    # by hand
    python benchmarks/shoot.py --models srpie-x2 srpie-x2-fast --device cuda --photos 20 --megapixels 24
    python benchmarks/shoot.py --models srpie-x2-fast --jobs 1 2 --photos 12 --megapixels 0.5   # --jobs N
    python benchmarks/shoot.py --models srpie-x2-fast --jobs 1 2 --ray local --photos 12        # Ray actors
    python benchmarks/shoot.py --models srpie-x2@float32 srpie-x2-fast@bfloat16 --compile on \
        --threads 2 --repeat 2 --reference --photos 2 --megapixels 3    # the CPU default against today's
    python benchmarks/shoot.py --device cuda --photos 20 --megapixels 24 --models srpie-x2 \
        --variants before now now+half now+half+compile --repeat 2      # the GPU path (benchmarks/README.md)

Each model (the first is the baseline, today's default) enhances the same synthetic shoot:
camera-like JPEGs with EXIF, an ICC profile and detail at every scale, written at 2x as
JPEG. The shoot goes through ``batch.enhance``, the code path of `srpie enhance`, so the
figures include the work that is not the network: decode, tiling and blending, the check
before the network, encode, the write and its verification. Printed per model: input MP/s
of the whole shoot, where the time went (decode, network, encode: each photo's timings from
the run's own report), and the ratio against the baseline measured in the same process.
Outputs of each model are compared with the baseline's only when both are the same model
(a precision or compile change): PSNR in dB. ``--jobs 1 2`` runs each model with each number
of worker processes (``srpie enhance --jobs``; with ``--ray ADDRESS``, that many Ray actors
instead), the first row of a model being its baseline; each row says whether its outputs
are byte for byte the first row's. ``--precision float32 bfloat16`` runs each model in each
precision (``srpie enhance --precision``; ``NAME@PRECISION`` in ``--models`` sets one model's
alone); ``--reference`` scores every row's outputs (PSNR, dB, the worst of the first
``--reference-photos`` photos) against float32 eager of the same model, the exact path;
``--repeat N`` runs each row N times and keeps the fastest (a shared machine; the later runs
also find Inductor's kernels in its disk cache, so they time the work, not the compiling).

``--variants`` runs each model in each of these: ``before``, the photo path as it was (tiles
cut and blended on the host, copied to the device and back a batch at a time, the output
rounded on the host, two decode/encode threads); ``now``, the device's defaults (on a GPU the
photo uploaded once, tiles, blending and rounding on the device, ``defaults.IO_THREADS``
threads); and either with ``+half`` (float16 autocast, ``srpie enhance --half``),
``+compile`` (``--compile on``) or ``+ioN`` (N decode/encode threads) added. The default is
``before now`` on CUDA and ``now`` on a CPU, where the two are the same arithmetic in the same
threads. Each row also says how much of the run the network was busy (the rest is loading,
compiling and waiting for the decoder or the encoder), and on CUDA the device's peak memory;
the metadata's share (the check before the network and the cleaning for the output, which
the decode and encode figures include) is timed apart on the first photo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from srpie_cli import batch, defaults  # noqa: E402
from srpie_cli.inference import Settings  # noqa: E402

DISTINCT = 4  # photos made; the others are copies (a 24 MP frame takes seconds to make, a copy decodes alike)


def make_shoot(folder: Path, photos: int, megapixels: float, seed: int = 0) -> float:
    """``photos`` JPEGs of about ``megapixels`` each (3:2), with EXIF and an sRGB profile, the
    first ``DISTINCT`` made and the rest copies of them; returns the total MP."""
    import piexif
    from PIL import ImageCms

    folder.mkdir(parents=True, exist_ok=True)
    w = int(round((megapixels * 1e6 * 1.5) ** 0.5 / 8)) * 8
    h = int(round(w / 1.5 / 8)) * 8
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    exif = piexif.dump({"0th": {piexif.ImageIFD.Make: b"Canon", piexif.ImageIFD.Model: b"EOS R5"},
                        "Exif": {piexif.ExifIFD.ExposureTime: (1, 125)}})
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for i in range(photos):
        if i >= DISTINCT:
            shutil.copyfile(folder / f"IMG_{i % DISTINCT:04d}.jpg", folder / f"IMG_{i:04d}.jpg")
            continue
        base = 0.5 + 0.25 * np.sin(xx / (17 + i) + rng.random()) * np.cos(yy / (23 + i))
        px = np.stack([base, base * 0.9 + 0.05, 1 - base * 0.8], -1)
        px += rng.normal(0, 0.02, px.shape).astype(np.float32)
        img = Image.fromarray((np.clip(px, 0, 1) * 255).astype(np.uint8))
        img.save(folder / f"IMG_{i:04d}.jpg", quality=92, exif=exif, icc_profile=icc)
    return photos * w * h / 1e6


def run_one(shoot: Path, out: Path, settings: Settings, pool=None, repeat: int = 1) -> dict:
    """The shoot through ``batch.enhance``; with ``repeat`` > 1 the fastest of that many runs."""
    if repeat > 1:
        rows = []
        for _ in range(repeat):
            shutil.rmtree(out, ignore_errors=True)
            rows.append(run_one(shoot, out, settings, pool))
        return min(rows, key=lambda r: r["seconds"]) | {"all_seconds": [r["seconds"] for r in rows]}
    cuda = settings.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    outcome = batch.enhance(inputs=[shoot], output=out, settings=settings, pool=pool)
    seconds = time.perf_counter() - t
    done = [r for r in outcome.results if r.status == "done"]
    if len(done) != len(outcome.results):
        raise SystemExit(f"{settings.model}: not every photo was done: {[r.reason for r in outcome.results]}")
    mp = sum(r.megapixels for r in done)
    split = {k: sum(r.timings.get(k, 0.0) for r in done) for k in ("decode", "enhance", "encode")}
    return {"model": settings.model, "precision": settings.precision, "seconds": round(seconds, 3),
            "megapixels": round(mp, 3),
            "mp_s": mp / seconds, "split_seconds": {k: round(v, 3) for k, v in split.items()},
            "network_busy": split["enhance"] / seconds,  # of the wall time: the rest is load and waiting
            "device_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda and pool is None else None,
            "network_each": [r.timings.get("enhance") for r in done]}  # the first includes any compiling


def psnr_between(a: Path, b: Path) -> float:
    """The worst PSNR (dB) of the photos of ``a`` against the same names in ``b`` (the
    ``DISTINCT`` first: the others are copies)."""
    scores = []
    for f in sorted(a.glob("*.jpg"))[:DISTINCT]:
        x = np.asarray(Image.open(f), dtype=np.float32)
        y = np.asarray(Image.open(b / f.name), dtype=np.float32)
        mse = float(np.mean((x - y) ** 2, dtype=np.float64))
        scores.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return float(min(scores))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[defaults.MODEL, "srpie-x2-fast"],
                    help="first: the baseline (default: today's default model)")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--megapixels", type=float, default=2.0, help="input size of each photo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", default="off", choices=("auto", "on", "off"))
    ap.add_argument("--smoke", action="store_true", help="2 photos of 0.05 MP: checks the code path only")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1], metavar="N",
                    help="worker processes (or Ray actors with --ray) for each model, e.g. --jobs 1 2")
    ap.add_argument("--ray", metavar="ADDRESS", help='Ray actors instead of processes: "local", "auto" or ray://...')
    ap.add_argument("--precision", nargs="+", default=["float32"], choices=defaults.PRECISIONS,
                    help="each model in each precision (srpie enhance --precision); NAME@PRECISION sets one's")
    ap.add_argument("--repeat", type=int, default=1, help="run each row this many times, keep the fastest")
    ap.add_argument("--reference", action="store_true",
                    help="PSNR of each row against float32 eager of the same model (the exact path)")
    ap.add_argument("--reference-photos", type=int, default=1, help="photos the reference is made of")
    ap.add_argument("--variants", nargs="+", metavar="V",
                    help="before, now, each with +half, +compile or +ioN (default: before now on CUDA, now on a CPU)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.photos, args.megapixels = 2, 0.05
    args.variants = args.variants or (["before", "now"] if args.device.startswith("cuda") else ["now"])
    for v in args.variants:
        variant_settings(v)  # refused before the shoot is made
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        total = make_shoot(tmp / "shoot", args.photos, args.megapixels)
        print(f"shoot: {args.photos} photos, {total:.2f} MP in all, device {args.device}")
        rows = []
        runs = [(*_model_precision(m, p), j, v) for m in args.models
                for p in (args.precision if "@" not in m else [None]) for v in args.variants for j in args.jobs]
        for i, (name, precision, overlap, jobs, variant) in enumerate(runs):
            s = Settings(**{"model": name, "device": args.device, "threads": args.threads, "compile": args.compile,
                            "precision": precision} | variant_settings(variant)
                         | ({} if overlap is None else {"overlap": overlap}))
            row = run_one(tmp / "shoot", tmp / f"out{i}", s, _pool(jobs, args.ray), args.repeat)
            row["label"] = f"{name} {s.precision} overlap {s.overlap}" + (f" {variant}" if len(args.variants) > 1 else "")
            row["variant"] = variant
            if len(args.jobs) > 1 or args.ray:
                row["jobs"] = jobs
                first = runs.index((name, precision, overlap, args.jobs[0], variant))
                row["identical_to_first"] = _same(tmp / f"out{first}", tmp / f"out{i}")
                row["label"] += f" x{jobs} {'actors' if args.ray else 'jobs'}"
            rows.append(row)
            sp = row["split_seconds"]
            print(f"{row['label']:36s} {row['mp_s']:.4g} input MP/s  {row['seconds']:.3g} s  "
                  f"(decode {sp['decode']:.3g} s, network {sp['enhance']:.3g} s, encode {sp['encode']:.3g} s)"
                  + ("" if "jobs" not in row else f"  identical: {row['identical_to_first']}")
                  + f"  network busy {row['network_busy']:.0%} of the run"
                  + ("" if row["device_peak_gb"] is None else f", device peak {row['device_peak_gb']:.2f} GB")
                  + f"  network per photo: {', '.join(f'{t:.3g}' for t in row['network_each'])} s", flush=True)
        base = rows[0]
        ratios = {r["label"]: r["mp_s"] / base["mp_s"] for r in rows[1:]}
        for name, ratio in ratios.items():
            print(f"{name} against {base['label']}: {ratio:.3g}x")
        same = [i for i, r in enumerate(rows[1:], 1) if r["model"] == base["model"]]
        psnr = {i: psnr_between(tmp / "out0", tmp / f"out{i}") for i in same}
        for i, v in psnr.items():
            print(f"{rows[i]['label']} against {base['label']}: {v:.1f} dB PSNR (the worst photo)")
        meta = metadata_seconds(next(iter(sorted((tmp / "shoot").glob("*.jpg")))), defaults.QUALITY)
        print(f"metadata per photo (inside decode and encode): the check before the network {meta['check']:.3g} s, "
              f"cleaning for the output {meta['clean']:.3g} s", flush=True)
        if args.reference:
            _score(tmp, rows, args)
    report = {"photos": args.photos, "megapixels_each": args.megapixels, "device": args.device, "rows": rows,
              "ratios": ratios, "psnr_vs_baseline": psnr, "metadata_seconds": meta}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


BEFORE = {"on_device": False, "io_threads": 2}  # the photo path before the GPU path: srpie 0.x on any device


def variant_settings(variant: str) -> dict:
    """The ``Settings`` fields of a ``--variants`` entry: ``before`` (``BEFORE``) or ``now``
    (the device's defaults), with ``+half`` (float16 autocast: precision auto, as ``srpie
    enhance --half``), ``+compile`` or ``+ioN`` (N decode/encode threads)."""
    base, *mods = variant.split("+")
    if base not in ("before", "now"):
        raise SystemExit(f"--variants {variant}: begin with before or now")
    kw = dict(BEFORE) if base == "before" else {}
    for m in mods:
        if m == "half":
            kw |= {"half": True, "precision": "auto"}
        elif m == "compile":
            kw["compile"] = "on"
        elif m.startswith("io") and m[2:].isdigit() and int(m[2:]) > 0:
            kw["io_threads"] = int(m[2:])
        else:
            raise SystemExit(f"--variants {variant}: {m!r} is not half, compile or ioN")
    return kw


def metadata_seconds(src: Path, quality: int) -> dict:
    """The metadata's share of one photo's decode and encode: the check before the network
    (``images.check_writable``: an 8 x 8 stand-in encoded with all of it) and its cleaning for
    the 2x output (``metadata.clean_exif``, ``clean_xmp``), best of five."""
    from srpie_cli import images, metadata

    photo = images.read_photo(src)
    w, h = photo.size

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    return {"check": best(lambda: images.check_writable(src.with_name("out.jpg"), photo, "jpeg", quality)),
            "clean": best(lambda: (metadata.clean_exif(photo.exif, 2 * w, 2 * h, []),
                                   metadata.clean_xmp(photo.xmp, 2 * w, 2 * h)))}


def _model_precision(entry: str, precision: str | None) -> tuple[str, str, int | None]:
    """``NAME`` (in ``precision``) or ``NAME@PRECISION``, either with ``+ovN``: tiles overlapping
    by N input pixels (a default of an earlier version, e.g. ``srpie-x2@float32+ov24``)."""
    entry, _, ov = entry.partition("+ov")
    name, _, own = entry.partition("@")
    return name, own or precision, int(ov) if ov else None


def _score(tmp: Path, rows: list[dict], args) -> None:
    """Each row's ``psnr_vs_float32_eager``: its outputs of the first ``--reference-photos``
    photos against the same photos made by the same model in float32, eager."""
    ref_shoot = tmp / "ref_shoot"
    ref_shoot.mkdir()
    for f in sorted((tmp / "shoot").glob("*.jpg"))[:args.reference_photos]:
        shutil.copy2(f, ref_shoot / f.name)
    for k, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        s = Settings(model=model, device=args.device, threads=args.threads, compile="off", precision="float32")
        run_one(ref_shoot, tmp / f"ref{k}", s)
        for i, r in enumerate(rows):
            if r["model"] == model:
                r["psnr_vs_float32_eager"] = psnr_between(tmp / f"ref{k}", tmp / f"out{i}")
                print(f"{r['label']:30s} {r['psnr_vs_float32_eager']:.1f} dB PSNR against {model} float32 eager")


def _pool(jobs: int, ray: str | None):
    """``batch.enhance``'s pool for ``jobs`` workers: as ``srpie enhance --jobs N [--ray ADDRESS]``."""
    from srpie_cli.cli import _pool as cli_pool

    return cli_pool(jobs, ray)


def _same(a: Path, b: Path) -> bool | int:
    """True when the two folders hold the same bytes, else the largest pixel difference
    (PyTorch's CPU kernels round differently with another thread count: 1 level in a few
    pixels; ``--threads`` equal to each worker's share gives the same bytes)."""
    if {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}:
        return True
    return max(int(np.abs(np.asarray(Image.open(f), dtype=np.int16) - np.asarray(Image.open(b / f.name),
                                                                                   dtype=np.int16)).max())
               for f in a.iterdir())


if __name__ == "__main__":
    main()
