"""The networks a user would otherwise run, written from their papers' descriptions for speed
measurements only (random weights: speed does not depend on weight values).

* RRDBNet x2, as in Real-ESRGAN's RealESRGAN_x2plus (Wang et al. 2018 ESRGAN, 2021
  Real-ESRGAN): 23 residual-in-residual dense blocks of 64 features and 32 growth channels;
  for x2 the input is pixel-unshuffled by 2 (12 channels) so the body runs at half
  resolution, then two nearest-neighbour x2 upsamplings with a 3x3 conv each.
* SRVGGNetCompact (Real-ESRGAN's realesr-general): a plain VGG-style stack of 3x3 convs
  with PReLU at input resolution, PixelShuffle, plus the nearest upsampled input.
* IMDN (Hui et al. 2019): 6 information multi-distillation blocks of 64 channels, each
  distilling a quarter of its features after every 3x3 conv, contrast-aware channel
  attention on the concatenation, PixelShuffle upsampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


# ----------------------------------------------------------------------------- RRDBNet

class DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convs, each seeing all earlier outputs; the residual is
    scaled by 0.2 (ESRGAN's residual scaling)."""

    def __init__(self, feat: int = 64, growth: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(conv3(feat + k * growth, growth) for k in range(4))
        self.last = conv3(feat + 4 * growth, feat)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        feats = [x]
        for c in self.convs:
            feats.append(self.act(c(torch.cat(feats, 1))))
        return x + 0.2 * self.last(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, feat: int = 64, growth: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(feat, growth) for _ in range(3)))

    def forward(self, x):
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    """RRDBNet for x2 as RealESRGAN_x2plus (x4 trunk on a pixel-unshuffled input).

    Args:
        blocks: RRDB count (23).
        feat: features (64).
        growth: dense growth channels (32).
    """

    scale = 2

    def __init__(self, blocks: int = 23, feat: int = 64, growth: int = 32):
        super().__init__()
        self.first = conv3(3 * 4, feat)  # 3 channels x 2 x 2 after the unshuffle
        self.body = nn.Sequential(*(RRDB(feat, growth) for _ in range(blocks)))
        self.body_out = conv3(feat, feat)
        self.up1 = conv3(feat, feat)
        self.up2 = conv3(feat, feat)
        self.hr = conv3(feat, feat)
        self.last = conv3(feat, 3)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        f = self.first(F.pixel_unshuffle(x, 2))
        f = f + self.body_out(self.body(f))
        f = self.act(self.up1(F.interpolate(f, scale_factor=2, mode="nearest")))
        f = self.act(self.up2(F.interpolate(f, scale_factor=2, mode="nearest")))
        return self.last(self.act(self.hr(f)))


# ----------------------------------------------------------------------------- SRVGGNetCompact

class SRVGGNetCompact(nn.Module):
    """Compact VGG-style SR network.

    Args:
        scale: upscaling factor.
        feat: features (64).
        convs: body convolutions (32 in realesr-general).
    """

    def __init__(self, scale: int = 2, feat: int = 64, convs: int = 32):
        super().__init__()
        self.scale = scale
        layers = [conv3(3, feat), nn.PReLU(feat)]
        for _ in range(convs):
            layers += [conv3(feat, feat), nn.PReLU(feat)]
        layers += [conv3(feat, 3 * scale * scale), nn.PixelShuffle(scale)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# ----------------------------------------------------------------------------- IMDN

class CCA(nn.Module):
    """Contrast-aware channel attention: per-channel std + mean -> 1x1 squeeze (/16) -> ReLU
    -> 1x1 excite -> sigmoid, multiplied onto the input."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.squeeze = nn.Conv2d(channels, channels // reduction, 1)
        self.excite = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * torch.sigmoid(self.excite(F.relu(self.squeeze(std + mean))))


class IMDB(nn.Module):
    """Information multi-distillation block: three 3x3 conv steps each keep a quarter of the
    channels and refine the rest, a fourth conv gives the last quarter; the four kept parts
    go through CCA and a 1x1 conv, plus the input."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.kept = channels // 4
        rest = channels - self.kept
        self.c1 = conv3(channels, channels)
        self.c2 = conv3(rest, channels)
        self.c3 = conv3(rest, channels)
        self.c4 = conv3(rest, self.kept)
        self.cca = CCA(4 * self.kept)
        self.fuse = nn.Conv2d(4 * self.kept, channels, 1)
        self.act = nn.LeakyReLU(0.05)

    def forward(self, x):
        k = self.kept
        d1, r = self.act(self.c1(x)).split([k, x.shape[1] - k], 1)
        d2, r = self.act(self.c2(r)).split([k, x.shape[1] - k], 1)
        d3, r = self.act(self.c3(r)).split([k, x.shape[1] - k], 1)
        d4 = self.c4(r)
        return x + self.fuse(self.cca(torch.cat([d1, d2, d3, d4], 1)))


class IMDN(nn.Module):
    """IMDN: a 3x3 conv, 6 IMDBs, a 1x1 fusion of all block outputs and a 3x3 conv (plus the
    first features), then 3x3 conv to 3 s^2 channels and PixelShuffle.

    Args:
        scale: upscaling factor.
        channels: features (64).
        blocks: IMDB count (6).
    """

    def __init__(self, scale: int = 2, channels: int = 64, blocks: int = 6):
        super().__init__()
        self.scale = scale
        self.first = conv3(3, channels)
        self.blocks = nn.ModuleList(IMDB(channels) for _ in range(blocks))
        self.fuse = nn.Sequential(nn.Conv2d(blocks * channels, channels, 1), nn.LeakyReLU(0.05))
        self.after = conv3(channels, channels)
        self.up = nn.Sequential(conv3(channels, 3 * scale * scale), nn.PixelShuffle(scale))

    def forward(self, x):
        f = self.first(x)
        outs, y = [], f
        for b in self.blocks:
            y = b(y)
            outs.append(y)
        return self.up(self.after(self.fuse(torch.cat(outs, 1))) + f)


PEERS: dict[str, type[nn.Module]] = {
    "RRDBNet x2 (Real-ESRGAN x2plus)": RRDBNet,
    "SRVGGNetCompact x2": SRVGGNetCompact,
    "IMDN x2": IMDN,
}
