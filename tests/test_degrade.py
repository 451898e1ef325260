import numpy as np
import pytest

from srpie_cli import degrade as d


def photo(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 - 0.3 * x * y], axis=-1)
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)


def luma(img):
    return float((img @ d.LUMA).mean())


def test_exposure_moves_brightness_the_right_way_and_zero_is_identity():
    img = photo()
    assert np.allclose(d.exposure(img, 0.0), img, atol=1e-5)
    assert luma(d.exposure(img, 1.0)) > luma(img) > luma(d.exposure(img, -1.0))
    # +1 EV doubles linear light (away from clipping)
    dark = img * 0.3
    lin = d.srgb_to_linear(dark)
    assert np.allclose(d.srgb_to_linear(d.exposure(dark, 1.0)), np.clip(2 * lin, 0, 1), atol=1e-4)


def test_each_damage_keeps_range_shape_and_dtype():
    img, rng = photo(), np.random.default_rng(1)
    outs = [d.exposure(img, 1.5), d.exposure(img, -1.5), d.gamma(img, 1.4), d.contrast(img, 0.6),
            d.saturation(img, 0.0), d.white_balance(img, (1.3, 1.0, 0.8)), d.haze(img, 0.2),
            d.add_noise(img, 0.03, rng), d.jpeg(img, 60), d.gaussian_blur(img, 1.0)]
    for out in outs:
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1


def test_saturation_zero_is_grey_and_white_balance_keeps_luma_of_grey():
    img = photo()
    grey = d.saturation(img, 0.0)
    assert np.allclose(grey[..., 0], grey[..., 1], atol=1e-6) and np.allclose(grey[..., 1], grey[..., 2], atol=1e-6)
    mid = np.full((4, 4, 3), 0.4, np.float32)
    cast = d.white_balance(mid, (1.2, 1.0, 0.8))
    assert cast[0, 0, 0] > cast[0, 0, 2]  # a warm cast
    assert abs(luma(d.srgb_to_linear(cast)) - luma(d.srgb_to_linear(mid))) < 0.01


def test_contrast_and_haze_flatten():
    img = photo()
    assert d.contrast(img, 0.6).std() < img.std()
    assert d.haze(img, 0.2).min() > img.min()


def test_downscale_halves_and_preserves_mean():
    img = photo(64, 96)
    lr = d.downscale(img, 2)
    assert lr.shape == (32, 48, 3)
    assert abs(lr.mean() - img.mean()) < 0.01


@pytest.mark.parametrize("enhance", [False, True])
def test_make_lr_is_deterministic_by_seed(enhance):
    img = photo(64, 64)
    a, _ = d.make_lr(img, 2, np.random.default_rng(7), enhance=enhance)
    b, _ = d.make_lr(img, 2, np.random.default_rng(7), enhance=enhance)
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    assert np.array_equal(a, np.round(a * 255) / 255)  # 8-bit like a real file


def test_random_damage_varies_with_seed_and_stays_in_the_documented_range():
    img = photo(64, 64)
    outs = [d.make_lr(img, 2, np.random.default_rng(s), enhance=True)[0] for s in range(12)]
    assert len({o.tobytes() for o in outs}) == 12
    ref = d.downscale(img, 2)
    # exposure is at most +-1.5 EV (x2.8 in linear light); with gamma, contrast and haze on
    # top the mean linear luma stays within 8x, and the sample really spreads both ways
    ratios = [luma(d.srgb_to_linear(o)) / luma(d.srgb_to_linear(ref)) for o in outs]
    assert all(1 / 8 < r < 8 for r in ratios)
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_exposure_damage_is_a_clear_error_either_way(monkeypatch):
    drawn = []
    monkeypatch.setattr(d, "exposure", lambda img, ev: drawn.append(ev) or img)
    img = photo(16, 16)
    for seed in range(200):
        d.random_look(np.random.default_rng(seed))(img)
    assert len(drawn) > 100
    assert all(d.MIN_EV <= abs(ev) <= 1.5 for ev in drawn)
    assert min(drawn) < -1.0 and max(drawn) > 1.0
