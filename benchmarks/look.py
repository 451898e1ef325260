"""The look, measured as a photographer judges it, on photos no choice was made on.

    python benchmarks/look.py                          # the default model
    python benchmarks/look.py --model srpie-x2 --model srpie-x2-fast --json look.json

For each model, on the held-out pairs (the last three by name of FiveK expert C and of LOL,
as ``srpie eval PAIRS --pairs --holdout 3``) and on Set5/Set14 (photos that need nothing):

* FiveK: RGB PSNR of the 2x output against expert C, and its gain over Pillow's bicubic of
  the input, photo by photo (no photo may fall below bicubic);
* colour: mean chroma (C*ab) of the output over the expert's, each photo;
* blacks: 1st-percentile L* of the output minus the expert's;
* highlights: clipped pixels (>= 254 in any channel), output minus expert, in points;
* dark frames (LOL): PSNR and SSIM;
* needs nothing (Set5, Set14): Y-PSNR gain over bicubic and the mean lightness shift |dL*|.

The inputs are the before photos downscaled by 2 (antialiased), the protocol of training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from srpie_cli.data import PairSet, list_images, load_rgb  # noqa: E402
from srpie_cli.evaluate import pillow_bicubic_down, pillow_bicubic_up, run_model  # noqa: E402
from srpie_cli.images import to_float  # noqa: E402
from srpie_cli.metrics import look_stats, psnr, ssim  # noqa: E402
from srpie_cli.model import with_strength  # noqa: E402
from srpie_cli.tiling import TileOptions  # noqa: E402
from srpie_cli.weights import load_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WHOLE = TileOptions(tile=0)


def pairs_rows(model, folder: Path, holdout: int = 3) -> list[dict]:
    _, held = PairSet.from_folders([folder], model.scale, holdout)
    rows = []
    for name, (lr, hr) in zip(held.names, held.pairs):
        lr8 = (lr * 255 + 0.5).astype(np.uint8)
        out = run_model(model, lr8, WHOLE)
        bic = to_float(pillow_bicubic_up(lr8, model.scale))
        so, se = look_stats(out), look_stats(hr)
        rows.append({"photo": Path(name).stem, "psnr": psnr(out, hr), "bicubic": psnr(bic, hr), **white_of(model, lr),
                     "ssim": ssim(out, hr), "chroma_ratio": so["chroma"] / max(se["chroma"], 1e-6),
                     "black_point": so["black_point"] - se["black_point"], "clipped": so["clipped"] - se["clipped"]})
    return rows


def sr_rows(model, folder: Path) -> list[dict]:
    rows = []
    for path in list_images(folder):
        hr = load_rgb(path)
        hr = hr[: hr.shape[0] - hr.shape[0] % 2, : hr.shape[1] - hr.shape[1] % 2]
        lr = pillow_bicubic_down(hr, model.scale)
        out, bic, ref = run_model(model, lr, WHOLE), to_float(pillow_bicubic_up(lr, model.scale)), to_float(hr)
        kw = {"crop_border": model.scale, "y_channel": True}
        rows.append({"photo": path.stem, "gain": psnr(out, ref, **kw) - psnr(bic, ref, **kw),
                     "dL": look_stats(out)["lightness"] - look_stats(bic)["lightness"]})
    return rows


def white_of(model, lr: np.ndarray) -> dict:
    """Where the model's look puts a clipped white of this photo: the lowest channel of a pure
    white input pixel after the look (8-bit levels) and how far from neutral it lands (the
    largest |a*|, |b*|). The issue's target: at least 250 and neutral."""
    import torch

    from srpie_cli.look import thumb
    from srpie_cli.metrics import srgb_to_lab

    look = getattr(model, "global_look", None)
    if look is None:
        return {}
    with torch.no_grad():
        white = look.with_settings(torch.ones(1, 3, 1, 1), *look.photo_settings(thumb(lr)[None]))[0, :, 0, 0].numpy()
    lab = srgb_to_lab(white.reshape(1, 1, 3))[0, 0]
    return {"white_min": float(white.min() * 255), "white_ab": float(np.abs(lab[1:]).max())}


# the six neutral patches of the ColorChecker's bottom row in raw/tinydng/colorchart.dng
# (centres as fractions of the developed frame's width and height)
CHART_GREYS = [(x / 800, 428 / 533) for x in (323, 375, 427, 478, 528, 579)]


