"""The global look: one colour mapping per photo, trained apart and put in front of an upscaler."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from srpie_cli.look import LookConfig, apply_look, attach, retouch_damage, train_look
from srpie_cli.metrics import look_stats, psnr, srgb_to_lab
from srpie_cli.model import DeepSRPIE, GlobalLook, SRPIEConfig, colour_polynomial, identity_polynomial, with_strength
from tests.test_model import perturbed


def test_a_new_look_changes_nothing_and_the_polynomial_is_cubic():
    x = torch.rand(2, 3, 16, 12)
    look = GlobalLook()
    assert torch.allclose(look(x, torch.rand(2, 3, 64, 64)), x)
    terms = colour_polynomial(x)
    assert terms.shape == (2, 13, 16, 12)
    assert torch.allclose(terms[:, 6:9], x**3) and torch.equal(terms[:, 12], torch.ones_like(x[:, 0]))
    assert torch.equal(identity_polynomial()[:, :3], torch.eye(3))


def test_the_look_in_front_of_an_upscaler_at_strength_0_is_the_upscaler():
    upscaler = perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval()
    look = GlobalLook()
    torch.nn.init.normal_(look.head[-1].weight, std=0.05)  # a look that does something
    joint = attach(upscaler, look)
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        plain, looked = upscaler(x), joint(x)
        assert (plain - looked).abs().max() > 1e-3
        assert torch.allclose(with_strength(joint, 0.0)(x), plain, atol=1e-6)


def test_the_look_gives_every_tile_the_thumbnail_of_the_whole_photo():
    from srpie_cli.tiling import TileOptions, upscale

    look = GlobalLook()
    torch.nn.init.normal_(look.head[-1].weight, std=0.05)
    joint = attach(perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    x = torch.rand(1, 3, 96, 80)
    whole = upscale(joint, x, TileOptions(tile=0))
    tiled = upscale(joint, x, TileOptions(tile=48, overlap=8))
    assert psnr(tiled[0].permute(1, 2, 0).numpy(), whole[0].permute(1, 2, 0).numpy()) > 40


def test_retouch_damage_never_over_saturates():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32) * 0.6 + 0.2
    base = look_stats(img)["chroma"]
    for _ in range(30):
        damaged = retouch_damage(rng)(img)
        assert damaged.shape == img.shape and 0 <= damaged.min() and damaged.max() <= 1
        assert look_stats(damaged)["chroma"] < base * 1.35  # casts add a little; no saturation boost


def test_lab_of_white_grey_and_red():
    lab = srgb_to_lab(np.array([[[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]]))
    assert abs(lab[0, 0, 0] - 100) < 0.1 and abs(lab[0, 0, 1]) < 0.1 and abs(lab[0, 0, 2]) < 0.1
    assert abs(lab[0, 1, 0] - 53.4) < 0.5
    assert abs(lab[0, 2, 0] - 53.2) < 0.5 and abs(lab[0, 2, 1] - 80.1) < 0.5


@pytest.mark.slow
def test_a_short_training_learns_to_lift_a_dark_flat_photo(tmp_path):
    """Good photos darkened and flattened, and their originals: a few hundred small steps
    learn to undo it on a photo never trained on."""
    rng = np.random.default_rng(0)
    good = tmp_path / "good"
    good.mkdir()
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    for i in range(6):
        img = np.stack([0.5 + 0.4 * np.sin(6 * xx + i), 0.5 + 0.4 * np.cos(5 * yy - i), 0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
        Image.fromarray((np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)).save(good / f"{i}.png")
    cfg = LookConfig(photos=[good], steps=150, batch_size=8, crop=64, side=96, lr=3e-3, clean_fraction=0.0)
    look = train_look(cfg, log=lambda m: None)
    target = np.asarray(Image.open(good / "0.png"), dtype=np.float32) / 255
    dark = np.clip(target * 0.5 + 0.02, 0, 1).astype(np.float32)  # about a stop under, blacks lifted
    out = apply_look(look, dark)
    assert psnr(out, target) > psnr(dark, target) + 3


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_strength_scales_the_look_towards_the_identity(strength):
    look = GlobalLook()
    torch.nn.init.normal_(look.head[-1].weight, std=0.05)
    torch.nn.init.normal_(look.head[-1].bias, std=0.05)
    model = attach(DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    thumb = torch.rand(1, 3, 64, 64)
    full = model.global_look.coefficients(thumb)
    with_strength(model, strength)
    scaled = model.global_look.coefficients(thumb)
    ident = identity_polynomial()
    assert torch.allclose(scaled, ident + strength * (full - ident), atol=1e-6)


def test_scale_1_applies_the_look_at_the_photos_size_with_its_metadata(tmp_path):
    """--scale 1: the output is the input's size, keeps its EXIF, and has the look of the 2x
    output (its mean colour within 1 level of the 2x output downscaled)."""
    import piexif

    from srpie_cli import batch, images
    from srpie_cli.inference import Settings
    from srpie_cli.weights import save_weights
    from tests.conftest import write_jpeg

    look = GlobalLook()
    torch.nn.init.normal_(look.head[-1].weight, std=0.05)
    torch.nn.init.normal_(look.head[-1].bias, std=0.02)
    model = attach(DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    save_weights(tmp_path / "look.pt", model, {"scores": {}})
    write_jpeg(tmp_path / "s/a.jpg", 48, 64)
    one = Settings(model=str(tmp_path / "look.pt"), device="cpu", scale=1)
    two = Settings(model=str(tmp_path / "look.pt"), device="cpu", scale=2)
    assert batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o1", settings=one).exit_code == 0
    assert batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o2", settings=two).exit_code == 0
    small, big = images.read_photo(tmp_path / "o1/a.jpg"), images.read_photo(tmp_path / "o2/a.jpg")
    assert small.size == (64, 48) and big.size == (128, 96)
    assert small.exif["0th"][piexif.ImageIFD.Make] == b"Canon"
    assert small.exif["Exif"][piexif.ExifIFD.PixelXDimension] == 64
    down = np.asarray(Image.fromarray(big.pixels).resize((64, 48), Image.Resampling.LANCZOS), dtype=np.float64)
    inp = images.read_photo(tmp_path / "s/a.jpg").pixels.astype(np.float64)
    assert np.abs(small.pixels.reshape(-1, 3).mean(0) - down.reshape(-1, 3).mean(0)).max() < 1.0
    assert np.abs(small.pixels.reshape(-1, 3).mean(0) - inp.reshape(-1, 3).mean(0)).max() > 1.0  # the look acted


def _dark_thumb() -> torch.Tensor:
    """The thumbnail of a frame taken in near darkness (mean luma about 0.03)."""
    return torch.rand(1, 3, 64, 64) * 0.06


def _toned(settings) -> torch.Tensor:
    """A tone-stage look whose head always answers ``settings`` (EV, chroma NR, luma NR)."""
    look = GlobalLook(tone=True)
    with torch.no_grad():
        look.tone_head[-1].bias[:3] = torch.tensor(settings, dtype=torch.float32)
    return look


def test_the_tone_stage_starts_as_the_identity_lifts_shadows_and_keeps_white_white():
    x = torch.rand(1, 3, 32, 40)
    x[..., :4, :] = 1.0  # a blown white
    assert torch.allclose(_toned([0, 0, 0])(x, _dark_thumb()), x, atol=3e-4)
    lifted = _toned([3, 0, 0])(x, _dark_thumb())
    assert torch.equal(lifted[..., :4, :], x[..., :4, :])  # white stays white and neutral
    dark = x[..., 4:, :] < 0.2
    assert (lifted[..., 4:, :][dark] > 1.5 * x[..., 4:, :][dark]).all()  # shadows lifted by far more than a stop's 2.2 root
    assert (lifted <= 1).all() and (lifted >= 0).all()
    # a photo that is not dark is left to the colour mapping: the tone stage is gated off
    assert torch.allclose(_toned([3, 1, 1])(x, 0.3 + 0.4 * torch.rand(1, 3, 64, 64)), x, atol=1e-3)


def test_the_tone_stages_noise_reduction_smooths_colour_blotches_but_not_a_clean_photo():
    rng = torch.Generator().manual_seed(0)
    grey = torch.full((1, 3, 48, 48), 0.4)
    noisy = (grey + 0.05 * torch.randn(1, 3, 48, 48, generator=rng)).clamp(0, 1)
    thumb = _dark_thumb()
    plain = _toned([0, 0, 0])(noisy, thumb)
    smoothed = _toned([0, 1, 1])(noisy, thumb)
    chroma = lambda y: (y - y.mean(1, keepdim=True)).std()  # noqa: E731
    assert chroma(smoothed) < 0.5 * chroma(plain)
    assert torch.allclose(_toned([0, 1, 1])(grey, thumb), grey, atol=1e-5)  # nothing to smooth: unchanged


def test_a_tone_look_keeps_strength_and_tiles_and_its_config_round_trips():
    from srpie_cli.tiling import TileOptions, upscale

    look = _toned([2.0, 0.5, 0.3])
    torch.nn.init.normal_(look.tone_head[-1].weight, std=0.02)
    joint = attach(perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    assert joint.cfg.look_tone and SRPIEConfig.from_dict(joint.cfg.to_dict()) == joint.cfg
    assert "look_tone" not in SRPIEConfig().to_dict()  # files without it stay readable by older versions
    x = torch.rand(1, 3, 96, 80) * 0.2
    whole = upscale(joint, x, TileOptions(tile=0))
    tiled = upscale(joint, x, TileOptions(tile=48, overlap=16))
    assert psnr(tiled[0].permute(1, 2, 0).numpy(), whole[0].permute(1, 2, 0).numpy()) > 40
    with pytest.raises(ValueError, match="look_tone"):
        DeepSRPIE(SRPIEConfig(look_tone=True))
    thumb = _dark_thumb()
    poly, full = joint.global_look.settings(thumb)
    with_strength(joint, 0.5)
    half_poly, half = joint.global_look.settings(thumb)
    assert torch.allclose(half[:, :3], 0.5 * full[:, :3], atol=1e-6)  # half the exposure and noise reduction
    assert torch.equal(half[:, 3], full[:, 3])  # the dark gate: how dark the photo is, not a setting
    ident = identity_polynomial()
    assert torch.allclose(half_poly, ident + 0.5 * (poly - ident), atol=1e-6)


def test_the_tone_stage_trains_after_the_look_and_leaves_its_colour_mapping_as_it_was(tmp_path):
    """make_model from a model with a look: the look's weights come out unchanged, a tone
    stage is trained in front of them, and the upscaler is the init's."""
    from srpie_cli.look import make_model
    from srpie_cli.weights import load_model, save_weights

    rng = np.random.default_rng(0)
    for side in ("low", "high"):
        (tmp_path / "dark" / side).mkdir(parents=True)
    for i in range(4):
        good = rng.random((48, 64, 3)) * 0.8 + 0.1
        Image.fromarray((good * 255).astype(np.uint8)).save(tmp_path / "dark" / "high" / f"{i}.png")
        Image.fromarray((good * 0.15 * 255).astype(np.uint8)).save(tmp_path / "dark" / "low" / f"{i}.png")
    look = GlobalLook()
    torch.nn.init.normal_(look.head[-1].weight, std=0.02)
    joint = attach(perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    save_weights(tmp_path / "init.pt", joint, {"scores": {}})
    cfg = LookConfig(tone_pairs=[tmp_path / "dark"], holdout=1, tone_steps=20, batch_size=4, crop=32, side=64)
    with pytest.raises(Exception, match="has a look already"):
        make_model(LookConfig(pairs=[tmp_path / "dark"]), str(tmp_path / "init.pt"), tmp_path / "x.pt", "cmd", [], log=lambda m: None)
    meta = make_model(cfg, str(tmp_path / "init.pt"), tmp_path / "out.pt", "cmd", [], log=lambda m: None)
    out, _ = load_model(str(tmp_path / "out.pt"))
    assert out.cfg.look_tone and "dark held-out (RGB)" in meta["scores"]
    before, after = joint.state_dict(), out.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the upscaler and the look, as they were
    assert any(after[k].abs().sum() > 0 for k in after if k.startswith("global_look.tone_head.2"))  # the tone learnt
    # then its denoiser, the tone stage kept (--tone-steps 0): only the denoiser's weights move
    denoise = replace(cfg, tone_steps=0, denoise_steps=3)
    make_model(denoise, str(tmp_path / "out.pt"), tmp_path / "dn.pt", "cmd", [], log=lambda m: None)
    dn, _ = load_model(str(tmp_path / "dn.pt"))
    assert dn.cfg.look_denoise and all(torch.equal(after[k], dn.state_dict()[k]) for k in after)
    assert dn.global_look.denoiser.body[-1].weight.abs().sum() > 0
    # and that look, trained nothing more, in front of another upscaler (--look-from)
    other = perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval()
    save_weights(tmp_path / "other.pt", other, {"scores": {}})
    meta = make_model(cfg, str(tmp_path / "other.pt"), tmp_path / "moved.pt", "cmd", [], log=lambda m: None,
                      look_from=str(tmp_path / "dn.pt"))
    moved, _ = load_model(str(tmp_path / "moved.pt"))
    assert meta["look_from"] and moved.cfg.look_denoise
    state = moved.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in dn.state_dict().items() if k.startswith("global_look."))
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())


