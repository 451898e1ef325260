"""PSNR and SSIM with the field's super-resolution protocol.

Images are float arrays in [0, 1], H x W x 3 (RGB) or H x W; ``crop_border`` pixels are
removed on every side before scoring; ``y_channel`` scores the BT.601 luma as the SR
literature does (Y in [16, 235] / 255 from RGB).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB in [0, 1], in [16/255, 235/255] (MATLAB's rgb2ycbcr)."""
    return (16.0 + img[..., 0] * 65.481 + img[..., 1] * 128.553 + img[..., 2] * 24.966) / 255.0


def _prepare(img: np.ndarray, crop_border: int, y_channel: bool) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if y_channel and img.ndim == 3:
        img = rgb_to_y(img)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    return img


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB of ``img`` against ``ref`` (both [0, 1], H x W [x 3]); inf when equal."""
    a, b = _prepare(img, crop_border, y_channel), _prepare(ref, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, valid region), mean over
    channels; inputs in [0, 1]."""
    a, b = _prepare(img, crop_border, y_channel), _prepare(ref, crop_border, y_channel)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    x = torch.from_numpy(a * 255.0).permute(2, 0, 1)[:, None]
    y = torch.from_numpy(b * 255.0).permute(2, 0, 1)[:, None]
    w = _gaussian_window()[None, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx**2
    syy = F.conv2d(y * y, w) - my**2
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


# ----------------------------------------------------------------------------- the look, as people see it

def lab(x: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) of sRGB, channels in dimension 1 (N x 3 x ...), differentiable (both
    branches of each piecewise curve stay finite, so no NaN reaches a gradient)."""
    lin = torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                     dtype=x.dtype, device=x.device)
    xyz = torch.einsum("ij,nj...->ni...", m / m.new_tensor([0.95047, 1.0, 1.08883])[:, None], lin)
    e = (6 / 29) ** 3
    f = torch.where(xyz > e, xyz.clamp_min(e) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def srgb_to_lab(img: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB in [0, 1], ... x 3 (``lab`` in float64)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float64)).movedim(-1, 0)[None]
    return lab(x)[0].movedim(0, -1).numpy()


def look_stats(img: np.ndarray) -> dict[str, float]:
    """What a photographer looks at: mean chroma (C*ab), the black point (1st percentile of
    L*), mean lightness, and the share of clipped pixels (>= 254 of 255 in any channel)."""
    lab = srgb_to_lab(img)
    return {"chroma": float(np.hypot(lab[..., 1], lab[..., 2]).mean()),
            "black_point": float(np.percentile(lab[..., 0], 1)),
            "lightness": float(lab[..., 0].mean()),
            "clipped": float((np.asarray(img).max(-1) >= 254 / 255).mean() * 100)}
