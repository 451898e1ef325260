import pytest
import torch

from srpie_cli.model import (
    PRESETS,
    DeepSRPIE,
    SRPIEConfig,
    config_for,
    context_thumbnail,
    count_parameters,
    decompose,
    flops_per_input_pixel,
    graft_look,
    local_transform,
    upsample_bicubic,
    wants_context,
    widen,
    with_context,
    with_strength,
    without_rrelu,
)
from srpie_cli.weights import load_model, save_weights

PAPER_PARAMS = 0.76e6  # Deep SR-PIE, Table 2 / Sec. IV-D


def perturbed(cfg: SRPIEConfig, std: float = 0.02, seed: int = 0) -> DeepSRPIE:
    """A network whose zero-initialised layers are not zero any more (an 'as if trained' one)."""
    torch.manual_seed(seed)
    model = DeepSRPIE(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def test_paper_preset_parameter_count_within_15_percent_of_the_paper():
    n = count_parameters(DeepSRPIE(config_for("paper")))
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS <= 0.15, n


def test_fast_preset_is_at_least_3x_cheaper_per_pixel():
    paper = flops_per_input_pixel(DeepSRPIE(config_for("paper")), size=32)
    fast = flops_per_input_pixel(DeepSRPIE(config_for("fast")), size=32)
    assert count_parameters(DeepSRPIE(config_for("fast"))) < count_parameters(DeepSRPIE(config_for("paper")))
    assert paper / fast >= 3.0, (paper, fast)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 13), (17, 9), (33, 65)])
def test_any_size_gives_exactly_2x_and_finite_output(preset, size):
    model = perturbed(config_for(preset))
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 2 * size[0], 2 * size[1])
    assert torch.isfinite(y).all()


def test_a_single_msb_network_works():
    model = perturbed(SRPIEConfig(width=8, t=0, pe_widths=(4, 4, 4), du_width=6))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)


@pytest.mark.parametrize("scale", [3, 4])
def test_scale_is_not_hard_wired(scale):
    model = perturbed(SRPIEConfig(scale=scale, width=8, t=1, pe_widths=(4, 4, 4), du_width=6))
    with torch.no_grad():
        y = model(torch.rand(1, 3, 11, 6))
    assert y.shape == (1, 3, 11 * scale, 6 * scale)


def test_black_and_white_inputs_stay_finite():
    model = perturbed(config_for("fast"))
    with torch.no_grad():
        for value in (0.0, 1.0):
            assert torch.isfinite(model(torch.full((1, 3, 20, 20), value))).all()


def test_untrained_network_starts_at_bicubic():
    model = DeepSRPIE(config_for("fast")).eval()
    x = torch.rand(2, 3, 24, 19)
    with torch.no_grad():
        assert torch.allclose(model(x), upsample_bicubic(x, 2), atol=1e-6)


def test_identity_initialised_penet_leaves_the_mbfnet_output_unchanged():
    # everything trained-looking except PENet's last layer, which stays at its identity init
    model = perturbed(config_for("fast"))
    fresh = DeepSRPIE(config_for("fast"))
    model.penet.stage9.load_state_dict(fresh.penet.stage9.state_dict())
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        h_x = model.h(x)
        mbf, _ = model.mbfnet(x, decompose(x, 2, 1e-2), h_x)
        transform = model.penet(h_x)
        assert transform.shape == (1, 12, 21, 30)
        assert torch.allclose(local_transform(transform, mbf), mbf, atol=1e-6)
        assert not torch.allclose(mbf, x, atol=1e-3)  # MBFNet itself does change the image


def test_local_transform_reads_a_colour_matrix_and_a_gain():
    x = torch.rand(1, 3, 4, 5)
    a = torch.zeros(1, 12, 4, 5)
    a[:, 9:12] = torch.tensor([2.0, 1.0, 0.5]).view(1, 3, 1, 1)  # per-channel gains
    a[:, 1] = 1.0  # M[0, 1]: red takes green's curve term
    out = local_transform(a, x)
    g = x * (1 - x)
    assert torch.allclose(out[:, 0], 2.0 * x[:, 0] + g[:, 1])
    assert torch.allclose(out[:, 2], 0.5 * x[:, 2])