def test_a_tone_look_runs_under_bfloat16_autocast_as_the_cpu_default_does():
    look = _toned([3.0, 1.0, 0.5])
    x = torch.rand(1, 3, 40, 40) * 0.05
    with torch.no_grad():
        exact = look(x, _thumb_of(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = look(x, _thumb_of(x))
    assert (fast.float() - exact).abs().max() < 0.02  # about 5 levels at most, in the deepest shadows


def _thumb_of(x: torch.Tensor) -> torch.Tensor:
    from srpie_cli.model import context_thumbnail

    return context_thumbnail(x)


def test_scale_1_applies_the_tone_stage_band_by_band_as_one_pass_would():
    """--scale 1 runs the look a band of rows at a time: with a tone stage (whose noise
    reduction blurs across band edges) it gives what the look gives the whole photo at once."""
    from srpie_cli.inference import at_scale
    from srpie_cli.model import context_thumbnail
    from srpie_cli.tiling import TileOptions

    look = _toned([2.5, 1.0, 1.0])
    torch.nn.init.normal_(look.tone_head[-1].weight, std=0.02)
    joint = attach(perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    x = (torch.rand(1, 3, 600, 40) * 0.06).contiguous()  # a dark frame: the tone stage acts
    with torch.no_grad():
        whole = joint.global_look(x, context_thumbnail(x))
    banded = at_scale(joint, x, 1, TileOptions())
    assert (whole - x).abs().mean() > 0.05  # the tone stage lifted it
    assert (banded - whole).abs().max() < 1e-5


def test_the_noise_reductions_amount_learns_back_from_below_zero():
    """Clamped to 0..1 going forward, but its gradient passes: an amount pushed below 0 early
    in training can still come back (a plain clamp would stop it there for good)."""
    from srpie_cli.model import tone

    rng = torch.Generator().manual_seed(0)
    noisy = (0.3 + 0.05 * torch.randn(1, 3, 32, 32, generator=rng)).clamp(0, 1)
    t = torch.tensor([[0.0, -0.3, -0.3]], requires_grad=True)
    out = tone(noisy, t)
    assert torch.allclose(out, tone(noisy, torch.zeros(1, 3)))  # below 0: no noise reduction
    F.l1_loss(out, torch.full_like(noisy, 0.3)).backward()
    assert t.grad[0, 1] < 0 and t.grad[0, 2] < 0  # towards more smoothing, against a clean target


def _denoising(settings) -> GlobalLook:
    """``_toned``'s look with a denoiser whose residual is not zero."""
    look = GlobalLook(tone=True, denoise=True)
    look.load_state_dict(_toned(settings).state_dict(), strict=False)
    torch.nn.init.normal_(look.denoiser.body[-1].weight, std=0.05)
    return look.eval()


def test_the_denoiser_starts_silent_acts_on_dark_frames_only_and_follows_the_strength():
    toned = _toned([2.0, 0.5, 0.5]).eval()
    silent = GlobalLook(tone=True, denoise=True)
    silent.load_state_dict(toned.state_dict(), strict=False)
    dark = torch.rand(1, 3, 40, 48) * 0.06
    bright = 0.3 + 0.5 * torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(silent.eval()(dark, _thumb_of(dark)), toned(dark, _thumb_of(dark)))
        look = _denoising([2.0, 0.5, 0.5])
        assert (look(dark, _thumb_of(dark)) - toned(dark, _thumb_of(dark))).abs().mean() > 1e-3
        assert (look(bright, _thumb_of(bright)) - toned(bright, _thumb_of(bright))).abs().max() < 1e-4  # gated off
    joint = attach(perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(), look)
    assert joint.cfg.look_denoise and SRPIEConfig.from_dict(joint.cfg.to_dict()) == joint.cfg
    with_strength(joint, 0.0)
    with torch.no_grad():
        assert torch.allclose(joint.global_look(dark, _thumb_of(dark)), dark, atol=3e-4)  # strength 0: nothing (tone floors at 1e-8 linear)
    with pytest.raises(ValueError, match="look_denoise"):
        DeepSRPIE(SRPIEConfig(global_look=True, look_denoise=True))


def test_the_look_runs_once_on_the_whole_photo_then_the_upscaler_tile_by_tile():
    """tiling.upscale applies a global look to the whole photo first and tiles the network
    after it (model.Upscaler): what the network gave with its look in every tile (run_tiled of
    the whole network), but within the denoiser's reach of the photo's edge, and the same
    through accel.prepare."""
    from srpie_cli.accel import prepare
    from srpie_cli.tiling import TileOptions, run_tiled, upscale

    joint = attach(perturbed(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)).eval(),
                   _denoising([2.5, 0.6, 0.4]))
    x = torch.rand(1, 3, 120, 72) * 0.05  # dark: tone stage and denoiser at work
    per_tile = run_tiled(joint, x, 2, 0, 16).clamp(0, 1)
    whole = upscale(joint, x, TileOptions(tile=0, overlap=16))
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    assert (whole - per_tile)[inner].abs().max() < 1e-4 < (whole - x.repeat_interleave(2, -1).repeat_interleave(2, -2)).abs().max()
    tiled = upscale(joint, x, TileOptions(tile=48, overlap=16))
    assert psnr(tiled[0].permute(1, 2, 0).numpy(), whole[0].permute(1, 2, 0).numpy()) > 40
    prepared = prepare(joint, "cpu", compile=False)
    assert prepared.upscaler is not None and not prepared.upscaler.model.cfg.global_look
    assert torch.allclose(upscale(prepared, x, TileOptions(tile=48, overlap=16)), tiled, atol=1e-5)


def test_a_photo_that_is_not_dark_skips_the_tone_stage_at_inference():
    """photo_settings drops the tone stage where its gate is below TONE_OFF; what it would have
    done there is well under a level."""
    from srpie_cli.model import TONE_OFF

    look = _denoising([6.0, 1.0, 1.0])  # the strongest lift and noise reduction the head can ask
    bright = 0.15 + 0.7 * torch.rand(1, 3, 64, 64)
    dark = torch.rand(1, 3, 64, 64) * 0.06
    with torch.no_grad():
        poly, t = look.settings(_thumb_of(bright))
        assert float(t[0, 3]) < TONE_OFF and look.photo_settings(_thumb_of(bright))[1] is None
        skipped = look.with_settings(bright, poly, None)
        assert (skipped - look.with_settings(bright, poly, t)).abs().max() < 0.5 / 255
        assert look.photo_settings(_thumb_of(dark))[1] is not None


def test_the_grey_repair_makes_a_falling_curve_rise_to_white_and_leaves_a_good_one():
    """At inference a colour mapping that peaks and falls along the grey axis (a cubic fitted
    to a dim photo did: its lamps came out brown) is held at its peak and then rises to white;
    the identity, and any curve that already rises to white, is left as it was."""
    from srpie_cli.model import grey_repair

    look = GlobalLook().eval()
    grey = torch.linspace(0, 1, 101).view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()
    thumb = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(look(grey, thumb), grey, atol=1e-6)
        assert float(grey_repair(look.settings(thumb)[0]).abs().max()) < 1e-6
        look.head[-1].bias.view(3, 13)[[0, 1, 2], [6, 7, 8]] = -0.8  # x - 0.8 x^3: peaks at 0.65, white to 0.2
        bad = look.train()(grey, thumb)
        good = look.eval()(grey, thumb)
    assert float(bad[..., -1].max()) < 0.25 and float((bad[..., 1:] - bad[..., :-1]).min()) < -0.01
    assert torch.allclose(good[..., -1], torch.ones(1, 3, 1))  # white stays white
    assert float((good[..., 1:] - good[..., :-1]).min()) >= -1e-6  # never falls
    assert torch.allclose(good[..., :50], bad[..., :50])  # below the peak, the look as it was


def test_the_look_never_blows_a_highlight_the_photo_did_not_have():
    """A look that pushes the red channel past white (a steep curve: x -> 1.6 x) rolls what it
    raised off below white at inference, keeping its order: from an input up to 0.9 it stays
    below 254 once written in 8 bits; a pixel already white stays white, and the identity is
    left exactly as it was."""
    from srpie_cli.model import highlight_guard

    x = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]).view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()
    assert torch.equal(highlight_guard(x, x), x)
    assert torch.equal(highlight_guard(x, torch.full_like(x, float("inf"))), torch.ones_like(x))
    look = GlobalLook().eval()
    with torch.no_grad():
        look.head[-1].bias.view(3, 13)[0, 0] = 0.6  # red: 1.6 x (the identity's 1 + 0.6)
        out = look(x, torch.rand(1, 3, 64, 64))
        raw = look.train()(x, torch.rand(1, 3, 64, 64))
    red = out[0, 0, 0]
    assert float(raw[0, 0, 0, 2]) == 1.0  # trained form: 0.7 -> 1.12, clipped
    assert int((red[:5] * 255).round().max()) < 254 and float(red[-1]) == 1.0
    assert float((red[1:] - red[:-1]).min()) > 0  # still in order: the roll-off keeps detail
    assert abs(float(red[0]) - 0.8) < 1e-6  # 0.5 -> 0.8: below the knee, as it was
    assert torch.allclose(out[0, 1:], x[0, 1:], atol=1e-6)  # green and blue untouched


