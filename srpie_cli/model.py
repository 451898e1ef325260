"""Deep SR-PIE: joint super-resolution and perceptual image enhancement.

A reimplementation from the text of Xu et al., "Joint Learning of Super-Resolution and
Perceptual Image Enhancement for Single Image", IEEE Access 2021 (no code was published).
One module per block of the paper:

    I --decompose--> (I, I_d)
    MBFNet(I, I_i+d)  -> I^MBF   3-channel image at low resolution   (Eq. 1, 7-12)
    PENet(H(I))       -> A       12-channel local transform          (Eq. 2, Sec. III-C)
    transform(A, I^MBF) -> I^PE                                      (Sec. III-C)
    DUNet(I^PE)       -> I^SRE   at scale x                          (Eq. 3, 13)
    (DUNet(I^PE, F)   -> I^SRE   with ``du_features``: see below)

Readings of the ambiguous parts (see also docs/network.md):

* ``I_{i+d}`` is the channel concatenation of ``I`` and ``I_d`` (the pipeline text says
  "concatenation"; Eq. 6 prints a sum, which a convolution over the concatenation can learn).
* The 12-channel transform: channels 0-8 are a per-pixel 3x3 colour matrix ``M`` acting on
  the curve term ``g = x (1 - x)``, channels 9-11 a per-channel gain ``a`` on ``x``:
  ``out_i = sum_j M_ij g_j + a_i x_i``. Initialised to identity (M = 0, a = 1).
* Image skip (``GlobalSkip``, not in the paper, on by default): MBFNet predicts a residual on
  ``I`` and DUNet a residual on the bicubic upsampling of its input, with both last layers
  initialised to zero. An untrained network therefore returns exactly the bicubic upscale
  of its input instead of noise, and the enhancement (PENet) acts on the image directly.
* DUNet's input (``du_features``, a departure measured against the paper's reading): read
  literally, everything MBFNet learned reaches the upsampler through a 3-channel image, so
  the high-resolution detail must be re-derived from RGB by DUNet's two small convolutions.
  Trained that way (paper preset, L1, bicubic x2) the network stalls at Set5 35.3 dB Y:
  8,200 steps of 32 patches on a GPU moved it by 0.03 dB (weights/README.md). With
  ``du_features`` DUNet's first convolutions also see MBFNet's fused feature map ``F`` (the
  HFA output that MBFNet's last conv turns into the image), the way every SR network's
  upsampler sees features. Those weights start at zero, so a network widened from one
  trained without them computes the same function until trained further.
* Global context (``global_context``, not in the paper): PENet's receptive field is a few
  dozen pixels, so from a patch or a tile it cannot tell a dark photo from a dark corner
  of a bright one, nor a low-key portrait that needs nothing from an underexposed frame.
  With ``global_context`` a small CNN reads a 64 x 64 thumbnail of the *whole* input
  (``context_thumbnail``) and adds a vector to PENet's bottleneck. Tiled inference computes
  the thumbnail once per photo and hands the same one to every tile, so tiles agree on the
  look however small they are; training pairs each patch with the thumbnail of its whole
  photo, damaged the same way. Its last layer starts at zero (``with_context``), so it too
  leaves a trained network's output unchanged until trained.
* The look apart from the upscaler (``own_look_input``, not in the paper): PENet reads a
  3x3 convolution of its own instead of MBFNet's shallow feature ``H(I)``, so the look
  (``LOOK_PARTS``: PENet, that convolution, the global context) and the upscaler (``h``,
  MBFNet, DUNet) share no weight. ``graft_look`` puts one model's look on another's
  upscaler, training can move the look alone (``srpie train --look-only``), and
  ``with_strength`` scales the look down to nothing, where the upscaler alone remains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SRPIEConfig:
    """Everything needed to build a network; stored inside every weights file."""

    scale: int = 2
    width: int = 64  # feature width of MBFNet (the paper's 64)
    t: int = 3  # t + 1 multi-scale splitting blocks, t backward propagation blocks
    pe_widths: tuple[int, int, int] = (16, 24, 32)  # PENet stages at /1, /2, /4 (and /8 at the last)
    du_width: int = 36  # channels of each DUNet path after its first convolution
    dunet: bool = True  # False: the ablation head (a plain conv + PixelShuffle, Table 1 row 11)
    global_skip: bool = True  # residual on I and on bicubic(I^PE); see the module docstring
    du_features: bool = False  # DUNet also sees MBFNet's feature map (see the module docstring)
    global_context: bool = False  # PENet also sees a thumbnail of the whole photo (see the module docstring)
    rrelu: bool = True  # MBFNet's RReLU (the paper's); False: the fixed slope RReLU has at inference
    own_look_input: bool = False  # PENet reads its own shallow feature, not MBFNet's (see graft_look)
    look_width: int = 0  # with own_look_input, that feature's width (0: width): a look from another preset
    global_look: bool = False  # one colour mapping per photo, set from its thumbnail (GlobalLook)
    look_tone: bool = False  # the global look also sets an exposure and noise reduction (GlobalLook's tone stage)
    look_denoise: bool = False  # the tone stage also runs a small denoising network on frames it lifts (DarkDenoiser)
    gf_radius: int = 2  # guided filter box radius for the base layer
    gf_eps: float = 1e-2  # guided filter regulariser

    def __post_init__(self):
        """A config that cannot build a network is refused here, with the field named."""
        checks = {
            "scale": self.scale >= 1, "width": self.width >= 1, "t": self.t >= 0,
            "pe_widths": len(self.pe_widths) == 3 and all(isinstance(w, int) and w >= 1 for w in self.pe_widths),
            "du_width": self.du_width >= 1, "look_width": self.look_width >= 0,
            "gf_radius": self.gf_radius >= 1, "gf_eps": self.gf_eps > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid config values: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pe_widths"] = list(self.pe_widths)
        for key in ("look_width", "global_look", "look_tone", "look_denoise"):
            if not d[key]:
                del d[key]  # the usual case: a file that earlier srpie versions can read too
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SRPIEConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        if "pe_widths" in d:
            d["pe_widths"] = tuple(d["pe_widths"])
        return cls(**d)


PRESETS: dict[str, dict] = {
    # the paper's two sizes, for training from scratch (srpie train --preset)
    "paper": dict(width=64, t=3),  # t = 3 (four MSBs), width 64
    "fast": dict(width=32, t=2, pe_widths=(8, 16, 16), du_width=24),  # for CPU studios
    # the architectures that ship (defaults.SHIPPED; tests check each file against its preset)
    "srpie-x2-sr": dict(width=64, t=3, du_features=True),
    "srpie-x2": dict(width=64, t=3, du_features=True, global_look=True, look_tone=True, look_denoise=True),  # srpie-x2-sr + a global look
    "srpie-x2-fast-sr": dict(width=32, t=2, pe_widths=(8, 16, 16), du_width=24, du_features=True),
    "srpie-x2-fast": dict(width=32, t=2, pe_widths=(8, 16, 16), du_width=24, du_features=True,
                          global_look=True, look_tone=True, look_denoise=True),  # srpie-x2-fast-sr + the same global look
}


def config_for(preset: str, **overrides) -> SRPIEConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return SRPIEConfig(**{**PRESETS[preset], **overrides})


def conv(cin: int, cout: int, k: int, dilation: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """'Same' convolution (zero padding, as the paper's layers; image borders are padded by
    reflection before the network sees them)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, groups=groups)


