"""Scoring a model: the SR benchmark protocol on HR folders, and RGB scores on pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srpie_cli.data import PairSet, list_images, load_rgb
from srpie_cli.images import to_float
from srpie_cli.metrics import psnr, ssim
from srpie_cli.tiling import TileOptions, to_pixels, to_tensor, upscale


@dataclass
class Score:
    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    colour_shift: float  # max over R, G, B of |mean(model) - mean(bicubic)|, in 8-bit levels


def colour_shift(out: np.ndarray, bicubic: np.ndarray) -> float:
    """How far the model moved the overall colour and exposure from a plain upscale."""
    return float(np.abs(out.reshape(-1, 3).mean(0) - bicubic.reshape(-1, 3).mean(0)).max() * 255.0)


def pillow_bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """The benchmarks' LR: HR (uint8, cropped to a multiple of scale) downscaled with
    Pillow's antialiased bicubic, kept 8-bit (the field's protocol)."""
    h, w = hr.shape[:2]
    with Image.fromarray(hr) as im:
        return np.asarray(im.resize((w // scale, h // scale), Image.Resampling.BICUBIC))


def pillow_bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every score is printed beside: Pillow's bicubic upscale, 8-bit. (The
    network's own skip is ``model.upsample_bicubic``: PyTorch's kernel, a = -0.75, where
    Pillow's is a = -0.5.)"""
    h, w = lr.shape[:2]
    with Image.fromarray(lr) as im:
        return np.asarray(im.resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def run_model(model: torch.nn.Module, lr_u8: np.ndarray, opts: TileOptions) -> np.ndarray:
    """Model output quantised to 8 bits (what a saved photo holds), as float [0, 1]."""
    y = to_pixels(upscale(model, to_tensor(to_float(lr_u8)), opts))
    return np.round(y * 255.0) / 255.0


def evaluate_sr(model, folder: Path, opts: TileOptions = TileOptions(tile=0)) -> list[Score]:
    """x``scale`` SR protocol: Y channel (BT.601), ``scale`` pixels of border cropped."""
    s = model.scale
    scores = []
    for path in list_images(folder):
        hr = load_rgb(path)
        hr = hr[: hr.shape[0] - hr.shape[0] % s, : hr.shape[1] - hr.shape[1] % s]
        lr = pillow_bicubic_down(hr, s)
        out, bic, ref = run_model(model, lr, opts), to_float(pillow_bicubic_up(lr, s)), to_float(hr)
        kw = dict(crop_border=s, y_channel=True)
        scores.append(Score(path.stem, psnr(out, ref, **kw), ssim(out, ref, **kw), psnr(bic, ref, **kw),
                            ssim(bic, ref, **kw), colour_shift(out, bic)))
    return scores


def evaluate_pairs(model, pairs: PairSet, opts: TileOptions = TileOptions(tile=0)) -> list[Score]:
    """RGB PSNR/SSIM of the model on (before at 1/scale, after) pairs, beside bicubic."""
    s = model.scale
    scores = []
    for name, (lr, hr) in zip(pairs.names, pairs.pairs):
        lr_u8 = (lr * 255 + 0.5).astype(np.uint8)
        out, bic = run_model(model, lr_u8, opts), to_float(pillow_bicubic_up(lr_u8, s))
        scores.append(Score(Path(name).stem, psnr(out, hr), ssim(out, hr), psnr(bic, hr), ssim(bic, hr),
                            colour_shift(out, bic)))
    return scores


def mean_score(scores: list[Score]) -> dict[str, float]:
    keys = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "colour_shift")
    return {k: float(np.mean([getattr(s, k) for s in scores])) for k in keys}