def test_the_grey_repair_and_highlight_roll_off_move_smoothly_with_the_look():
    """A curve whose value at the repair's start crosses white (red 0.2 r + b r^3, b near 1.1)
    moves the photo by a little for a little change of b (the first try jumped 50 levels on a
    bright colour); and a curve that peaks above white and falls back below it lifts a bright
    colour's other channels no more than reaching white needs."""
    look = GlobalLook().eval()
    px = torch.tensor([[0.5, 0.97, 0.5], [0.93, 0.93, 0.93], [0.05, 0.05, 1.0]]).T.reshape(1, 3, 1, 3)
    thumb = torch.rand(1, 3, 64, 64)
    bias = look.head[-1].bias.view(3, 13)
    outs = []
    with torch.no_grad():
        bias[0, 0] = -0.8  # red: 0.2 r + b r^3
        for b in torch.linspace(1.09, 1.11, 21):
            bias[0, 6] = b
            outs.append(look(px, thumb))
        steps = torch.stack([(o2 - o1).abs().max() for o1, o2 in zip(outs, outs[1:])])
        assert float(steps.max()) < 2 / 255
        bias.zero_()
        bias[0, 0], bias[0, 3] = 2.6, -2.8  # red: 3.6 r - 2.8 r^2, 1.157 at 0.64, 0.8 at white
        grey = torch.linspace(0, 1, 101).view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()
        red = look(grey, thumb)[0, 0, 0]
        blue = look(px, thumb)[0, 0, 0, 2]
    assert float((red[1:] - red[:-1]).min()) >= -1e-4 and float(red[-1]) == 1.0  # (1e-4: the table's 65 points)
    curve = 3.6 * 0.05 - 2.8 * 0.05 ** 2
    assert float(blue) <= curve + (1 - 0.8) + 1e-5  # the lift at brightness 1 is white minus the curve's end


