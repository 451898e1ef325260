"""Every user-facing default, and the catalogue of shipped models, in one place.

Torch-free and cheap to import: the command line reads its defaults and help texts from
here before any network is loaded, and no other module keeps a copy of these values.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- the photos

QUALITY = 95  # JPEG and WebP quality of the outputs (written 4:4:4)
MAX_MEGAPIXELS = 150.0  # input size limit: a 150 MP medium-format frame passes, bombs do not
STRENGTH = 1.0  # how much of a joint model's look is applied (0 none, 1 as trained, up to 2)
SCALE = 2  # output size: 2x; --scale 1 applies the look alone, at the input's size
RAW_JPEG = "raw"  # which file of a RAW+JPEG pair is enhanced: raw, jpeg or both

# ----------------------------------------------------------------------------- the network

DEVICE = "auto"  # CUDA when present, else the CPU
# Tile side in input pixels. On a CPU a 192 px tile keeps a 64-channel feature map in cache
# (9 MB; a 384 px tile's is 38 MB) and runs 1.8x faster per pixel, eager (benchmarks/RESULTS.md);
# on CUDA larger tiles fill the device.
CPU_TILE = 192
# In bfloat16 a feature map is half the bytes, so larger tiles still fit the cache and lose
# less to their overlap: compiled, srpie-x2-fast on a 6 MP photo ran 1.17x faster in 320 px
# tiles than in 192 px (384 px: 1.06x); 288 to 352 px tiles run at the same speed per pixel,
# so a compiled run takes whichever of 352 and 320 covers each axis of the photo with the
# least slack (tiling.spans; benchmarks/RESULTS.md)
CPU_TILE_BF16 = 352
CUDA_TILE = 384
# Input pixels shared by neighbouring tiles (the blending ramp), and reflected around the photo.
# With the global look applied to the whole photo first (tiling.apply_look), srpie-x2-fast in
# 128 px tiles fitted to overlap by 12 is 81.9-83.6 dB from one whole-image pass, at most 2
# levels apart (by 8: 72.8-73.6 dB, 4 levels at 0.02% of pixels; by 24: 87.9-93.0 dB, 1
# level); a 24 MP photo in 320 px tiles runs 5% fewer pixels than with 24
# (benchmarks/RESULTS.md)
OVERLAP = 12
TILE_BATCH = 4  # tiles per forward pass (CUDA; the CPU runs them one at a time)
COMPILE = "auto"  # torch.compile: on, off, or auto (on a CPU for runs of COMPILE_MIN_MP or more)
# torch.compile costs tens of seconds once per run and tile shape and saves about a third of
# the CPU time per megapixel: it pays from a few megapixels on
COMPILE_MIN_MP = 8.0
# Arithmetic precision: auto (bfloat16 on a CPU with AVX512-BF16 or AMX: 2.3x float32 compiled
# at 54 dB PSNR from it, and int8 convolutions where it also has VNNI and the model a
# calibration; float16 on CUDA with --half), float32, bfloat16 or int8
PRECISION = "auto"
PRECISIONS = ("auto", "float32", "bfloat16", "int8")  # int8: bfloat16 with int8 feature convolutions (int8.py)
# Threads that decode the next photos and encode finished ones while the network works
# (Pillow's codecs release the GIL; batch.py: two photos decode ahead, and with more threads
# more outputs encode at once). On a CPU the network takes every core: two. On CUDA the cores
# are free, and a 2x output has four times the input's pixels to encode, so several encode at
# once, each holding its 8-bit output (288 MB for a 24 MP photo). Chosen, not yet measured on a
# GPU (benchmarks/RESULTS.md).
IO_THREADS = {"cpu": 2, "cuda": 6}

# ----------------------------------------------------------------------------- the look's training
# (srpie train-look, look.LookConfig; chosen by k-fold: weights/README.md)

LOOK_STEPS = 1500
LOOK_LR = 2e-3  # peak learning rate (Adam, cosine decay) of the look and of its tone stage
LOOK_PAIR_FRACTION = 0.5  # share of a batch from real pairs
LOOK_CLEAN_FRACTION = 0.7  # share of synthetic samples left undamaged: a photo that needs nothing stays
LOOK_CAST = 0.25  # strongest synthetic colour cast: log of the red/blue gain
LOOK_CHROMA = 0.0  # weight of the chroma term beside L1 (losses.chroma_gap; 0: L1 alone)
LOOK_TONE_STEPS = 800  # the tone stage's steps (exposure and noise reduction), after the look's
LOOK_DARK = 0.3  # share of the tone stage's good photos made dark, noisy frames (most under a cast)
LOOK_TONE_SIDE = 512  # long side of the tone stage's training photos: noise is pixel-sized, shrinking hides it
LOOK_TONE_CAST = 0.5  # strongest cast on the tone stage's synthetic dark frames (log of the red/blue gain)
LOOK_DENOISE_SSIM = 0.5  # weight of 1 - MS-SSIM beside L1 in the denoiser's loss
LOOK_DENOISE_LR = 1e-3  # the denoiser's learning rate (a CNN from scratch, not a head's last layers)

# ----------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class ShippedModel:
    """A model srpie ships: its name, weights file, what it does to a photo, and its
    architecture (a preset of ``model.PRESETS``; the weights file must match it)."""

    name: str
    file: str
    does: str  # what it does to a photo, in a photographer's words
    preset: str
    speed: str  # how fast it runs, relative to the others (measured: benchmarks/RESULTS.md)
    enhances: bool  # True: changes colour and tone; False: upscales only


SHIPPED: dict[str, ShippedModel] = {
    m.name: m
    for m in [
        ShippedModel("srpie-x2", "srpie-x2.pt", "upscale 2x and fix exposure, colour and tone",
                     "srpie-x2", "slow: the full network", True),
        ShippedModel("srpie-x2-sr", "srpie-x2-sr.pt", "upscale 2x only; colour and tone left as they are",
                     "srpie-x2-sr", "slow: the full network", False),
        ShippedModel("srpie-x2-fast", "srpie-x2-fast.pt", "upscale 2x and fix exposure, colour and tone",
                     "srpie-x2-fast", "4.5x less arithmetic than srpie-x2", True),
        ShippedModel("srpie-x2-fast-sr", "srpie-x2-fast-sr.pt", "upscale 2x only; colour and tone left as they are",
                     "srpie-x2-fast-sr", "4.6x less arithmetic than srpie-x2-sr", False),
    ]
}
# The default does the pass srpie replaces: upscale and fix exposure, colour and tone.
# srpie-x2 became it once it scored above bicubic on photos that need nothing (Set5, Set14:
# weights/README.md); --model srpie-x2-sr leaves colour and tone as they are.
MODEL = "srpie-x2"
# On a CPU the default is the fast joint model: the same pass at 4.5x less arithmetic (a 24 MP
# photo in about a minute instead of many: benchmarks/RESULTS.md); MODEL stays the default on
# CUDA. Only when the user names no model (inference.Settings.model None).
CPU_MODEL = "srpie-x2-fast"
EVAL_MODEL = "srpie-x2-sr"  # srpie eval's default: the SR protocol scores a pure upscaler
