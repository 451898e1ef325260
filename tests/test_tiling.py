import math

import numpy as np
import pytest
import torch

from srpie_cli.metrics import psnr
from srpie_cli.model import SRPIEConfig, config_for, context_thumbnail, upsample_bicubic
from srpie_cli.tiling import TileOptions, pick_device, ramp, spans, upscale
from tests.test_model import perturbed


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A photo-like test image: blurred noise with some edges."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h, w, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 7, 1, 3)
    x[..., h // 3: h // 2, :] += 0.3  # a horizontal band: edges
    return x.clamp(0, 1)


@pytest.mark.parametrize("length,tile,overlap", [(600, 128, 24), (440, 100, 16), (50, 128, 24), (129, 128, 8), (7, 4, 2)])
def test_spans_cover_the_axis_with_the_requested_overlap(length, tile, overlap):
    sp = spans(length, tile, overlap)
    assert sp[0][0] == 0 and sp[-1][1] == length
    for (a0, a1), (b0, _b1) in zip(sp, sp[1:]):
        assert a1 - b0 >= overlap  # neighbours share at least `overlap`
        assert b0 > a0
    sizes = {e - s for s, e in sp}
    assert len(sizes) == 1  # one window size per axis: one compiled shape
    assert sizes.pop() in ({length} if tile >= length else {tile, tile - 32})


@pytest.mark.parametrize("length", [6024, 4024, 3024, 5496, 1000, 700])
def test_one_shape_spans_take_the_size_near_the_tile_with_the_least_slack(length):
    """A compiled run keeps one window per axis, but not always the tile: of 352 and 320 the
    one whose windows cover the axis with the fewest pixels (24 MP: 12 rows of 352 instead of
    14 of 320; a 5472 x 3648 frame: 18 columns of 320 instead of 17 of 352)."""
    def covered(t):
        return math.ceil((length - 12) / (t - 12)) * t

    sp = spans(length, 352, 12)
    size = sp[0][1] - sp[0][0]
    assert len(sp) * size == covered(size) == min(covered(t) for t in (352, 320))
    if length == 4024:
        assert (len(sp), size) == (12, 352)  # 14 x 320 before
    if length == 5496:
        assert (len(sp), size) == (18, 320)


@pytest.mark.parametrize("length,tile,overlap", [(3048, 384, 24), (880, 384, 24), (600, 128, 24), (129, 128, 8), (50, 128, 24)])
def test_fitted_spans_keep_the_count_and_shrink_the_tiles(length, tile, overlap):
    fitted = spans(length, tile, overlap, fit=True)
    windows = 1 if tile >= length else math.ceil((length - overlap) / (tile - overlap))
    assert len(fitted) == windows  # no more windows (and no more forward passes) than tiles of the full size
    sizes = {e - s for s, e in fitted}
    assert len(sizes) == 1  # one tile shape per axis: the tiles still batch together
    size = sizes.pop()
    assert size <= min(tile, length) and (size % 8 == 0 or size == length)
    assert fitted[0][0] == 0 and fitted[-1][1] == length
    for (_a0, a1), (b0, _b1) in zip(fitted, fitted[1:]):
        assert a1 - b0 >= overlap
    # the fewest pixels: 8 px less per window would need another window
    if len(fitted) > 1 and size - 8 > overlap:
        n = len(fitted)
        assert (n - 1) * (size - 8 - overlap) + size - 8 < length


def test_ramp_rises_and_falls_smoothly_and_stays_positive():
    w = ramp(100, 20, 10)
    assert w.min() > 0 and torch.all(w[20:90] == 1)
    assert torch.all(w[:20].diff() > 0) and torch.all(w[90:].diff() < 0)
    # two overlapping windows: the weights add to about 1 across the shared region
    assert torch.allclose(ramp(40, 0, 20)[20:] + ramp(40, 20, 0)[:20], torch.ones(20), atol=1e-6)


@pytest.fixture(scope="module")
def tiled_and_whole():
    model = perturbed(config_for("fast"))
    x = smooth_image(440, 600)
    whole = upscale(model, x, TileOptions(tile=0))
    tiled = upscale(model, x, TileOptions(tile=128, overlap=24, tile_batch=3))
    bicubic = upsample_bicubic(x, 2).clamp(0, 1)
    return whole[0].permute(1, 2, 0).numpy(), tiled[0].permute(1, 2, 0).numpy(), bicubic[0].permute(1, 2, 0).numpy()


@pytest.mark.slow
def test_tiled_output_matches_whole_image_output(tiled_and_whole):
    whole, tiled, bicubic = tiled_and_whole
    assert whole.shape == tiled.shape == (880, 1200, 3)
    assert psnr(whole, bicubic) < 40  # the network really changes the image...
    assert psnr(tiled, whole) >= 50  # ...and tiling does not


def test_no_seam_along_tile_borders(tiled_and_whole):
    whole, tiled, _ = tiled_and_whole
    err = np.abs(tiled - whole).max(axis=2)
    # tile borders in output pixels (the image is reflection-padded by the overlap first)
    margin = 24
    borders_y = {2 * (s - margin) for s, _ in spans(440 + 2 * margin, 128, 24)[1:]} | \
                {2 * (e - margin) for _, e in spans(440 + 2 * margin, 128, 24)[:-1]}
    borders_x = {2 * (s - margin) for s, _ in spans(600 + 2 * margin, 128, 24)[1:]} | \
                {2 * (e - margin) for _, e in spans(600 + 2 * margin, 128, 24)[:-1]}
    rows = sorted(b for b in borders_y if 0 < b < 880)
    cols = sorted(b for b in borders_x if 0 < b < 1200)
    assert rows and cols
    band = np.zeros_like(err, dtype=bool)
    for r in rows:
        band[max(0, r - 2): r + 2] = True
    for c in cols:
        band[:, max(0, c - 2): c + 2] = True
    assert err[band].max() <= err[~band].max() * 1.5 + 1e-6
    # and the step across a border is no larger in the tiled output than in the whole one
    for r in rows:
        step_t = np.abs(tiled[r] - tiled[r - 1]).mean()
        step_w = np.abs(whole[r] - whole[r - 1]).mean()
        assert abs(step_t - step_w) < 1e-3


def test_same_input_same_output_bytes():
    model = perturbed(config_for("fast"))
    x = smooth_image(70, 90)
    a = upscale(model, x, TileOptions(tile=48, overlap=8))
    b = upscale(model, x, TileOptions(tile=48, overlap=8))
    assert a.numpy().tobytes() == b.numpy().tobytes()


def test_self_ensemble_is_flip_equivariant_and_in_range():
    model = perturbed(config_for("fast"))
    x = smooth_image(40, 56)
    y = upscale(model, x, TileOptions(tile=0, tta=True))
    y_flipped = upscale(model, x.flip(-1), TileOptions(tile=0, tta=True))
    assert y.shape == (1, 3, 80, 112)
    assert 0 <= y.min() and y.max() <= 1
    assert torch.allclose(y.flip(-1), y_flipped, atol=1e-5)  # the four flips are averaged
    assert not torch.allclose(y, upscale(model, x, TileOptions(tile=0)), atol=1e-4)


def test_tiny_and_odd_images_tile():
    model = perturbed(config_for("fast"))
    for h, w in ((1, 1), (2, 5), (31, 3)):
        y = upscale(model, torch.rand(1, 3, h, w), TileOptions(tile=16, overlap=4))
        assert y.shape == (1, 3, 2 * h, 2 * w) and torch.isfinite(y).all()


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")
    from srpie_cli import SrpieError
    with pytest.raises(SrpieError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SrpieError, match="CUDA is not available"):
            pick_device("cuda:0")


class MeanOfContext(torch.nn.Module):
    """A stand-in context network: bicubic 2x plus the mean of the thumbnail it is given."""

    cfg = SRPIEConfig(global_context=True)
    scale = 2

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, context):
        self.seen.append(context)
        return upsample_bicubic(x, 2) + context.mean()


def test_every_tile_gets_the_thumbnail_of_the_whole_photo():
    x = smooth_image(96, 130)
    x[..., :, :40] = 0.0  # a dark left side: the tiles there must still see the whole photo
    model = MeanOfContext()
    y = upscale(model, x, TileOptions(tile=40, overlap=8, tile_batch=1))
    whole = context_thumbnail(x)
    assert len(model.seen) > 4 and all(torch.equal(c, whole) for c in model.seen)
    # the tiles of the black side output the mean of the whole photo, not their own 0
    assert whole.mean() > 0.2
    assert torch.allclose(y[..., 8:-8, 4:72], whole.mean().expand(1, 3, 176, 68), atol=1e-6)
