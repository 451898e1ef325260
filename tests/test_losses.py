import pytest
import torch

from srpie_cli.losses import HybridLoss, LossWeights, color, dual_kawase_blur, l1, ms_ssim, tv


def images(seed=0, size=48):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(2, 3, size, size, generator=g), 3, 1, 1)


def test_every_term_is_zero_at_identity():
    x = images()
    assert l1(x, x) == 0
    assert color(x, x) == 0
    assert torch.isclose(ms_ssim(x, x), torch.tensor(1.0), atol=1e-5)
    total, parts = HybridLoss(LossWeights.preset("hybrid"))(x, x)
    assert set(parts) == {"l1", "msssim", "color", "tv"}  # no VGG file given: content is off
    assert parts["l1"] == 0 and parts["color"] == 0 and abs(parts["msssim"]) < 1e-5
    assert total == pytest.approx(LossWeights.preset("hybrid").tv * float(tv(x)), abs=1e-5)


def test_terms_grow_with_damage():
    x = images()
    worse = [x + 0.02, x + 0.1]
    assert l1(x, worse[0]) < l1(x, worse[1])
    assert color(worse[0], x) < color(worse[1], x)
    assert ms_ssim(x + 0.05 * torch.randn_like(x), x) < ms_ssim(x + 0.01 * torch.randn_like(x), x) < 1


def test_gradients_are_finite_for_every_term():
    x, y = images(0), images(1)
    x.requires_grad_(True)
    total, _ = HybridLoss(LossWeights(l1=1, msssim=1, color=1, tv=1))(x.clamp(0, 1), y)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradients_are_finite_on_flat_patches():
    x = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    y = torch.full((1, 3, 32, 32), 0.5)
    total, _ = HybridLoss(LossWeights(l1=1, msssim=1, color=1, tv=1))(x, y)
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_kawase_blur_keeps_size_and_mean_and_smooths():
    x = torch.rand(2, 3, 37, 41, generator=torch.Generator().manual_seed(0))
    b = dual_kawase_blur(x)
    assert b.shape == x.shape
    assert torch.allclose(b.mean(), x.mean(), atol=0.01)
    assert tv(b) < tv(x)


def test_content_loss_needs_a_local_file(tmp_path):
    from srpie_cli import SrpieError
    from srpie_cli.losses import VGGContent

    bad = tmp_path / "vgg.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(SrpieError, match="VGG-19"):
        VGGContent(bad)


def test_the_chroma_gap_charges_greying():
    from srpie_cli.losses import chroma_gap

    gt = torch.rand(2, 3, 16, 16)
    grey = gt.mean(1, keepdim=True)
    assert chroma_gap(gt, gt) < 1e-6 < chroma_gap(0.5 * gt + 0.5 * grey, gt) < chroma_gap(grey.expand_as(gt), gt)
    out = (0.5 * gt + 0.5 * grey).requires_grad_()
    chroma_gap(out, gt).backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