def test_the_look_written_over_its_input_band_by_band_is_the_look_into_a_new_tensor(monkeypatch):
    """apply_look(overwrite=True) saves a photo-sized copy: each band still sees the original
    rows of its neighbours (the tone stage and the denoiser reach across band edges)."""
    import srpie_cli.tiling as tiling

    monkeypatch.setattr(tiling, "BAND", 16)
    look = _denoising([2.5, 1.0, 1.0])
    x = torch.rand(1, 3, 100, 30) * 0.05
    fresh = tiling.apply_look(look, x)
    mine = x.clone()
    out = tiling.apply_look(look, mine, overwrite=True)
    assert out.data_ptr() == mine.data_ptr() and torch.equal(out, fresh)
    assert (fresh - x).abs().mean() > 0.02  # it did lift the frame


def test_train_look_records_the_learning_rate_it_was_given(tmp_path, tiny_model, monkeypatch):
    """srpie train-look --lr reaches the training and the file's recipe says so."""
    from typer.testing import CliRunner

    import srpie_cli.look as look_module
    from srpie_cli import defaults
    from srpie_cli.cli import app
    from srpie_cli.weights import load_model

    rates = []
    fit = look_module.fit
    monkeypatch.setattr(look_module, "fit", lambda *a, **kw: rates.append(a[4]) or fit(*a, **kw))

    good = tmp_path / "good"
    good.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((40, 56, 3)) * 255).astype(np.uint8)).save(good / f"{i}.png")
    out = tmp_path / "look.pt"
    r = CliRunner().invoke(app, ["train-look", "--photos", str(good), "--init", str(tiny_model), "--steps", "2",
                                 "--lr", "5e-4", "--threads", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert rates == [5e-4]  # the look's fit, at the rate given
    assert load_model(out)[1]["look_config"]["lr"] == 5e-4 != defaults.LOOK_LR
