"""The paper's hybrid loss (Eq. 14-20): a functional core and a thin Module.

``L = w_content L_content + w_tv L_tv + w_color L_color + w_msssim (1 - MS-SSIM) + w_l1 L1``

All terms take N x 3 x H x W tensors in [0, 1]. The paper's weights (0.001, 1, 0.0005, 300,
0.05) assume normalisations it does not state; srpie's defaults are chosen so that each
term's gradient is of the same order as L1's at the start of training (see ``LossWeights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from srpie_cli import SrpieError


def l1(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (out - gt).abs().mean()


def tv(out: torch.Tensor) -> torch.Tensor:
    """Total variation of the output (a smoothness term; Eq. 16 read as a regulariser)."""
    return (out[..., 1:, :] - out[..., :-1, :]).abs().mean() + (out[..., :, 1:] - out[..., :, :-1]).abs().mean()


_TENT = torch.tensor([1.0, 2.0, 1.0])


def _smooth(x: torch.Tensor, stride: int) -> torch.Tensor:
    k = torch.outer(_TENT, _TENT).to(x) / 16
    k = k.expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, stride=stride, groups=x.shape[1])


def dual_kawase_blur(x: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Dual-filter (Kawase) blur: ``passes`` filtered 2x downsamplings, then as many filtered
    2x upsamplings back to the input size. A wide, cheap low-pass."""
    sizes = []
    for _ in range(passes):
        if min(x.shape[-2:]) < 4:
            break
        sizes.append(x.shape[-2:])
        x = _smooth(x, stride=2)
    for size in reversed(sizes):
        x = _smooth(F.interpolate(x, size=size, mode="bilinear", align_corners=False), stride=1)
    return x


def color(out: torch.Tensor, gt: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Colour loss (Eq. 17): mean squared distance of the blurred images."""
    return F.mse_loss(dual_kawase_blur(out, passes), dual_kawase_blur(gt, passes))


def chroma_gap(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of chroma (C*ab, per pixel, in units of 100): colour that is
    too grey or too loud, whatever its hue. L1 on RGB lets a look hedge between hues by
    greying; this term charges the greying itself."""
    from srpie_cli.metrics import lab

    def chroma(v):
        ab = lab(v.clamp(0, 1))[:, 1:]
        return (ab.pow(2).sum(1) + 1e-4).sqrt()
    return (chroma(out) - chroma(gt)).abs().mean() / 100


def _gauss(size: int, sigma: float, device, dtype) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, device=device, dtype=dtype) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _ssim_terms(x, y, win):
    c1, c2 = 0.01**2, 0.03**2
    k = win.expand(x.shape[1], 1, *win.shape)
    f = lambda t: F.conv2d(t, k, groups=x.shape[1])  # noqa: E731
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    return lum.mean(), cs.mean()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def ms_ssim(out: torch.Tensor, gt: torch.Tensor, win_size: int = 7, max_scales: int = 5) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) with as many scales as the patch size allows
    (a scale needs at least ``win_size`` pixels); weights renormalised over those scales."""
    win = _gauss(win_size, 1.5, out.device, out.dtype)
    scales = 1
    while scales < max_scales and min(out.shape[-2:]) // (2**scales) >= win_size:
        scales += 1
    w = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=out.device, dtype=out.dtype)
    w = w / w.sum()
    vals = []
    x, y = out, gt
    for s in range(scales):
        lum, cs = _ssim_terms(x, y, win)
        vals.append((lum * cs if s == scales - 1 else cs).clamp_min(1e-6))
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.prod(torch.stack(vals) ** w)


class VGGContent(nn.Module):
    """VGG-19 feature distance at pool4 (Eq. 15). Needs a local torchvision-layout VGG-19
    state dict (``features.N.weight``); srpie never downloads one."""

    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]  # up to pool4

    def __init__(self, weights_path: Path):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SrpieError(f"{weights_path}: cannot read VGG-19 weights ({e})") from None
        own = {k: v for k, v in state.items() if k.startswith("features.") and k in self.state_dict()}
        if len(own) != len(self.state_dict()):
            raise SrpieError(f"{weights_path}: not a torchvision VGG-19 state dict")
        self.load_state_dict(own)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, out, gt):
        f = lambda t: self.features((t - self.mean) / self.std)  # noqa: E731
        return F.mse_loss(f(out), f(gt))


@dataclass
class LossWeights:
    l1: float = 1.0
    msssim: float = 0.0
    color: float = 0.0
    tv: float = 0.0
    content: float = 0.0

    @classmethod
    def preset(cls, name: str) -> LossWeights:
        """``l1``: PSNR-oriented SR. ``hybrid``: the paper's five terms, rescaled so L1 leads
        and MS-SSIM and colour shape tone and colour (content only with a VGG file)."""
        if name == "l1":
            return cls()
        if name == "hybrid":
            return cls(l1=1.0, msssim=0.15, color=2.0, tv=0.002, content=0.001)
        raise ValueError(f"unknown loss {name!r}: l1 or hybrid")


class HybridLoss(nn.Module):
    def __init__(self, weights: LossWeights, vgg_path: Path | None = None):
        super().__init__()
        self.w = weights
        self.content = VGGContent(vgg_path) if (vgg_path and weights.content) else None

    @property
    def uses_content(self) -> bool:
        return self.content is not None

    def forward(self, out, gt) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each term (detached; no device sync per step)."""
        w = self.w
        terms = {"l1": (w.l1, lambda: l1(out, gt)), "msssim": (w.msssim, lambda: 1 - ms_ssim(out, gt)),
                 "color": (w.color, lambda: color(out, gt)), "tv": (w.tv, lambda: tv(out)),
                 "content": (w.content if self.content is not None else 0.0, lambda: self.content(out, gt))}
        total, parts = out.new_zeros(()), {}
        for name, (weight, fn) in terms.items():
            if weight:
                v = fn()
                parts[name] = v.detach()
                total = total + weight * v
        return total, parts