def centre_tap(w: torch.Tensor, k: int = 3) -> torch.Tensor:
    """A 1x1 kernel as a k x k one (zeros around its centre): the same convolution, which can
    then be summed with, or stacked onto, a k x k kernel reading the same map."""
    return F.pad(w, ((k - 1) // 2,) * 4)


def after(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The kernel of a 1x1 convolution (weights ``outer``, O x C) applied after a convolution
    with kernel ``inner`` (C x I x k x k): one O x I x k x k kernel."""
    return torch.einsum("oc,cikl->oikl", outer, inner)


# ----------------------------------------------------------------------------- decomposition

def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, borders reflected."""
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)


def guided_filter(x: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """Self-guided filter (He et al. 2013), per channel: an edge-preserving low-pass."""
    mean_x = box_filter(x, r)
    var_x = box_filter(x * x, r) - mean_x * mean_x
    a = var_x / (var_x + eps)
    b = mean_x - a * mean_x
    return box_filter(a, r) * x + box_filter(b, r)


def decompose(x: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """Input decomposition (Sec. III-A): returns I_{i+d} = concat(I, I / I_b)."""
    base = guided_filter(x, r, eps)
    detail = x / (base.clamp_min(0) + 1e-2)  # epsilon: black pixels would divide by zero
    return torch.cat([x, detail.clamp(0, 4)], dim=1)


# ----------------------------------------------------------------------------- MBFNet

class FCA(nn.Module):
    """Frequency-aware channel attention (Eq. 11): C_r = sigmoid(f_d1(x) - f_d2(x));
    output C_r * x + C_r."""

    def __init__(self, width: int):
        super().__init__()
        self.f_d1 = conv(width, width, 1)
        self.f_d2 = conv(width, width, 3, dilation=2)

    def forward(self, x):
        # f_d1(x) - f_d2(x) as one convolution: the 1x1 kernel is the dilated kernel's centre
        # tap, so their difference is one dilated 3x3 (the same numbers, one pass, one map)
        w = centre_tap(self.f_d1.weight) - self.f_d2.weight
        z = F.conv2d(x, w, self.f_d1.bias - self.f_d2.bias, padding=self.f_d2.padding, dilation=self.f_d2.dilation)
        c_r = torch.sigmoid(z)
        return c_r * x + c_r


class MSB(nn.Module):
    """Multi-scale splitting block (Fig. 2).

    Dilated 3x3 + RReLU, then step 1: 1x1 (w/4, kept), 3x3 (3w/4) and 5x5 (w/2); step 2 keeps
    w/4 of each of the 3x3 and 5x5 results and convolves the rest once more (3x3, to w/4);
    the five kept parts are fused by a 1x1 conv back to w, then FCA, then + input.
    With w = 64 the widths are Fig. 2's 64, 48, 32 and 16.

    Args:
        width: block width.
        act: activation class (the paper's RReLU).
    """

    def __init__(self, width: int, act: type[nn.Module] = nn.RReLU):
        super().__init__()
        q = width // 4
        self.q = q
        self.dilated = conv(width, width, 3, dilation=2)
        self.act = act()
        self.c1 = conv(width, q, 1)
        self.c3 = conv(width, 3 * q, 3)
        self.c5 = conv(width, 2 * q, 5)
        self.c3b = conv(2 * q, q, 3)
        self.c5b = conv(q, q, 3)
        self.fuse = conv(5 * q, width, 1)
        self.fca = FCA(width)

    def forward(self, x):
        q = self.q
        d = self.act(self.dilated(x))
        # the 1x1 and the 3x3 on d as one 3x3 (the 1x1 kernel at its centre tap): the same
        # numbers, and 4q output channels run faster than 3q and q apart (oneDNN's blocks)
        w = torch.cat([self.c3.weight, centre_tap(self.c1.weight)])
        a3, r3, a1 = F.conv2d(d, w, torch.cat([self.c3.bias, self.c1.bias]), padding=1).split([q, 2 * q, q], dim=1)
        a5, r5 = self.c5(d).split([q, q], dim=1)
        kept = torch.cat([a1, a3, self.c3b(r3), a5, self.c5b(r5)], dim=1)
        return self.fca(self.fuse(kept)) + x


class BPB(nn.Module):
    """Backward propagation block (Eq. 12): Conv1_R(m) for the first, else
    concat(Conv1(m), Conv1(previous BPB output)); output width w."""

    def __init__(self, width: int, first: bool, act: type[nn.Module] = nn.RReLU):
        super().__init__()
        self.first = first
        if first:
            self.from_msb = nn.Sequential(conv(width, width, 1), act())
        else:
            self.from_msb = conv(width, width // 2, 1)
            self.from_prev = conv(width, width - width // 2, 1)

    def forward(self, msb_out, prev=None):
        if self.first:
            return self.from_msb(msb_out)
        return torch.cat([self.from_msb(msb_out), self.from_prev(prev)], dim=1)


class MBFNet(nn.Module):
    """Multi-scale backward fusion network (Eq. 7-10).

    t + 1 MSBs on H(I); t BPBs walking their outputs backwards; HFA concatenates all MSB
    outputs, the last BPB output and H(I_{i+d}); Conv1_R, Conv3, + H(I) (long skip), Conv3
    to 3 channels.

    Args:
        width: feature width.
        t: index of the last MSB (t + 1 blocks).
        image_skip: add the prediction to I (last conv zero-initialised).
    """

    def __init__(self, width: int, t: int, image_skip: bool, act: type[nn.Module] = nn.RReLU):
        super().__init__()
        self.image_skip = image_skip
        self.h_id = conv(6, width, 3)
        self.msbs = nn.ModuleList(MSB(width, act) for _ in range(t + 1))
        self.bpbs = nn.ModuleList(BPB(width, first=(k == 0), act=act) for k in range(t))
        n_cat = (t + 1) + (1 if t > 0 else 0) + 1  # MSB outputs, last BPB output, H(I_i+d)
        self.hfa = nn.Sequential(conv(n_cat * width, width, 1), act(), conv(width, width, 3))
        self.out = conv(width, 3, 3)
        if image_skip:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x, x_id, h_x):
        """(the 3-channel image I^MBF, the fused feature map it is made from)"""
        msb_outs = []
        feat = h_x
        for msb in self.msbs:
            feat = msb(feat)
            msb_outs.append(feat)
        feat = self.hfa[2](self.hfa[1](self._fused(x_id, msb_outs))) + h_x
        y = self.out(feat)
        return (x + y if self.image_skip else y), feat

    def _fused(self, x_id, msb_outs):
        """HFA's 1x1 convolution of concat(MSB outputs, last BPB output, H(I_{i+d})) as a sum of
        one convolution per part: the same numbers without the concatenation (five feature maps
        copied into one). Every BPB but the first is linear (two 1x1 convolutions, no
        activation), so the chain folds into the weights on the MSB outputs and on the first
        BPB's output, and H's 3x3 convolution into the weights that read it: H(I_{i+d}) and the
        later BPBs are never made."""
        fuse, width, t = self.hfa[0], len(self.h_id.weight), len(self.msbs) - 1
        parts = list(fuse.weight[:, :, 0, 0].split(width, dim=1))
        on_m, on_b, on_h = parts[:t + 1], (parts[t + 1] if self.bpbs else None), parts[-1]
        bias = fuse.bias + on_h @ self.h_id.bias
        for k in range(len(self.bpbs) - 1, 0, -1):  # the last BPB's weights walked back to the first's
            blk, h = self.bpbs[k], len(self.bpbs[k].from_msb.weight)  # BPB k reads MSB t - k and BPB k - 1
            bias = bias + on_b[:, :h] @ blk.from_msb.bias + on_b[:, h:] @ blk.from_prev.bias
            on_m[t - k] = on_m[t - k] + on_b[:, :h] @ blk.from_msb.weight[:, :, 0, 0]
            on_b = on_b[:, h:] @ blk.from_prev.weight[:, :, 0, 0]
        acc = F.conv2d(x_id, after(on_h, self.h_id.weight), bias, padding=self.h_id.padding)
        if on_b is not None:
            acc = acc + F.conv2d(self.bpbs[0](msb_outs[-1]), on_b[:, :, None, None])
        for m, w in zip(msb_outs, on_m):
            acc = acc + F.conv2d(m, w[:, :, None, None])
        return acc


class FixedRReLU(nn.LeakyReLU):
    """RReLU as it computes at inference (slope (1/8 + 1/3) / 2), in training too. Swapping it
    for RReLU changes nothing a trained network outputs; training then sees no random slopes,
    which act like dropout noise and cost a PSNR-trained model its last fractions of a dB."""

    def __init__(self):
        super().__init__((1 / 8 + 1 / 3) / 2)


# ----------------------------------------------------------------------------- PENet

class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise (stride s), 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 2, act: type[nn.Module] = nn.ReLU6):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv(cin, hidden, 1), act(),
            conv(hidden, hidden, 3, stride=stride, groups=hidden), act(),
            conv(hidden, cout, 1),
        )

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


IDENTITY_TRANSFORM = (0.0,) * 9 + (1.0,) * 3  # A with M = 0, a = 1: PENet changes nothing


class PENet(nn.Module):
    """Perceptual enhancement network (Fig. 3): an encoder-decoder on H(I) that predicts the
    12-channel per-pixel transform A at input size.

    Stages 1-3 encode at /1, /2, /4; stages 4-5 work at /8 with w3 channels; stages 6-8
    upsample by transposed convolutions with copy-and-concat skips; stage 9 is a 1x1 conv to
    12 channels, initialised so that A is the identity transform. Sizes that are not a
    multiple of 8 are padded by reflection and cropped back.
    """

    def __init__(self, width: int, widths: tuple[int, int, int]):
        super().__init__()
        w1, w2, w3 = widths
        self.stage1 = nn.Sequential(conv(width, w1, 1), InvertedResidual(w1, w1))
        self.stage2 = InvertedResidual(w1, w2, stride=2)
        self.stage3 = InvertedResidual(w2, w3, stride=2)
        self.stage45 = nn.Sequential(InvertedResidual(w3, w3, stride=2), InvertedResidual(w3, w3))
        self.up6 = nn.ConvTranspose2d(w3, w3, 2, stride=2)
        self.stage6 = InvertedResidual(2 * w3, w2)
        self.up7 = nn.ConvTranspose2d(w2, w2, 2, stride=2)
        self.stage7 = InvertedResidual(2 * w2, w1)
        self.up8 = nn.ConvTranspose2d(w1, w1, 2, stride=2)
        self.stage8 = InvertedResidual(2 * w1, w1)
        self.stage9 = conv(w1, 12, 1)
        nn.init.zeros_(self.stage9.weight)
        with torch.no_grad():
            self.stage9.bias.copy_(torch.tensor(IDENTITY_TRANSFORM))

    def forward(self, h_x, bias=None):
        """``bias``: N x w3 added to the bottleneck (the global context), or None."""
        h, w = h_x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            h_x = F.pad(h_x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        s1 = self.stage1(h_x)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        y = self.stage45(s3)
        if bias is not None:
            y = y + bias[:, :, None, None]
        y = self.stage6(torch.cat([self.up6(y), s3], dim=1))
        y = self.stage7(torch.cat([self.up7(y), s2], dim=1))
        y = self.stage8(torch.cat([self.up8(y), s1], dim=1))
        return self.stage9(y)[..., :h, :w]


CONTEXT_SIDE = 64  # the global context is read from a thumbnail this size


def context_thumbnail(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x 64 x 64 area-averaged thumbnail of the whole image (aspect not kept)."""
    return F.adaptive_avg_pool2d(x, CONTEXT_SIDE)


class GlobalContext(nn.Module):
    """Image-level statistics for PENet: three stride-2 convs on the thumbnail (64 -> 8),
    mean- and max-pooled, then two linear layers to one vector per image. The last layer
    starts at zero: no context until trained."""

    def __init__(self, out: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(conv(3, 16, 3, stride=2), nn.ReLU(), conv(16, width, 3, stride=2), nn.ReLU(),
                                  conv(width, width, 3, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, out))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, thumb):
        f = self.body(thumb)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1))


def local_transform(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out_i = sum_j M_ij x_j (1 - x_j) + a_i x_i with M = A[0:9] (row-major), a = A[9:12]."""
    g = x * (1 - x)
    n, _, h, w = x.shape
    m = a[:, :9].reshape(n, 3, 3, h, w)
    return (m * g.unsqueeze(1)).sum(dim=2) + a[:, 9:12] * x


POLY_TERMS = 13  # r, g, b, their squares and cubes, rg, rb, gb, and 1


def colour_polynomial(x: torch.Tensor) -> torch.Tensor:
    """The 13 terms of the cubic colour polynomial, per pixel: N x 3 x H x W -> N x 13 x H x W."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    sq = x * x
    return torch.cat([x, sq, sq * x, r * g, r * b, g * b, torch.ones_like(r)], dim=1)


def identity_polynomial() -> torch.Tensor:
    """3 x 13 coefficients that leave every colour as it is."""
    m = torch.zeros(3, POLY_TERMS)
    m[:, :3] = torch.eye(3)
    return m


TONE_TERMS = 3  # the tone stage's settings: exposure (EV), chroma and luma noise reduction
GAMMA = 2.2  # the tone stage's approximation of sRGB's transfer curve


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 3 sigma, reflected borders; repeated on an image too
    small to reflect), channel by channel."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.transpose(2, 3), groups=x.shape[1])


def tone(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The tone stage (N x 3 settings ``t``; all 0 is the identity): exposure in linear light
    with a shoulder that keeps white white (``g x / (1 + (g - 1) x)``, g = 2^EV: slope g in the
    shadows, 1 stays 1, nothing clips), then noise reduction scaled by how much the photo was
    brightened: the chroma (the colour blotches of a dark frame) and the luma blended towards a
    blurred copy by the clamped amounts t[1], t[2]. Local (a 7 px radius), so tiles still join."""
    t = t.to(x.dtype)
    g = torch.exp2(t[:, 0].clamp(-3, 6)).view(-1, 1, 1, 1)
    lin = x.clamp(1e-6, 1) ** GAMMA
    x = (g * lin / (1 + (g - 1) * lin)).clamp(1e-8, 1) ** (1 / GAMMA)  # 1e-8: 0.06 of an 8-bit level
    luma = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    chroma = x - luma
    # clamped going forward, but the gradient passes as if not: a clamp's dead zone would stop
    # training for good the first time a step pushed an amount below 0 (the first try's did)
    amounts = t[:, 1:3] + (t[:, 1:3].clamp(0, 1) - t[:, 1:3]).detach()
    a_c, a_y = amounts[:, 0].view(-1, 1, 1, 1), amounts[:, 1].view(-1, 1, 1, 1)
    # (under bfloat16 autocast the blur's convolutions come back in bfloat16)
    chroma = torch.lerp(chroma, blur(chroma, 2.0).to(x.dtype), a_c)
    luma = torch.lerp(luma, blur(luma, 1.0).to(x.dtype), a_y)
    return luma + chroma


LEVEL_STATS = 6
# The tone stage acts on frames taken in near darkness only: its output is gated by the mean
# luma of the thumbnail: 92% at 0.075, half at DARK_MEAN, 1.4% at 0.12, 0.1% at 0.14. LOL's dark frames
# have a mean luma of 0.009-0.275 (5th-95th percentile 0.015-0.122); photos that need no lift,
# 0.13 and up (bsd200, Set14, FiveK's inputs). A gate centred at 0.10 and half as steep let
# the stage take 2.4 dB from a dim FiveK frame (mean 0.142) in a k-fold (weights/README.md).
DARK_MEAN = 0.09
DARK_GATE_SLOPE = 10.0  # per stop
# Below this gate (a mean luma above about 0.14) inference skips the tone stage: its exposure
# and noise reduction are then under a thousandth of their strength (``photo_settings``)
TONE_OFF = 1e-3


def level_stats(thumb: torch.Tensor) -> torch.Tensor:
    """N x 6 statistics of N thumbnails, in stops: log2 of the mean luma and of its 50th, 90th
    and 99th percentiles, and of the mean red and blue over the mean green (the grey-world
    cast). A frame taken in near darkness differs from a dim one by stops, which convolutions
    on the raw values barely see."""
    t = thumb.float()
    luma = (t * t.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).flatten(1)
    q = torch.quantile(luma, t.new_tensor([0.5, 0.9, 0.99]), dim=1).T
    rgb = t.mean((2, 3)) + 1e-3
    levels = torch.log2(torch.cat([luma.mean(1, keepdim=True), q], dim=1) + 1e-3)
    return torch.cat([levels, torch.log2(rgb[:, 0::2] / rgb[:, 1:2])], dim=1).to(thumb.dtype)


class DarkDenoiser(nn.Module):
    """The tone stage's denoiser: a small residual CNN (``depth`` 3x3 convolutions, a 5 px
    radius: tiles and bands still join) on a frame the tone stage has lifted, told how far it
    was lifted (the stage's settings, as constant input planes). Its residual is scaled by the
    dark gate (``GlobalLook``), so a photo that is not dark is left exactly as it was; its last
    layer starts at zero, so a tone stage gains it without changing until it is trained
    (``look.train_denoiser``). The blur blend of ``tone`` cannot tell noise from texture; this
    can, from the frames it is trained on (LOL's real low-light noise and ``degrade.dark_frame``)."""

    def __init__(self, width: int = 24, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [conv(3 + TONE_TERMS, width, 3), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [conv(width, width, 3), nn.ReLU()]
        layers.append(conv(width, 3, 3))
        for c in layers[::2]:  # the photo's edge repeated, not black: it runs on whole photos (tiling.apply_look)
            c.padding_mode = "replicate"
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``x`` after the tone stage, ``t`` its N x 3 settings, ``gate`` N (0: not dark)."""
        n, _, h, w = x.shape
        cond = torch.stack([t[:, 0].clamp(-3, 6) / 6, t[:, 1].clamp(0, 1), t[:, 2].clamp(0, 1)], dim=1)
        planes = cond.to(x.dtype).view(-1, TONE_TERMS, 1, 1).expand(n, -1, h, w)
        return x + gate.to(x.dtype).view(-1, 1, 1, 1) * self.body(torch.cat([x, planes], dim=1))


REPAIR_STEPS = 65  # points of the grey axis grey_repair reads the colour mapping at
REPAIR_TOP = 0.9  # from this grey on, the repaired curve is pulled up to end at white
HIGHLIGHT_KNEE = 0.9  # above this, a value the look raises is rolled off below white (highlight_guard)


def grey_repair(poly: torch.Tensor) -> torch.Tensor:
    """N x 3 x REPAIR_STEPS: what to add to the colour mapping ``poly`` (N x 3 x 13) at each
    brightness (black to white) so that, along the grey axis, it never falls and ends at white.

    The cubic is fitted to each photo's own colours, and a dim photo has few bright pixels: its
    curve can peak mid-way and fall beyond (a dim FiveK frame's mapped white (1, 1, 1) to
    (0.36, -0.13, -0.59): a lamp or a blown sky came out brown, or cyan). Per channel, the
    curve is kept up to its highest point, held there (never falling), and from there, or
    from ``REPAIR_TOP`` if it peaks later, it rises in a straight line to 1 at white; a curve
    that has passed white by then is held where it is, never above the larger of white and
    the curve's own end. What passed white is then rolled off below it, pixel by pixel
    (``highlight_guard``, in ``GlobalLook.map``), so the grey axis keeps its order up to white
    instead of flattening at 1. All of it is continuous in the coefficients (a small change of
    the look is a small change of the photo), and a curve that already rises to white is
    unchanged. Applied at inference (``GlobalLook`` in
    eval mode, ``photo_settings``): training fits the cubic where the photos' colours are."""
    g = torch.linspace(0, 1, REPAIR_STEPS, dtype=poly.dtype, device=poly.device)
    grey = g.view(1, 1, 1, -1).expand(1, 3, 1, -1)
    curve = torch.einsum("nit,nthw->nihw", poly, colour_polynomial(grey))[:, :, 0]  # N x 3 x S
    held = torch.cummax(curve, dim=2).values
    peak = torch.argmax(held, dim=2, keepdim=True)  # first index of the highest point
    top = torch.minimum(peak, torch.full_like(peak, round(REPAIR_TOP * (REPAIR_STEPS - 1))))
    g0, v0 = g[top], held.gather(2, top)
    ramp = v0 + (v0.clamp_min(1) - v0) * ((g - g0) / (1 - g0).clamp_min(1e-6)).clamp(0, 1)  # held if past white
    # never above where the curve ends, or white: no more lift than reaching white needs
    repaired = torch.minimum(torch.where(g >= g0, ramp, held), curve[:, :, -1:].clamp_min(1))
    return repaired - curve


def highlight_guard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y``, the look's mapping of ``x`` (before clamping), with what the look pushed past
    the knee rolled off so that it stays below white: the look never blows a highlight the
    photo did not have.

    A steep curve sends a bright colour past white in one channel (a pink dress at red 206
    came out at 255 and beyond, the expert's at 228: 5% of a FiveK frame's pixels clipped
    against 0.1% in the retouch). Per channel, above ``c = max(x, HIGHLIGHT_KNEE)`` the excess
    ``e`` becomes ``c + (1 - c) e / ((1 - c) + e)``: continuous, of slope 1 at ``c``, reaching
    white only at infinity. A value the look did not raise (``y <= x``), one below the knee,
    and an input already at white are left as they are, so the identity stays the identity
    and a blown sky stays white."""
    c = x.clamp(HIGHLIGHT_KNEE, 1)
    room, over = 1 - c, (y - c).clamp_min(0)
    return torch.where(y > c, c + room * (1 - room / (room + over).clamp_min(1e-6)), y)


class GlobalLook(nn.Module):
    """One colour mapping per photo, read from its thumbnail (not in the paper; the family of
    3D-LUT and curve enhancers): four stride-2 convs on the 64 x 64 thumbnail, mean- and
    max-pooled, two linear layers to the 3 x 13 coefficients of a cubic colour polynomial
    (``colour_polynomial``), applied to every pixel. Fitted to each photo's own target, that
    polynomial reproduces expert C's FiveK retouch to 38 dB (docs/network.md): a retoucher's
    look is mostly global. It starts as the identity (the last layer at zero), costs 39
    multiply-adds a pixel, and gives every tile of a photo the same look.

    With ``tone``, a second small head (the same features and ``level_stats``) sets a tone
    stage applied before the polynomial (``tone``): an exposure that can lift a frame taken in
    near darkness by several stops without clipping, and the noise reduction such a lift
    needs; and it adds its own correction to the polynomial's coefficients (the colour and
    contrast such a frame needs). Gated by the thumbnail's mean luma (``DARK_MEAN``), it
    leaves a photo that is not dark exactly to the polynomial. It is trained after the
    polynomial's head, which it leaves as it was (``look.train_tone``); it too starts as the
    identity."""

    def __init__(self, width: int = 32, tone: bool = False, denoise: bool = False):
        super().__init__()
        if denoise and not tone:
            raise ValueError("the denoiser is part of the tone stage: denoise needs tone")
        self.body = nn.Sequential(conv(3, 16, 3, stride=2), nn.ReLU(), conv(16, width, 3, stride=2), nn.ReLU(),
                                  conv(width, 2 * width, 3, stride=2), nn.ReLU(),
                                  conv(2 * width, 2 * width, 3, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, 3 * POLY_TERMS))
        self.tone_head = nn.Sequential(nn.Linear(4 * width + LEVEL_STATS, 2 * width), nn.ReLU(),
                                       nn.Linear(2 * width, TONE_TERMS + 3 * POLY_TERMS)) if tone else None
        self.denoiser = DarkDenoiser() if denoise else None
        for last in (self.head[-1],) + ((self.tone_head[-1],) if tone else ()):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("identity", identity_polynomial(), persistent=False)

    @property
    def tone(self) -> bool:
        return self.tone_head is not None

    def settings(self, thumb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N x 3 x 13 polynomial coefficients, tone settings or None) for N thumbnails. The
        tone settings are N x 4: exposure and the two noise reductions (``tone``), gated, and
        the dark gate itself (1: a frame taken in near darkness, 0: not dark)."""
        f = self.body(thumb)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
        poly = self.identity + self.head(f).view(-1, 3, POLY_TERMS)
        if not self.tone:
            return poly, None
        levels = level_stats(thumb)
        gate = torch.sigmoid(DARK_GATE_SLOPE * (math.log2(DARK_MEAN) - levels[:, :1]))
        t = self.tone_head(torch.cat([f, levels], dim=1)) * gate
        return poly + t[:, TONE_TERMS:].view(-1, 3, POLY_TERMS), torch.cat([t[:, :TONE_TERMS], gate], dim=1)

    @torch.no_grad()
    def photo_settings(self, thumb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``settings`` for inference on one photo, for ``with_settings``: the tone stage
        dropped (None) where its gate is below ``TONE_OFF``, so a photo that is not dark skips
        its arithmetic, and the mapping's ``grey_repair``, made once for every band or tile."""
        poly, t = self.settings(thumb)
        if t is not None and float(t[:, TONE_TERMS].max()) < TONE_OFF:
            t = None
        return poly, t, grey_repair(poly)

    def coefficients(self, thumb: torch.Tensor) -> torch.Tensor:
        """N x 3 x 13 for N thumbnails (N x 3 x 64 x 64)."""
        return self.settings(thumb)[0]

    def forward(self, x: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        """The look on ``x``; in eval mode with its ``grey_repair`` (training fits the cubic
        where the photos' colours are)."""
        poly, t = self.settings(thumb.to(x.dtype))
        return self.with_settings(x, poly, t, None if self.training else grey_repair(poly))

    def with_settings(self, x: torch.Tensor, poly: torch.Tensor, t: torch.Tensor | None,
                      repair: torch.Tensor | None = None) -> torch.Tensor:
        """The look with its settings (of the whole photo: ``settings``, ``photo_settings``) on
        ``x``: a tile or band of it."""
        if t is not None:
            t = t.to(x.dtype).expand(x.shape[0], -1)
            x = tone(x, t[:, :TONE_TERMS])
            if self.denoiser is not None:
                x = self.denoiser(x, t[:, :TONE_TERMS], t[:, TONE_TERMS])
        return self.map(x, poly, repair)

    @torch.no_grad()
    def scale_(self, strength: float) -> GlobalLook:
        """The look at ``strength`` (``with_strength``), in place: its coefficients are the
        identity plus the head's output, and the tone head's settings and the denoiser's
        residual are 0 at the identity, so scaling each one's last layer scales the look."""
        lasts = (self.head[-1],) + ((self.tone_head[-1],) if self.tone else ())
        for last in lasts + ((self.denoiser.body[-1],) if self.denoiser is not None else ()):
            last.weight.mul_(strength)
            last.bias.mul_(strength)
        return self

    @staticmethod
    def map(x: torch.Tensor, m: torch.Tensor, repair: torch.Tensor | None = None) -> torch.Tensor:
        """Apply coefficients ``m`` (1 or N x 3 x 13) to every pixel of ``x``, plus ``repair``
        (``grey_repair``'s table) read at each pixel's brightness, its largest channel; with
        the repair (inference), the highlights the mapping raised are rolled off below white
        (``highlight_guard``)."""
        m = m.to(x.dtype).expand(x.shape[0], -1, -1)
        y = torch.einsum("nit,nthw->nihw", m, colour_polynomial(x))
        if repair is not None:
            n, _, h, w = x.shape
            pos = x.amax(1, keepdim=True).clamp(0, 1).flatten(2) * (REPAIR_STEPS - 1)  # N x 1 x HW
            i = pos.floor().clamp(max=REPAIR_STEPS - 2)
            frac = pos - i
            table = repair.to(x.dtype).expand(n, -1, -1)
            idx = i.long().expand(-1, 3, -1)
            lo, hi = table.gather(2, idx), table.gather(2, idx + 1)
            y = highlight_guard(x, y + torch.lerp(lo, hi, frac).view(n, 3, h, w))
        return y.clamp(0, 1)


# ----------------------------------------------------------------------------- DUNet

class DUNet(nn.Module):
    """Dual-path upsampling network (Eq. 13).

    Top path 5x5, bottom path 3x3, each to ``3p`` channels split in three parts of ``p``:
    part 1 stays, part 2 crosses to the other path, part 3 skips ahead. The second convs
    give ``(s^2 - 1) p`` channels so that, concatenated with the skip part, PixelShuffle(s)
    leaves ``p`` channels a path; a 1x1 conv fuses both paths to 3 channels.

    Args:
        scale: upsampling factor (any integer >= 1).
        width: 3p, channels of each path after its first conv.
        zero_init: start at a zero output (used with the bicubic skip).
    """

    def __init__(self, scale: int, width: int, zero_init: bool, features: int = 0):
        super().__init__()
        p = width // 3
        self.p = p
        self.top1 = conv(3 + features, 3 * p, 5)
        self.bot1 = conv(3 + features, 3 * p, 3)
        if features:  # the feature inputs start silent: the image path alone, as in the paper
            for c in (self.top1, self.bot1):
                nn.init.zeros_(c.weight[:, 3:])
        self.top2 = conv(2 * p, (scale * scale - 1) * p, 5)
        self.bot2 = conv(2 * p, (scale * scale - 1) * p, 3)
        self.shuffle = nn.PixelShuffle(scale)
        self.fuse = conv(2 * p, 3, 1)
        if zero_init:
            nn.init.zeros_(self.fuse.weight)
            nn.init.zeros_(self.fuse.bias)

    def forward(self, x, feat=None):
        if feat is not None:
            x = torch.cat([x, feat], dim=1)
        # fuse(cat(shuffle(t), shuffle(b))) computed as shuffle(K_t t + K_b b): a 1x1 conv
        # commutes with the pixel shuffle when it acts on each sub-pixel position alike, so the
        # fusing weights W become K = kron(W, I) at the low resolution. Each path's map is
        # (its second conv's output, its skip part): K is folded into both, so the second
        # convs give 3 s^2 channels instead of (s^2 - 1) p, the skip parts come out of the
        # first convs already fused, and no 2x feature map or concatenation is made (the same
        # numbers; one 352 px tile of srpie-x2-fast 1.05-1.08x faster, compiled in bfloat16)
        p, s2 = self.p, self.shuffle.upscale_factor ** 2
        w = self.fuse.weight[:, :, 0, 0]
        eye = torch.eye(s2, dtype=w.dtype, device=w.device)
        k_t, k_b = torch.kron(w[:, :p], eye), torch.kron(w[:, p:], eye)
        t1, t2, t_skip = self._first(self.top1, k_t, x, self.fuse.bias.repeat_interleave(s2))
        b1, b2, b_skip = self._first(self.bot1, k_b, x)
        y = self._second(self.top2, k_t, torch.cat([t1, b2], dim=1)) + \
            self._second(self.bot2, k_b, torch.cat([b1, t2], dim=1)) + t_skip + b_skip
        return self.shuffle(y)

    def _first(self, conv, k, x, bias=None):
        """A path's first conv: parts 1 and 2 as they are, part 3 (the skip) through ``k``."""
        p, n = self.p, k.shape[1] - self.p
        weight = torch.cat([conv.weight[:2 * p], after(k[:, n:], conv.weight[2 * p:])])
        skip_bias = k[:, n:] @ conv.bias[2 * p:] + (0 if bias is None else bias)
        out = F.conv2d(x, weight, torch.cat([conv.bias[:2 * p], skip_bias]), padding=conv.padding)
        return out.split([p, p, len(k)], dim=1)

    def _second(self, conv, k, x):
        """A path's second conv with ``k``'s share of the fusion folded in: 3 s^2 channels."""
        n = k.shape[1] - self.p
        return F.conv2d(x, after(k[:, :n], conv.weight), k[:, :n] @ conv.bias,
                        padding=conv.padding)


class PixelShuffleHead(nn.Module):
    """The ablation baseline for DUNet (Table 1, row 11): 3x3 conv to 3 s^2, PixelShuffle."""

    def __init__(self, scale: int, zero_init: bool):
        super().__init__()
        self.conv = conv(3, 3 * scale * scale, 3)
        self.shuffle = nn.PixelShuffle(scale)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.shuffle(self.conv(x))


# ----------------------------------------------------------------------------- the network

class DeepSRPIE(nn.Module):
    """Deep SR-PIE. Input: N x 3 x H x W RGB in [0, 1]; output N x 3 x sH x sW (unclamped)."""

    def __init__(self, cfg: SRPIEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SRPIEConfig()
        if cfg.scale < 1:
            raise ValueError("scale must be >= 1")
        self.h = conv(3, cfg.width, 3)  # the shallow feature H(I), shared by MBFNet and PENet
        self.mbfnet = MBFNet(cfg.width, cfg.t, image_skip=cfg.global_skip,
                             act=nn.RReLU if cfg.rrelu else FixedRReLU)
        if cfg.look_width and not cfg.own_look_input:
            raise ValueError("look_width needs own_look_input (PENet otherwise reads MBFNet's H(I))")
        look_width = cfg.look_width or cfg.width
        self.penet = PENet(look_width, cfg.pe_widths)
        self.pe_h = conv(3, look_width, 3) if cfg.own_look_input else None  # PENet's own H(I)
        self.context = GlobalContext(cfg.pe_widths[2]) if cfg.global_context else None
        if cfg.look_tone and not cfg.global_look:
            raise ValueError("look_tone needs global_look")
        if cfg.look_denoise and not cfg.look_tone:
            raise ValueError("look_denoise needs look_tone")
        self.global_look = GlobalLook(tone=cfg.look_tone, denoise=cfg.look_denoise) if cfg.global_look else None
        if cfg.du_features and not cfg.dunet:
            raise ValueError("du_features needs DUNet (dunet=True)")
        self.up = (DUNet(cfg.scale, cfg.du_width, zero_init=cfg.global_skip,
                         features=cfg.width if cfg.du_features else 0) if cfg.dunet
                   else PixelShuffleHead(cfg.scale, zero_init=cfg.global_skip))

    @property
    def scale(self) -> int:
        return self.cfg.scale

    def forward(self, x, context=None):
        """``context``: the thumbnail of the whole photo ``x`` is a part of (1 or N x 3 x 64 x
        64, from ``context_thumbnail``); None: ``x`` is the whole photo. Ignored by networks
        without ``global_context`` or ``global_look``. The global look maps the colours of the
        input before anything else sees them."""
        if self.global_look is not None:
            x = self.global_look(x, context_thumbnail(x) if context is None else context)
        return self.after_look(x, context)

    def after_look(self, x, context=None):
        """Everything but the global look: the upscaler and PENet on ``x`` as the look left it."""
        x_id = decompose(x, self.cfg.gf_radius, self.cfg.gf_eps)
        h_x = self.h(x)
        mbf, feat = self.mbfnet(x, x_id, h_x)
        bias = None
        if self.context is not None:
            thumb = context_thumbnail(x) if context is None else context.to(x.dtype)
            bias = self.context(thumb).expand(x.shape[0], -1)
        pe = local_transform(self.penet(h_x if self.pe_h is None else self.pe_h(x), bias), mbf)
        y = self.up(pe, feat) if self.cfg.du_features else self.up(pe)
        if self.cfg.global_skip:
            y = y + upsample_bicubic(pe, self.cfg.scale)
        return y


class Upscaler(nn.Module):
    """``net`` without its global look (``DeepSRPIE.after_look``): what runs tile by tile once
    the look has been applied to the whole photo (``tiling.apply_look``). The look is one
    mapping per photo: applied once, it is not recomputed in every tile and its overlaps, and a
    photo that is not dark skips the tone stage (``GlobalLook.photo_settings``)."""

    def __init__(self, net: DeepSRPIE):
        super().__init__()
        self.net = net
        self.cfg = replace(net.cfg, global_look=False, look_tone=False, look_denoise=False)

    @property
    def scale(self) -> int:
        return self.net.scale

    def forward(self, x, context=None):
        return self.net.after_look(x, context)


def _rebuilt(model: DeepSRPIE, state: dict | None = None, **changes) -> DeepSRPIE:
    """A new network with ``changes`` to ``model``'s config, loaded with ``state`` (default:
    the model's own), in the model's train/eval mode."""
    new = DeepSRPIE(replace(model.cfg, **changes))
    full = new.state_dict()  # parts the change adds keep their initialisation
    full.update(model.state_dict() if state is None else state)
    new.load_state_dict(full)
    return new.train(model.training)


def without_rrelu(model: DeepSRPIE) -> DeepSRPIE:
    """The same network with RReLU fixed at its inference slope (identical outputs in eval)."""
    return _rebuilt(model, rrelu=False)


def widen(model: DeepSRPIE) -> DeepSRPIE:
    """The same network with ``du_features`` on: every trained weight copied, DUNet's new
    feature inputs at zero, so it computes the same function until trained further."""
    state = model.state_dict()
    for name in ("up.top1.weight", "up.bot1.weight"):
        w = state[name]
        state[name] = torch.cat([w, w.new_zeros(w.shape[0], model.cfg.width, *w.shape[2:])], dim=1)
    return _rebuilt(model, state, du_features=True)


def with_context(model: DeepSRPIE) -> DeepSRPIE:
    """The same network with ``global_context`` on: every trained weight copied, the context
    branch's last layer at zero, so it computes the same function until trained further."""
    return _rebuilt(model, global_context=True)


LOOK_PARTS = ("penet", "pe_h", "context", "global_look")  # what a graft moves and --look-only trains: the look


def graft_look(upscaler: DeepSRPIE, look: DeepSRPIE) -> DeepSRPIE:
    """``upscaler``'s shallow feature, MBFNet and DUNet with ``look``'s PENet and global
    context: a joint model whose strength 0 (``with_strength``) is exactly ``upscaler``
    (PENet then reads its own shallow feature, ``own_look_input``, taken from ``look``'s).
    Fine-tuned with ``--look-only``, the look learns to work on this upscaler's MBFNet output
    while the upscaler stays as it is. The two may be of different presets: the look keeps its
    own widths (``look_width``, ``pe_widths``), as it meets the upscaler only through MBFNet's
    3-channel output."""
    a, b = upscaler.cfg, look.cfg
    if a.scale != b.scale:
        raise ValueError(f"graft_look: the upscaler is x{a.scale}, the look's network x{b.scale}")
    look_width = b.look_width or b.width
    new = DeepSRPIE(replace(a, own_look_input=True, global_context=b.global_context, pe_widths=b.pe_widths,
                            look_width=0 if look_width == a.width else look_width))
    state = {k: v for k, v in upscaler.state_dict().items() if k.split(".")[0] not in LOOK_PARTS}
    state.update({k: v for k, v in look.state_dict().items() if k.split(".")[0] in LOOK_PARTS})
    if not b.own_look_input:  # the look read the shared H(I): it keeps reading that conv's weights
        state.update({"pe_h." + k.split(".", 1)[1]: v for k, v in look.state_dict().items() if k.startswith("h.")})
    new.load_state_dict(state)
    return new.train(upscaler.training)


def penet_is_look(model: DeepSRPIE) -> bool:
    """Whether PENet is ``model``'s look (what ``with_strength`` scales) rather than a part of
    its upscaler: with no global look in front, or on its own input (``graft_look``)."""
    return model.global_look is None or model.cfg.own_look_input


def with_strength(model: DeepSRPIE, strength: float) -> DeepSRPIE:
    """The look applied at ``strength``: a global look's colour mapping M becomes
    I + strength (M - I), and where PENet is a look (not part of the upscaler) its per-pixel
    transform A likewise, so 0 leaves colour and tone to the upscaler alone, 1 is the look as
    trained, and values between scale the correction (above 1 exaggerates it). Both are linear
    in their last layer, so the scaling is folded into its weights: no cost at inference.
    Changes ``model`` in place and returns it."""
    if not 0 <= strength <= 2:
        raise ValueError(f"strength {strength} outside 0..2")
    if strength == 1:
        return model
    if model.global_look is not None:
        model.global_look.scale_(strength)
    with torch.no_grad():
        if penet_is_look(model):
            last = model.penet.stage9
            ident = torch.tensor(IDENTITY_TRANSFORM, dtype=last.bias.dtype, device=last.bias.device)
            last.weight.mul_(strength)
            last.bias.copy_(ident + strength * (last.bias - ident))
    return model


def wants_context(model: nn.Module) -> bool:
    """Whether ``model`` (a network, or a wrapper with a ``cfg``) reads the thumbnail of the
    whole photo (a global context or a global look)."""
    cfg = getattr(model, "cfg", None)
    return bool(getattr(cfg, "global_context", False) or getattr(cfg, "global_look", False))


def upsample_bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling with replicated borders (align_corners=False, as Pillow/MATLAB)."""
    if scale == 2:
        return _bicubic2x(_bicubic2x(x, -1), -2)
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


# Keys' cubic (a = -0.75, as PyTorch) at a 2x output pixel's distances to its four inputs:
# pixel 2i sits at i - 1/4 (inputs i-2 .. i+1), pixel 2i + 1 at i + 1/4 (i-1 .. i+2)
BICUBIC2X_EVEN = (-0.03515625, 0.26171875, 0.87890625, -0.10546875)


def _bicubic2x(x: torch.Tensor, dim: int) -> torch.Tensor:
    """F.interpolate's bicubic 2x along one axis (-1 or -2), as sums of shifted slices: the
    same numbers, but a compiled graph fuses them into one loop, where the general
    interpolation gathers 16 clamped indices a pixel (4% of srpie-x2-fast's time a tile)."""
    n = x.shape[dim]
    p = F.pad(x, (2, 2, 0, 0) if dim == -1 else (0, 0, 2, 2), mode="replicate")
    s = [p.narrow(dim, k, n) for k in range(5)]  # s[k][i] = x[i + k - 2], borders repeated
    a, b, c, d = BICUBIC2X_EVEN
    even = a * s[0] + b * s[1] + c * s[2] + d * s[3]
    odd = d * s[1] + c * s[2] + b * s[3] + a * s[4]
    both = torch.stack([even, odd], dim=dim)  # ..., n, 2 (dim -1) or ..., n, 2, W (dim -2)
    return both.flatten(-2) if dim == -1 else both.flatten(-3, -2)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_input_pixel(model: nn.Module, size: int = 64) -> float:
    """FLOPs (2 per multiply-add) per input pixel, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / (size * size)