def test_pixelshuffle_head_ablation_and_no_skip_variant_build_and_run():
    for cfg in (SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6, dunet=False),
                SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6, global_skip=False)):
        model = DeepSRPIE(cfg).eval()
        with torch.no_grad():
            y = model(torch.rand(1, 3, 9, 10))
        assert y.shape == (1, 3, 18, 20) and torch.isfinite(y).all()
    x = torch.rand(1, 3, 9, 10)
    no_skip = DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6, global_skip=False)).eval()
    with torch.no_grad():  # without the skip, an untrained network is far from bicubic
        assert (no_skip(x) - upsample_bicubic(x, 2)).abs().mean() > 0.05


def test_config_round_trips_through_a_dict():
    cfg = config_for("fast", scale=3)
    assert SRPIEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        SRPIEConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        config_for("huge")


def test_widening_dunet_with_features_keeps_the_function_then_learns_from_them():
    model = perturbed(config_for("fast"), std=0.05).eval()
    wide = widen(model).eval()
    assert wide.cfg.du_features and count_parameters(wide) > count_parameters(model)
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        assert torch.allclose(wide(x), model(x), atol=1e-5)
    # the new inputs are live: their weights get gradients (zero init does not trap them)
    wide.train()
    wide(x).square().mean().backward()
    assert wide.up.top1.weight.grad[:, 3:].abs().sum() > 0


def test_du_features_config_builds_and_round_trips():
    cfg = config_for("fast", du_features=True)
    model = DeepSRPIE(cfg)
    assert model(torch.rand(1, 3, 17, 23)).shape == (1, 3, 34, 46)
    assert SRPIEConfig.from_dict(cfg.to_dict()) == cfg
    assert not SRPIEConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "du_features"}).du_features
    with pytest.raises(ValueError):
        DeepSRPIE(config_for("fast", du_features=True, dunet=False))


def test_fixed_rrelu_keeps_the_inference_output_and_trains_without_random_slopes():
    model = perturbed(config_for("fast"), std=0.05)
    fixed = without_rrelu(model)
    x = torch.rand(1, 3, 18, 22) - 0.3  # negative inputs reach the activations
    with torch.no_grad():
        assert torch.equal(fixed.eval()(x), model.eval()(x))
        model.train(), fixed.train()
        assert not torch.equal(model(x), model(x))  # RReLU draws new slopes every pass
        assert torch.equal(fixed(x), fixed(x))
    assert not fixed.cfg.rrelu and SRPIEConfig.from_dict(fixed.cfg.to_dict()) == fixed.cfg


def test_adding_the_global_context_keeps_the_function_then_the_context_steers_it():
    model = perturbed(config_for("fast"), std=0.05).eval()
    ctx_model = with_context(model).eval()
    assert ctx_model.cfg.global_context and wants_context(ctx_model) and not wants_context(model)
    assert SRPIEConfig.from_dict(ctx_model.cfg.to_dict()) == ctx_model.cfg
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        assert torch.allclose(ctx_model(x), model(x), atol=1e-6)  # the last layer starts at zero
    ctx_model.train()
    ctx_model(x).square().mean().backward()
    assert ctx_model.context.head[-1].weight.grad.abs().sum() > 0  # and it learns
    with torch.no_grad():
        torch.nn.init.normal_(ctx_model.context.head[-1].weight, std=1.0)
        for q in ctx_model.penet.stage9.parameters():  # a PENet that acts: the bottleneck reaches A
            q.add_(torch.randn_like(q))
        ctx_model.eval()
        dark, bright = context_thumbnail(x * 0.2), context_thumbnail(x.clamp(0.6, 1))
        # the same pixels, told they belong to a different photo, come out differently (an
        # untrained decoder damps the difference; an ignored context would leave none at all)
        assert (ctx_model(x, dark) - ctx_model(x, bright)).abs().max() > 1e-5
        # no context given: the input is the whole photo
        assert torch.equal(ctx_model(x), ctx_model(x, context_thumbnail(x)))
        # one thumbnail serves a batch of tiles of one photo
        assert ctx_model(x, dark[:1]).shape == (2, 3, 48, 40)


