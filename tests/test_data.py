import numpy as np
import pytest
from PIL import Image

from srpie_cli import SrpieError
from srpie_cli.data import PairSet, PhotoSet, batch, find_pair_dirs, load_pair, match_pairs, thumbnail
from srpie_cli.metrics import psnr, rgb_to_y, ssim


def write(path, h, w, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(path, format=fmt)
    return a


def test_pairs_match_by_relative_path_and_stem(tmp_path):
    for rel in ("a.jpg", "sub/b.png", "sub/c.png", "only_before.png"):
        write(tmp_path / "before" / rel, 16, 16)
    for rel in ("a.png", "sub/b.tif", "sub/c.png", "only_after.png", ".hidden.png"):
        write(tmp_path / "after" / rel, 16, 16)
    before, after = find_pair_dirs(tmp_path)
    pairs = match_pairs(before, after)
    assert [(b.relative_to(before).as_posix(), a.relative_to(after).as_posix()) for b, a in pairs] == [
        ("a.jpg", "a.png"), ("sub/b.png", "sub/b.tif"), ("sub/c.png", "sub/c.png")]


def test_pair_folder_layouts_are_recognised_and_a_bad_one_is_a_clear_error(tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "expertC").mkdir()
    assert [p.name for p in find_pair_dirs(tmp_path)] == ["input", "expertC"]
    (tmp_path / "x").mkdir()
    with pytest.raises(SrpieError, match="before/"):
        find_pair_dirs(tmp_path / "x")


def test_same_size_before_is_downscaled_to_half_the_after(tmp_path):
    write(tmp_path / "b.png", 40, 60)
    write(tmp_path / "a.png", 40, 60, seed=1)
    lr, hr = load_pair(tmp_path / "b.png", tmp_path / "a.png", scale=2)
    assert lr.shape == (20, 30, 3) and hr.shape == (40, 60, 3)
    write(tmp_path / "small.png", 20, 30)  # already half: taken as it is
    lr2, _ = load_pair(tmp_path / "small.png", tmp_path / "a.png", scale=2)
    assert np.array_equal((lr2 * 255).round().astype(np.uint8), np.asarray(Image.open(tmp_path / "small.png")))


def test_pair_crops_stay_aligned_through_flips(tmp_path):
    # the after is the before upscaled: a crop of one must match the crop of the other
    base = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    Image.fromarray(base).save(tmp_path / "before" / "p.png")
    Image.fromarray(base.repeat(2, 0).repeat(2, 1)).save(tmp_path / "after" / "p.png")
    train, held = PairSet.from_folders([tmp_path], scale=2, holdout=0)
    assert len(train) == 1 and len(held) == 0
    rng = np.random.default_rng(3)
    for _ in range(10):
        lr, hr, _ = train.sample(rng, 8, 2)
        assert lr.shape == (8, 8, 3) and hr.shape == (16, 16, 3)
        assert np.allclose(hr[::2, ::2], lr)


def test_holdout_keeps_the_last_pairs_out_of_training(tmp_path):
    for i in range(5):
        write(tmp_path / "before" / f"{i}.png", 8, 8, seed=i)
        write(tmp_path / "after" / f"{i}.png", 8, 8, seed=i)
    train, held = PairSet.from_folders([tmp_path], scale=2, holdout=2)
    assert len(train) == 3 and len(held) == 2
    assert [n.split("/")[-1] for n in held.names] == ["3.png", "4.png"]


def test_photo_patches_and_batches(tmp_path):
    write(tmp_path / "p" / "x.png", 100, 120)
    photos = PhotoSet.from_folders([tmp_path / "p"])
    rng = np.random.default_rng(0)
    items = [photos.sample(rng, 16, 2, enhance=True) for _ in range(3)]
    lr, hr, ctx = batch(items)
    assert lr.shape == (3, 3, 16, 16) and hr.shape == (3, 3, 32, 32) and ctx.shape == (3, 3, 64, 64)
    with pytest.raises(SrpieError):
        PhotoSet.from_folders([tmp_path / "empty_does_not_exist"])


def test_psnr_and_ssim_follow_the_protocol():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3))
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a + 0.01, 0, 1)
    assert 39 < psnr(b, a) < 41
    # the border crop ignores damage along the edge
    c = a.copy()
    c[:2] = 0
    assert psnr(c, a, crop_border=2) == float("inf")
    assert rgb_to_y(np.ones((1, 1, 3)))[0, 0] == pytest.approx(235 / 255, abs=1e-3)
    assert ssim(b, a, y_channel=True) < 1


def test_the_context_is_the_whole_photo_damaged_like_the_patch(tmp_path):
    # a photo that is dark on the left and bright on the right: every patch, wherever it is
    # cut, comes with the thumbnail of both halves
    a = np.zeros((120, 160, 3), np.uint8)
    a[:, 80:] = 200
    (tmp_path / "p").mkdir()
    Image.fromarray(a).save(tmp_path / "p" / "half.png")
    photos = PhotoSet.from_folders([tmp_path / "p"])
    rng = np.random.default_rng(1)
    for _ in range(6):
        lr, hr, ctx = photos.sample(rng, 16, 2, enhance=False)
        assert ctx.shape == (64, 64, 3)
        assert ctx.mean() == pytest.approx(thumbnail(a / 255.0).mean(), abs=1e-4)
    # a flat grey photo: the damaged patch and the damaged thumbnail agree on its colour
    Image.fromarray(np.full((96, 96, 3), 120, np.uint8)).save(tmp_path / "p" / "half.png")
    photos = PhotoSet.from_folders([tmp_path / "p"])
    for seed in range(8):
        lr, hr, ctx = photos.sample(np.random.default_rng(seed), 16, 2, enhance=True)
        assert np.abs(lr.reshape(-1, 3).mean(0) - ctx.reshape(-1, 3).mean(0)).max() < 0.03


def test_pair_context_is_the_thumbnail_of_the_whole_before(tmp_path):
    before = np.zeros((40, 60, 3), np.uint8)
    before[:, 30:] = 255
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    Image.fromarray(before).save(tmp_path / "before" / "p.png")
    Image.fromarray(before).save(tmp_path / "after" / "p.png")
    train, _ = PairSet.from_folders([tmp_path], scale=2, holdout=0)
    lr, hr, ctx = train.sample(np.random.default_rng(0), 8, 2)
    assert ctx.mean() == pytest.approx(0.5, abs=0.02)
