"""Synthetic training pairs: the damage a retoucher fixes, as pure functions.

Every image is float32 H x W x 3 RGB in [0, 1]. Deterministic functions take their
parameters; the ``random_*`` samplers draw parameters from a ``numpy.random.Generator`` and
call them, so a seed fixes the pair (BasicSR's degradations.py is the model for this shape).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 / sRGB


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2)).astype(np.float32)
    k /= k.sum()
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[:, None]
    t = F.pad(t, (r, r, r, r), mode="reflect" if min(img.shape[:2]) > r else "replicate")
    t = F.conv2d(t, torch.from_numpy(k)[None, None, None, :])
    t = F.conv2d(t, torch.from_numpy(k)[None, None, :, None])
    return t[:, 0].permute(1, 2, 0).numpy()


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Antialiased bicubic downscaling by an integer factor (the SR benchmarks' LR)."""
    h, w = img.shape[:2]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).clamp(0, 1).numpy()


def exposure(img: np.ndarray, ev: float) -> np.ndarray:
    """Exposure change of ``ev`` stops, applied in linear light."""
    return linear_to_srgb(srgb_to_linear(img) * np.float32(2.0**ev))


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    return np.clip(img, 0, 1) ** np.float32(g)


def contrast(img: np.ndarray, c: float) -> np.ndarray:
    """Scale distances from the mean luma by ``c`` (< 1 flattens, > 1 punches)."""
    pivot = float((img @ LUMA).mean())
    return np.clip((img - pivot) * np.float32(c) + pivot, 0, 1)


def saturation(img: np.ndarray, s: float) -> np.ndarray:
    """Scale chroma around the per-pixel luma by ``s`` (0: grey, 1: unchanged)."""
    y = (img @ LUMA)[..., None]
    return np.clip(y + (img - y) * np.float32(s), 0, 1)


def white_balance(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Per-channel gains in linear light, normalised to keep the luma (a colour cast)."""
    g = np.asarray(gains, dtype=np.float32)
    g = g / float(g @ LUMA)
    return linear_to_srgb(srgb_to_linear(img) * g)


def haze(img: np.ndarray, lift: float, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Lifted blacks / haze: blend towards a (tinted) grey veil by ``lift`` in [0, 1)."""
    veil = np.asarray(tint, dtype=np.float32) * np.float32(0.75)
    return np.clip(img * np.float32(1 - lift) + veil * np.float32(lift), 0, 1)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor-like noise: signal-dependent (shot) plus constant (read) Gaussian, std ``sigma``
    at mid grey."""
    std = sigma * np.sqrt(np.clip(img, 0, 1) * 2 * 0.5 + 0.5)
    return np.clip(img + rng.standard_normal(img.shape).astype(np.float32) * std.astype(np.float32), 0, 1)


def dark_frame(img: np.ndarray, ev: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A frame taken ``ev`` stops too dark (negative) in dim light: the exposure cut in linear
    light, then sensor noise at that level: shot noise (variance proportional to the signal)
    and read noise, ``noise`` the read noise's std in linear units, each channel its own,
    slightly blurred as demosaicing leaves it (the colour blotches a dark frame shows once
    brightened)."""
    lin = srgb_to_linear(img) * np.float32(2.0**ev)
    std = np.sqrt(lin * np.float32(noise * 4) + np.float32(noise * noise))
    grain = gaussian_blur(rng.standard_normal(img.shape).astype(np.float32), 0.7) * np.float32(1.6)
    return linear_to_srgb(np.clip(lin + grain * std, 0, 1))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at ``quality`` (4:2:0, as cameras and web exports)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- samplers

MIN_EV = 0.25  # the smallest exposure error the synthetic damage makes


def random_look(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Draw the photographic damage a retoucher fixes, each kind with some probability:
    exposure off by 0.25 to 1.5 EV, gamma, contrast, saturation, white-balance cast, haze.
    Exposure errors start at a quarter stop: trained on errors drawn evenly from -1.5 to
    +1.5 EV, the joint model pulled well-exposed photos towards an average exposure (Set5's
    bright photos came out 2 to 13 levels darker, the low-key portrait 8 to 15 brighter).
    Returns a function that applies the damage to any image, so a patch and the thumbnail
    of its whole photo (the network's global context) get the same."""
    ops: list[Callable[[np.ndarray], np.ndarray]] = []
    if rng.random() < 0.8:  # a clear error, 0.25 to 1.5 EV either way: less is taste, left alone
        ops.append(partial(exposure, ev=float(rng.choice([-1.0, 1.0]) * rng.uniform(MIN_EV, 1.5))))
    if rng.random() < 0.4:
        ops.append(partial(gamma, g=float(np.exp(rng.uniform(-0.35, 0.35)))))
    if rng.random() < 0.5:
        ops.append(partial(contrast, c=float(rng.uniform(0.6, 1.3))))
    if rng.random() < 0.5:
        ops.append(partial(saturation, s=float(rng.uniform(0.5, 1.4))))
    if rng.random() < 0.5:
        ops.append(partial(white_balance, gains=tuple(np.exp(rng.uniform(-0.25, 0.25, size=3)).tolist())))
    if rng.random() < 0.25:
        ops.append(partial(haze, lift=float(rng.uniform(0.03, 0.2)), tint=tuple(rng.uniform(0.85, 1.0, size=3).tolist())))

    def apply(img: np.ndarray) -> np.ndarray:
        for op in ops:
            img = op(img)
        return img

    return apply


def no_damage(img: np.ndarray) -> np.ndarray:
    return img


def random_sensor_damage(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and JPEG compression, after the look damage (as in a camera)."""
    if rng.random() < 0.5:
        img = add_noise(img, float(rng.uniform(0.002, 0.03)), rng)
    if rng.random() < 0.5:
        img = jpeg(img, int(rng.integers(60, 96)))
    return img


def make_lr(hr: np.ndarray, scale: int, rng: np.random.Generator | None = None, *,
            enhance: bool = False) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Low-resolution original for a good photo ``hr``, and the look damage it got
    (``no_damage`` when none), to apply to the thumbnail of the whole photo.

    ``enhance=False``: the SR benchmark degradation (antialiased bicubic, 8-bit).
    ``enhance=True``: random pre-blur, downscale, look damage, then sensor damage.
    """
    if not enhance:
        return to_uint8(downscale(hr, scale)).astype(np.float32) / 255.0, no_damage
    assert rng is not None, "enhance=True needs a generator"
    if rng.random() < 0.5:
        hr = gaussian_blur(hr, float(rng.uniform(0.2, 1.0)))
    look = random_look(rng)
    lr = look(downscale(hr, scale))
    return to_uint8(random_sensor_damage(lr, rng)).astype(np.float32) / 255.0, look