def test_strength_scales_the_look_and_zero_leaves_the_upscaler_alone():
    model = perturbed(config_for("fast"))  # a PENet that changes colour and tone
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        transform = model.penet(model.h(x))
        full = model(x)
        identity = torch.zeros_like(transform)
        identity[:, 9:12] = 1.0
        half = with_strength(perturbed(config_for("fast")), 0.5)
        assert torch.allclose(half.penet(half.h(x)), identity + 0.5 * (transform - identity), atol=1e-5)
        none = with_strength(perturbed(config_for("fast")), 0.0)
        mbf, _ = none.mbfnet(x, decompose(x, 2, 1e-2), none.h(x))
        assert torch.allclose(local_transform(none.penet(none.h(x)), mbf), mbf, atol=1e-6)
        assert not torch.allclose(none(x), full, atol=1e-3)
        assert torch.equal(with_strength(perturbed(config_for("fast")), 1.0)(x), full)
    with pytest.raises(ValueError):
        with_strength(model, 2.5)


def test_a_grafted_look_runs_on_the_other_networks_upscaler():
    upscaler = perturbed(config_for("fast"), seed=1)
    look = with_context(perturbed(config_for("fast"), seed=2))
    with torch.no_grad():
        look.context.head[-1].weight.normal_(0, 0.05)  # a context that says something
    joint = graft_look(upscaler, look).eval()
    assert joint.cfg.own_look_input and joint.cfg.global_context
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        # the look is the donor's: the same transform from the same input and context
        bias = look.context(context_thumbnail(x))
        assert torch.allclose(joint.penet(joint.pe_h(x), joint.context(context_thumbnail(x))),
                              look.penet(look.h(x), bias), atol=1e-6)
        # the rest is the upscaler's: with no look, the two compute the same image
        assert torch.allclose(with_strength(joint, 0.0)(x), with_strength(upscaler, 0.0)(x), atol=1e-6)
    with pytest.raises(ValueError, match="x3"):
        graft_look(upscaler, perturbed(config_for("fast", scale=3)))


def test_a_look_from_the_fast_preset_keeps_its_size_on_the_paper_upscaler(tmp_path):
    upscaler = perturbed(config_for("paper"), seed=1)
    look = with_context(perturbed(config_for("fast"), seed=2))
    joint = graft_look(upscaler, look).eval()
    assert (joint.cfg.width, joint.cfg.look_width, joint.cfg.pe_widths) == (64, 32, (8, 16, 16))
    assert "look_width" not in upscaler.cfg.to_dict()  # unset, it is not written: older readers can load the file
    assert joint.pe_h.weight.shape[0] == 32 and joint.h.weight.shape[0] == 64  # look 32 wide, upscaler 64
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.allclose(joint.penet(joint.pe_h(x), joint.context(context_thumbnail(x))),
                              look.penet(look.h(x), look.context(context_thumbnail(x))), atol=1e-6)
        assert torch.allclose(with_strength(joint, 0.0)(x), with_strength(upscaler, 0.0)(x), atol=1e-6)
    # the mixed network survives a weights file: its config builds it again
    path = tmp_path / "mixed.pt"
    save_weights(path, joint, {"name": "mixed"})
    again, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), joint(x))
    # a look width is only meaningful where PENet has a shallow feature of its own
    with pytest.raises(ValueError, match="own_look_input"):
        DeepSRPIE(config_for("paper", look_width=32))