def chart_greys(model) -> dict:
    """a*, b* of the colour chart's grey patches after the model (input: the developed DNG,
    halved): a look that neutralises casts brings them near 0."""
    from PIL import Image

    from srpie_cli.images import read_photo, to8
    from srpie_cli.metrics import srgb_to_lab

    photo = read_photo(DATA / "raw" / "tinydng" / "colorchart.dng")
    with Image.fromarray(to8(photo.pixels)) as im:
        lr = np.asarray(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS))
    out = run_model(model, lr, WHOLE)

    def patches(img):
        h, w = img.shape[:2]
        r = max(2, int(0.012 * w))
        lab = [srgb_to_lab(img[int(fy * h) - r:int(fy * h) + r, int(fx * w) - r:int(fx * w) + r]).reshape(-1, 3).mean(0)
               for fx, fy in CHART_GREYS]
        return np.array(lab)

    before, after = patches(to_float(lr)), patches(out)
    return {"input_ab": before[:, 1:].round(1).tolist(), "output_ab": after[:, 1:].round(1).tolist(),
            "max_abs_ab": float(np.abs(after[:, 1:]).max()), "input_max_abs_ab": float(np.abs(before[:, 1:]).max())}


def measure(name: str, strength: float = 1.0) -> dict:
    model, _ = load_model(name)
    with_strength(model, strength)
    fivek = pairs_rows(model, DATA / "pairs" / "fivek15")
    lol = pairs_rows(model, DATA / "pairs" / "lol485")
    sr = {s: sr_rows(model, DATA / "val" / s) for s in ("Set5", "Set14")}
    return {"model": name, "strength": strength, "fivek": fivek, "lol": lol, "sr": sr, "chart": chart_greys(model)}


def summary(m: dict) -> list[tuple[str, str, str]]:
    f, lol = m["fivek"], m["lol"]
    gains = [r["psnr"] - r["bicubic"] for r in f]
    rows = [
        ("FiveK held-out gain over bicubic", f"{np.mean(gains):+.2f} dB (each: {', '.join(f'{g:+.2f}' for g in gains)})",
         ">= +4 dB, none below 0"),
        ("FiveK held-out PSNR", f"{np.mean([r['psnr'] for r in f]):.2f} dB (bicubic {np.mean([r['bicubic'] for r in f]):.2f})", ""),
        ("colour: chroma / expert", ", ".join(f"{r['chroma_ratio']:.2f}" for r in f), "0.85-1.15"),
        ("blacks: L*1% - expert", ", ".join(f"{r['black_point']:+.1f}" for r in f), "<= +3"),
        ("highlights: clipped - expert (pp)", ", ".join(f"{r['clipped']:+.2f}" for r in f), "<= +0.5"),
        ("highlights: a clipped white after the look", ", ".join(f"{r['white_min']:.0f} (|ab| {r['white_ab']:.1f})"
                                                              for r in f) if "white_min" in f[0] else "no look",
         ">= 250, neutral"),
        ("dark frames: LOL held-out", f"{np.mean([r['psnr'] for r in lol]):.2f} dB, SSIM {np.mean([r['ssim'] for r in lol]):.3f}",
         ">= 22 dB, SSIM >= 0.80"),
    ]
    c = m["chart"]
    rows.append(("white balance: chart greys max |a*|,|b*|", f"{c['max_abs_ab']:.1f} (input {c['input_max_abs_ab']:.1f})",
                 "<= 4"))
    for s, r in m["sr"].items():
        rows.append((f"needs nothing: {s}", f"{np.mean([x['gain'] for x in r]):+.2f} dB Y, "
                     f"|dL*| mean {np.mean([abs(x['dL']) for x in r]):.2f} (max {max(abs(x['dL']) for x in r):.2f})",
                     ">= +1 dB, |dL*| <= 2"))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="name or weights file; repeatable (default: the default model)")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from srpie_cli import defaults

    results = []
    for name in args.model or [defaults.MODEL]:
        m = measure(name, args.strength)
        results.append(m)
        print(f"\n{name} (strength {args.strength:g})")
        for what, value, target in summary(m):
            print(f"  {what:36s} {value}" + (f"   [target {target}]" if target else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
