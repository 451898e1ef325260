"""Compare recipes for the global look by k-fold, never on the held-out photos.

    python benchmarks/look_kfold.py --name base                       # today's recipe
    python benchmarks/look_kfold.py --name tone --tone --cache looks/  # the tone stage on LOL after it
    python benchmarks/look_kfold.py --name tone --tone --fold 0        # one fold (run folds in parallel)
    python benchmarks/look_kfold.py --name base --seed 0 --seed 1 --seed 2  # each fold with three seeds
    python benchmarks/look_kfold.py --name ens --seed 0 --seed 1 --seed 2 --ensemble --cache looks/
    python benchmarks/look_kfold.py --name s125 --strength 1.25 --cache looks/  # the looks scaled up

The FiveK pairs but the last three by name (the held-out photos ``benchmarks/look.py``
reports) are cut into folds of three; each fold trains a look on the others and is scored on
its own three. With ``--tone`` a tone stage is then trained on LOL's pairs (``look.train_tone``;
``--cache`` keeps each fold's look, so recipes for the tone stage skip it). A fixed LOL
validation set of 20 pairs spread over the set (never the held-out three) is never trained
on and is scored each fold. Two checks on
photos no look is trained on (bsd200, not a training folder): 20 photos that need nothing
(PSNR of the look's output against the photo: high is good, it should change little) and 20
others under a known colour cast (PSNR against the photo before the cast).

Everything is scored at the look's own size (the training side, ``--side``), without the
upscaler: a fold costs one short training run. Prints each fold and the mean and spread.
One training of the look is a lottery (the same fold moved from +0.2 to +2.5 dB between
seeds): compare recipes over several ``--seed``s, each fold trained once per seed.
``--ensemble`` also scores each fold's seeds together: one look whose coefficients are the
mean of theirs (``Ensemble``). ``--strength`` scores every look scaled as ``--strength``
scales a shipped one (``GlobalLook.scale_``; with ``--cache``, no training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from srpie_cli.data import find_pair_dirs, list_images, load_rgb, match_pairs, shrink  # noqa: E402
from srpie_cli.degrade import white_balance  # noqa: E402
from srpie_cli.images import to_float  # noqa: E402
from srpie_cli.look import LookConfig, apply_look, train_look  # noqa: E402
from srpie_cli.metrics import look_stats, psnr, srgb_to_lab, ssim  # noqa: E402
from srpie_cli.model import GlobalLook  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PHOTOS = [DATA / "train" / f for f in ("photos", "kodak24", "mcmaster18", "sun_hays80")]
FIVEK, LOL = DATA / "pairs" / "fivek15", DATA / "pairs" / "lol485"
HELD_OUT = 3  # the last pairs of each folder by name: benchmarks/look.py's, never used here


def usable_pairs(folder: Path) -> list[tuple[Path, Path]]:
    matched = match_pairs(*find_pair_dirs(folder))
    return matched[:len(matched) - HELD_OUT]


def lol_validation() -> list[tuple[Path, Path]]:
    pairs = usable_pairs(LOL)
    return pairs[::max(1, len(pairs) // 20)][:20]


def load(pairs, side):
    return [(b.stem, to_float(shrink(load_rgb(b), side)), to_float(shrink(load_rgb(a), side))) for b, a in pairs]


def checks(side: int) -> tuple[list, list]:
    """(photos that need nothing, (cast photo, original) pairs) from bsd200."""
    photos = [to_float(shrink(load_rgb(p), side)) for p in list_images(DATA / "train" / "bsd200")[:40]]
    rng = np.random.default_rng(1234)
    cast = []
    for img in photos[20:]:
        t, u = rng.choice([-1, 1]) * rng.uniform(0.15, 0.45), rng.uniform(-0.1, 0.1)
        cast.append((white_balance(img, (float(np.exp(t)), float(np.exp(u)), float(np.exp(-t)))), img))
    return photos[:20], cast


def score_fold(look, fivek, lol, clean, cast) -> dict:
    out = {}
    rows = [(psnr(apply_look(look, b), a), psnr(b, a), look_stats(apply_look(look, b))["chroma"] /
             max(look_stats(a)["chroma"], 1e-6)) for _, b, a in fivek]
    out["fivek"] = float(np.mean([r[0] for r in rows]))
    out["fivek_gain"] = float(np.mean([r[0] - r[1] for r in rows]))
    out["fivek_worst_gain"] = float(min(r[0] - r[1] for r in rows))
    out["fivek_chroma"] = float(np.mean([r[2] for r in rows]))
    out["fivek_chroma_worst"] = float(min(r[2] for r in rows))
    out["fivek_black"] = float(np.mean([look_stats(apply_look(look, b))["black_point"] - look_stats(a)["black_point"]
                                        for _, b, a in fivek]))
    out["fivek_clipped"] = float(np.mean([look_stats(apply_look(look, b))["clipped"] - look_stats(a)["clipped"]
                                          for _, b, a in fivek]))
    if lol:
        res = [(apply_look(look, b), a) for _, b, a in lol]
        out["lol"] = float(np.mean([psnr(o, a) for o, a in res]))
        out["lol_ssim"] = float(np.mean([ssim(o, a) for o, a in res]))
    out["clean"] = float(np.mean([min(psnr(apply_look(look, p), p), 60.0) for p in clean]))
    # along the grey axis, each validation photo's mapping: its largest fall, where white lands
    with torch.no_grad():
        curves = [grey_curve(look, b) for _, b, _ in fivek]
    out["grey_fall"] = float(np.mean([np.maximum(c[:, :-1] - c[:, 1:], 0).sum(1).max() for c in curves]))
    out["white_min"] = float(np.mean([c[:, -1].min() for c in curves]))
    out["cast"] = float(np.mean([psnr(apply_look(look, c), o) for c, o in cast]))
    out["cast_input"] = float(np.mean([psnr(c, o) for c, o in cast]))
    # the cast left: how far the mean a*, b* of the output is from the photo's before the cast
    ab = lambda img: srgb_to_lab(img)[..., 1:].reshape(-1, 2).mean(0)  # noqa: E731
    out["cast_left"] = float(np.mean([np.linalg.norm(ab(apply_look(look, c)) - ab(o)) for c, o in cast]))
    out["cast_left_input"] = float(np.mean([np.linalg.norm(ab(c) - ab(o)) for c, o in cast]))
    return out


class Ensemble(GlobalLook):
    """Several looks as one: the mean of their colour mappings (no tone stage)."""

    def __init__(self, looks: list[GlobalLook]):
        super().__init__()
        self.looks = torch.nn.ModuleList(looks)

    def settings(self, thumb: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.stack([look.settings(thumb)[0] for look in self.looks]).mean(0), None


def grey_curve(look, img) -> np.ndarray:
    """3 x 33: the look's mapping of the grey axis (black to white) for photo ``img``."""
    from srpie_cli.look import thumb

    g = torch.linspace(0, 1, 33).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    return look.with_settings(g, *look.photo_settings(thumb(img)[None]))[0, :, 0].numpy()