def test_the_2x_bicubic_and_dunets_fused_output_compute_what_they_stand_for():
    """Two rewrites for speed that must not change a number: the bicubic 2x of the image skip
    as shifted slices (F.interpolate's, borders repeated), and DUNet's 1x1 fusion applied
    before the pixel shuffle (kron(W, I)) instead of after it."""
    import torch.nn.functional as F

    from srpie_cli.model import DUNet, upsample_bicubic

    for shape in ((1, 3, 7, 5), (2, 4, 33, 64), (1, 3, 1, 1), (1, 3, 2, 3)):
        x = torch.rand(shape)
        ref = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        assert upsample_bicubic(x, 2).shape == ref.shape
        assert (upsample_bicubic(x, 2) - ref).abs().max() < 1e-6
    for scale in (2, 3):
        d = DUNet(scale, 24, zero_init=False, features=8).eval()
        torch.nn.init.normal_(d.fuse.weight)
        x, f = torch.rand(1, 3, 12, 10), torch.rand(1, 8, 12, 10)
        with torch.no_grad():
            t1, t2, t3 = d.top1(torch.cat([x, f], 1)).chunk(3, 1)
            b1, b2, b3 = d.bot1(torch.cat([x, f], 1)).chunk(3, 1)
            t = d.shuffle(torch.cat([d.top2(torch.cat([t1, b2], 1)), t3], 1))
            b = d.shuffle(torch.cat([d.bot2(torch.cat([b1, t2], 1)), b3], 1))
            ref = d.fuse(torch.cat([t, b], 1))
            out = d(x, f)
        assert out.shape == ref.shape == (1, 3, 12 * scale, 10 * scale)
        assert (out - ref).abs().max() < 1e-5 < ref.abs().max()


@pytest.mark.parametrize("t", [0, 1, 2, 3])
def test_hfa_as_a_sum_of_convolutions_computes_the_concatenation_it_stands_for(t):
    """MBFNet's fusion (HFA) without its concatenation: one convolution per part, the linear
    BPBs and H's convolution folded into their weights. Against the paper's form, written out
    here, in double precision, for every depth (t = 0 has no BPB; from t = 2 the chain folds)."""
    from srpie_cli.model import MBFNet

    torch.manual_seed(t)
    net = MBFNet(16, t, image_skip=True).double().eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(1, 3, 12, 10, dtype=torch.float64)
    x_id, h_x = torch.rand(1, 6, 12, 10, dtype=torch.float64), torch.rand(1, 16, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        outs, feat = [], h_x
        for msb in net.msbs:
            feat = msb(feat)
            outs.append(feat)
        bpb = None
        for k, block in enumerate(net.bpbs):
            bpb = block(outs[-1 - k], bpb)
        ref = net.hfa(torch.cat([*outs, *([bpb] if bpb is not None else []), net.h_id(x_id)], 1)) + h_x
        y, fused = net(x, x_id, h_x)
    assert (fused - ref).abs().max() < 1e-12 < ref.abs().max()
    assert torch.equal(y, x + net.out(fused))


def test_fca_as_one_convolution_computes_its_two():
    """FCA's f_d1(x) - f_d2(x) as one dilated 3x3 (the 1x1 kernel at its centre tap)."""
    from srpie_cli.model import FCA

    torch.manual_seed(0)
    f = FCA(16).double()
    for p in f.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, 16, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = torch.sigmoid(f.f_d1(x) - f.f_d2(x))
        assert (f(x) - (ref * x + ref)).abs().max() < 1e-12 < ref.abs().max()


def test_msb_with_its_1x1_inside_the_3x3_computes_the_paper_form():
    """MSB's 1x1 and 3x3 on the same map run as one 3x3 (the 1x1 at the centre tap)."""
    from srpie_cli.model import MSB

    torch.manual_seed(1)
    b = MSB(16, act=torch.nn.LeakyReLU).double().eval()
    for p in b.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.rand(1, 16, 13, 11, dtype=torch.float64)
    q = b.q
    with torch.no_grad():
        d = b.act(b.dilated(x))
        a3, r3 = b.c3(d).split([q, 2 * q], 1)
        a5, r5 = b.c5(d).split([q, q], 1)
        ref = b.fca(b.fuse(torch.cat([b.c1(d), a3, b.c3b(r3), a5, b.c5b(r5)], 1))) + x
        assert (b(x) - ref).abs().max() < 1e-12 < (ref - x).abs().max()
