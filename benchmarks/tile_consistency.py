"""How much a model's output depends on the tile layout: tiled against whole image.

Tiled inference blends overlapping tiles, so there is no seam line; but a network whose
enhancement reads more context than the overlap holds makes each tile decide the look from
its own few hundred pixels, and a large flat area can come out in a different tone from one
tile to the next. This prints, for each model, the largest difference between its output in
small tiles and in one whole-image pass, in 8-bit levels, and the PSNR between the two.

    python benchmarks/tile_consistency.py                       # shipped models, examples/coffee.jpg
    python benchmarks/tile_consistency.py --tile 192 photo.jpg --model srpie-x2 --model my.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from srpie_cli.images import read_photo, to_float  # noqa: E402
from srpie_cli.metrics import psnr  # noqa: E402
from srpie_cli.tiling import TileOptions, upscale  # noqa: E402
from srpie_cli.weights import SHIPPED, load_model  # noqa: E402


def compare(model, x: torch.Tensor, tile: int) -> tuple[float, float]:
    """(largest difference in 8-bit levels, PSNR in dB) of ``tile``-px tiles against one pass."""
    with torch.no_grad():
        whole = upscale(model, x, TileOptions(tile=0))
        tiled = upscale(model, x, TileOptions(tile=tile))
    a, b = (whole * 255).round(), (tiled * 255).round()
    return float((a - b).abs().max()), psnr(whole.numpy(), tiled.numpy())


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", nargs="?", default=str(ROOT / "examples" / "coffee.jpg"))
    ap.add_argument("--model", action="append", help="model name or weights file (repeatable; default: all shipped)")
    ap.add_argument("--tile", type=int, default=128, help="tile side in input pixels (default 128)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    photo = read_photo(args.image)
    x = torch.from_numpy(np.ascontiguousarray(to_float(photo.pixels))).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    print(f"{Path(args.image).name}: {w}x{h}, {args.tile} px tiles against the whole image in one pass")
    rows = []
    for name in args.model or list(SHIPPED):
        model, _ = load_model(name)
        levels, db = compare(model.eval(), x, args.tile)
        ctx = "global context" if model.cfg.global_context else "no global context"
        print(f"  {name:24s} largest difference {levels:5.1f} levels   PSNR {db:6.1f} dB   ({ctx})")
        rows.append({"model": name, "levels": levels, "psnr": db})
    return rows


if __name__ == "__main__":
    main()