def lol_at_2x(look, pairs) -> dict:
    """The LOL validation pairs as ``benchmarks/look.py`` scores the held-out ones: the dark
    frame halved (antialiased bicubic), the look in front of ``srpie-x2-fast-sr`` at 2x, against
    the full-size good frame: where the noise a lift brings up shows."""
    from srpie_cli.evaluate import pillow_bicubic_down, run_model
    from srpie_cli.look import attach
    from srpie_cli.tiling import TileOptions
    from srpie_cli.weights import load_model

    model = attach(load_model("srpie-x2-fast-sr")[0], look)
    rows = []
    for b, a in pairs:
        hr, lo = to_float(load_rgb(a)), load_rgb(b)
        out = run_model(model, pillow_bicubic_down(lo, 2), TileOptions(tile=0))
        rows.append((psnr(out, hr), ssim(out, hr)))
    return {"lol2x": float(np.mean([r[0] for r in rows])), "lol2x_ssim": float(np.mean([r[1] for r in rows]))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--fold", type=int, action="append", help="run only these folds")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, action="append", help="train each fold with these seeds (default: 0)")
    ap.add_argument("--lr", type=float, default=LookConfig.lr)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tone", action="store_true", help="then a tone stage on LOL's pairs (but the validation set)")
    ap.add_argument("--tone-steps", type=int, default=LookConfig.tone_steps)
    ap.add_argument("--dark", type=float, default=LookConfig.dark)
    ap.add_argument("--cast", type=float, default=LookConfig.cast)
    ap.add_argument("--chroma", type=float, default=LookConfig.chroma, help="weight of the look's chroma term")
    ap.add_argument("--tone-cast", type=float, default=LookConfig.tone_cast)
    ap.add_argument("--tone-side", type=int, default=LookConfig.tone_side)
    ap.add_argument("--clean-fraction", type=float, default=LookConfig.clean_fraction)
    ap.add_argument("--pair-fraction", type=float, default=LookConfig.pair_fraction)
    ap.add_argument("--strength", type=float, default=1.0, help="score every look at this strength")
    ap.add_argument("--ensemble", action="store_true", help="also score each fold's seeds' looks as one")
    ap.add_argument("--cache", type=Path, help="keep (and reuse) each fold's look before its tone stage here")
    ap.add_argument("--no-2x", action="store_true", help="skip scoring the LOL validation pairs at 2x (slow)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fivek = usable_pairs(FIVEK)
    size = len(fivek) // args.folds
    lol_val = lol_validation()
    lol_loaded = load(lol_val, args.side)
    clean, cast = checks(args.side)
    results, members = [], {}
    for k, seed in ((k, seed) for k in args.fold or range(args.folds) for seed in args.seed or [0]):
        val = fivek[k * size:(k + 1) * size]
        cfg = LookConfig(photos=PHOTOS, pairs=[FIVEK], holdout=HELD_OUT, seed=seed, lr=args.lr,
                         exclude=[b.stem for b, _ in val] + [b.stem for b, _ in lol_val], steps=args.steps,
                         side=args.side, clean_fraction=args.clean_fraction, pair_fraction=args.pair_fraction,
                         cast=args.cast, chroma=args.chroma, dark=args.dark, tone_steps=args.tone_steps, tone_cast=args.tone_cast,
                         tone_side=args.tone_side)
        t = time.time()
        look = None
        # every setting that changes the look is in the name; the literals are the recipe's
        # values when the cache began, so its older files keep their names
        cached = args.cache / f"fold{k}-of{args.folds}-steps{args.steps}-cast{args.cast}-clean{args.clean_fraction}" \
            f"{f'-chroma{args.chroma}' if args.chroma else ''}{f'-lr{args.lr}' if args.lr != 2e-3 else ''}" \
            f"{f'-pairs{args.pair_fraction}' if args.pair_fraction != 0.5 else ''}" \
            f"{f'-side{args.side}' if args.side != 256 else ''}{f'-seed{seed}' if seed else ''}.pt" \
            if args.cache else None
        if cached and cached.exists():
            look = GlobalLook()
            look.load_state_dict(torch.load(cached))
            look.eval()
        else:
            look = train_look(cfg, log=lambda m: None)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(look.state_dict(), cached)
        if args.tone:
            look = train_look(replace(cfg, tone_pairs=[LOL]), log=lambda m: None, look=look)
        look.scale_(args.strength)
        members.setdefault(k, []).append(look)
        r = {"fold": k, "seed": seed, "seconds": round(time.time() - t, 1), **score_fold(look, load(val, args.side), lol_loaded, clean, cast),
             **({} if args.no_2x else lol_at_2x(look, lol_val))}
        results.append(r)
        print(f"{args.name} fold {k} seed {seed}: " + ", ".join(
            f"{key} {v:.3f}" if isinstance(v, float) else f"{key} {v}" for key, v in r.items() if key not in ("fold", "seed")),
            flush=True)
    summary = summarise(args.name, "folds and seeds", results)
    report = {"name": args.name, "args": {k: str(v) for k, v in vars(args).items()}, "folds": results, "summary": summary}
    if args.ensemble:
        together = []
        for k, looks in members.items():
            val = fivek[k * size:(k + 1) * size]
            r = {"fold": k, **score_fold(Ensemble(looks).eval(), load(val, args.side), lol_loaded, clean, cast)}
            together.append(r)
            print(f"{args.name} fold {k}, its {len(looks)} looks as one: " + ", ".join(
                f"{key} {v:.3f}" for key, v in r.items() if key != "fold"), flush=True)
        report["ensemble"] = {"folds": together, "summary": summarise(args.name, "folds, each fold's looks as one", together)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


def summarise(name: str, what: str, results: list[dict]) -> dict:
    """Mean and spread of each score over ``results``, printed."""
    keys = [k for k in results[0] if k not in ("fold", "seed", "seconds")]
    summary = {k: (float(np.mean([r[k] for r in results])), float(np.std([r[k] for r in results]))) for k in keys}
    print(f"{name} mean over {len(results)} {what}: " + ", ".join(f"{k} {m:.3f} ±{s:.3f}" for k, (m, s) in summary.items()))
    return summary


if __name__ == "__main__":
    main()
