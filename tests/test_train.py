"""Training: resume continues exactly, and fine-tuning learns a studio's house look."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from srpie_cli import SrpieError
from srpie_cli.data import PairSet
from srpie_cli.evaluate import evaluate_pairs, mean_score
from srpie_cli.model import DeepSRPIE, SRPIEConfig, with_context
from srpie_cli.train import TrainConfig, WeightAverage, lr_at, train
from srpie_cli.weights import load_model, read_weights, save_weights

TINY = SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth photo-like scene: gradients, blobs and an edge, float [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(0.2, 0.8, 3)
        img[..., c] = a + 0.25 * np.sin(x / (6 + 10 * b) + p) * np.cos(y / (5 + 9 * a))
    img[: h // 2, w // 3:] += rng.uniform(-0.2, 0.2, 3)
    return np.clip(img, 0.02, 0.98)


def house_look(img: np.ndarray) -> np.ndarray:
    """A fixed tone curve and a warm colour grade."""
    out = img ** 0.75
    out = out * np.array([1.08, 1.0, 0.86], np.float32) + np.array([0.02, 0.0, 0.0], np.float32)
    return np.clip(out, 0, 1)


def write_pairs(root, n: int, size: int = 64):
    for i in range(n):
        hr = scene(size, size, i)
        for sub, img in (("before", hr), ("after", house_look(hr))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(root / sub / f"{i:03d}.png")


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_weights(path, DeepSRPIE(TINY))
    return path


@pytest.mark.parametrize("look_only", [False, True], ids=["whole-network", "look-only"])
def test_fine_tuning_learns_a_house_look(tmp_path, tiny_weights, look_only):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 10)
    cfg = TrainConfig(out=tmp_path / "house.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      steps=60, batch_size=8, patch=16, lr=5e-3, warmup=5, holdout=3, val_every=30,
                      loss="hybrid", threads=1, look_only=look_only)
    before_model, _ = load_model(tiny_weights)
    _, held = PairSet.from_folders([pairs], 2, holdout=3)
    before = mean_score(evaluate_pairs(before_model, held))
    train(cfg, log=lambda m: None)
    after_model, meta = load_model(cfg.out)
    after = mean_score(evaluate_pairs(after_model, held))
    assert after["psnr"] > before["psnr"] + 3.0, (before, after)
    assert after["ssim"] > before["ssim"]
    # the weights file says what made it
    assert meta["data"]["pair_count"] == 7 and len(meta["data"]["held_out_pairs"]) == 3
    assert meta["scores"]["val_pairs"]["psnr"] == pytest.approx(after["psnr"], abs=0.01)
    assert meta["train_config"]["init"] == str(tiny_weights)


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["plain", "weight-average"])
def test_resume_continues_where_it_stopped(tmp_path, tiny_weights, ema):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 4, size=32)
    common = dict(pairs=[pairs], init=str(tiny_weights), steps=6, batch_size=2, patch=8, warmup=2,
                  holdout=1, val_every=100, ckpt_every=1, threads=1, loss="hybrid", ema=ema)
    straight = TrainConfig(out=tmp_path / "a.pt", run_dir=tmp_path / "run_a", **common)
    train(straight, log=lambda m: None)

    class Stop(Exception):
        pass

    def stop_at_3(step, loss, lr):
        if step == 3:
            raise Stop

    interrupted = TrainConfig(out=tmp_path / "b.pt", run_dir=tmp_path / "run_b", **common)
    with pytest.raises(Stop):
        train(interrupted, log=lambda m: None, on_step=stop_at_3)
    assert read_weights(tmp_path / "run_b" / "last.pt")["step"] == 3
    interrupted.resume = True
    logs = []
    train(interrupted, log=logs.append)
    assert any("resumed" in m and "step 3" in m for m in logs)
    a = read_weights(tmp_path / "run_a" / "last.pt")
    b = read_weights(tmp_path / "run_b" / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k
    assert ("ema_state" in a) == bool(ema)
    if ema:  # the average went on from where it stopped, too
        assert a["ema_updates"] == b["ema_updates"] == 6
        for k in a["ema_state"]:
            assert torch.allclose(a["ema_state"][k], b["ema_state"][k], atol=1e-6), k


def test_weight_average_follows_the_trained_weights_with_its_decay():
    torch.manual_seed(0)
    model = DeepSRPIE(TINY)
    average = WeightAverage(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # first update: d = min(0.9, 1 - 1/2): the mean of the start and the step
    for k, v in average.model.state_dict().items():
        assert torch.allclose(v, start[k] + 0.5 * (model.state_dict()[k] - start[k]), atol=1e-6), k
    for _ in range(200):
        average.update()
    for k, v in average.model.state_dict().items():  # the weights stood still: the average reaches them
        assert torch.allclose(v, model.state_dict()[k], atol=1e-5), k
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(SrpieError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_a_run_with_a_weight_average_writes_the_average_and_scores_both(tmp_path, tiny_weights):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 5, size=32)
    cfg = TrainConfig(out=tmp_path / "e.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      steps=20, batch_size=4, patch=8, lr=5e-3, warmup=2, holdout=2, val_every=20, threads=1,
                      ema=0.9)
    logs = []
    train(cfg, log=logs.append)
    ckpt = read_weights(tmp_path / "run" / "last.pt")
    written = read_weights(cfg.out)["state_dict"]
    for k in written:  # the file written is the average, not the last trained weights
        assert torch.equal(written[k], ckpt["ema_state"][k]), k
    assert any(not torch.equal(written[k], ckpt["state_dict"][k]) for k in written)
    entry = ckpt["history"][-1]
    assert entry["step"] == 20 and "val_pairs" in entry and "val_pairs" in entry["without_average"]
    assert any("without the weight average" in m for m in logs)


def test_learning_rate_schedule_warms_up_then_decays():
    cfg = TrainConfig(out=None, run_dir=None, steps=1000, lr=1e-3, warmup=100, lr_min_ratio=0.02)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) < lr_at(200, cfg)
    assert lr_at(1000, cfg) == pytest.approx(2e-5)


def test_the_schedule_spans_a_time_budget_when_it_ends_first():
    cfg = TrainConfig(out=None, run_dir=None, steps=100_000, lr=1e-3, warmup=0, lr_min_ratio=0.02, minutes=10)
    assert lr_at(10, cfg, seconds=0) == pytest.approx(1e-3, rel=1e-3)
    assert lr_at(10, cfg, seconds=300) == pytest.approx(0.5 * (1e-3 + 2e-5), rel=1e-3)  # half the time: half-way
    assert lr_at(10, cfg, seconds=600) == pytest.approx(2e-5)


def test_background_workers_feed_training_and_widening_and_context_apply(tmp_path, tiny_weights):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 5, size=32)
    cfg = TrainConfig(out=tmp_path / "w.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      steps=4, batch_size=2, patch=8, warmup=1, holdout=1, val_every=100, threads=1,
                      workers=2, device="cpu", du_features=True, global_context=True)
    logs = []
    summary = train(cfg, log=logs.append)
    model, meta = load_model(cfg.out)
    assert model.cfg.du_features and model.cfg.global_context  # widened from the tiny model, then trained
    assert summary["steps"] == 4 and meta["train_config"]["workers"] == 2
    ckpt = read_weights(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 4
    # it trained: the weights moved away from the init
    init = read_weights(tiny_weights)["state_dict"]
    assert any(not torch.equal(init[k], ckpt["state_dict"][k]) for k in init if k in ckpt["state_dict"]
               and init[k].shape == ckpt["state_dict"][k].shape)


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["plain", "weight-average"])
def test_a_run_stopped_by_the_clock_scores_its_end_and_checkpoints_that(tmp_path, tiny_weights, ema):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 4, size=32)
    cfg = TrainConfig(out=tmp_path / "c.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      steps=1000, minutes=1e-4, batch_size=2, patch=8, warmup=0, holdout=1, val_every=500, threads=1,
                      ema=ema)
    logs = []
    train(cfg, log=logs.append)
    assert any("time budget" in m for m in logs)
    ckpt = read_weights(tmp_path / "run" / "last.pt")
    assert 0 < ckpt["step"] < 1000
    assert ckpt["history"] and ckpt["history"][-1]["step"] == ckpt["step"]  # the end was scored
    assert math.isfinite(ckpt["best"])  # and the checkpoint knows that score
    assert cfg.out.is_file()
    written = read_weights(cfg.out)["state_dict"]
    kept = ckpt["ema_state"] if ema else ckpt["state_dict"]  # the end scored is what was written
    assert all(torch.equal(written[k], kept[k]) for k in written)


def test_look_only_trains_the_grafted_look_and_leaves_the_upscaler_as_it_was(tmp_path, tiny_weights):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 5, size=32)
    donor = tmp_path / "donor.pt"  # another model's look, with a global context
    torch.manual_seed(1)
    save_weights(donor, with_context(DeepSRPIE(TINY)))
    cfg = TrainConfig(out=tmp_path / "look.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      look_from=str(donor), steps=6, batch_size=2, patch=8, lr=1e-2, warmup=1, holdout=1,
                      val_every=100, threads=1, look_only=True)
    train(cfg, log=lambda m: None)
    init, look = read_weights(tiny_weights)["state_dict"], read_weights(donor)["state_dict"]
    trained = read_weights(tmp_path / "run" / "last.pt")["state_dict"]
    upscaler = [k for k in init if not k.startswith("penet.")]
    assert upscaler and all(torch.equal(init[k], trained[k]) for k in upscaler)  # H, MBFNet, DUNet: untouched
    assert {k for k in trained if k.startswith("pe_h.")} == {"pe_h.weight", "pe_h.bias"}
    for part in ("penet.", "pe_h.", "context."):  # the look started from the donor's and trained
        keys = [k for k in trained if k.startswith(part)]
        donor_keys = [k.replace("pe_h.", "h.") for k in keys]
        assert any(not torch.equal(trained[k], look[d]) for k, d in zip(keys, donor_keys)), part
    with pytest.raises(SrpieError, match="--init"):
        train(TrainConfig(out=tmp_path / "x.pt", run_dir=tmp_path / "run2", pairs=[pairs], steps=1, look_only=True,
                          holdout=1, threads=1), log=lambda m: None)


def test_validation_pairs_are_kept_apart_from_training_and_the_held_out_ones(tmp_path, tiny_weights):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 8, size=32)
    cfg = TrainConfig(out=tmp_path / "v.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      steps=2, batch_size=2, patch=8, warmup=1, holdout=2, val_pairs=2, val_every=2, threads=1)
    train(cfg, log=lambda m: None)
    _, meta = load_model(cfg.out)
    data = meta["data"]
    names = lambda paths: [p.rsplit("/", 1)[-1] for p in paths]  # noqa: E731
    assert names(data["held_out_pairs"]) == ["006.png", "007.png"]
    assert names(data["validation_pairs"]) == ["004.png", "005.png"]
    assert data["pair_count"] == 4  # trained on 000-003 only
    # the score the file was chosen by is the validation pairs', not the held-out ones'
    model, _ = load_model(cfg.out)
    train_set, rest = PairSet.from_folders([pairs], 2, holdout=4)
    val_set, held = rest.split(2)
    assert meta["scores"]["val_pairs"]["psnr"] == pytest.approx(mean_score(evaluate_pairs(model, val_set))["psnr"],
                                                                abs=0.01)
    assert meta["scores"]["val_pairs"]["psnr"] != pytest.approx(mean_score(evaluate_pairs(model, held))["psnr"],
                                                                abs=0.01)


def test_a_run_without_validation_writes_the_average_of_its_start_and_its_steps(tmp_path, tiny_weights):
    pairs = tmp_path / "pairs"
    write_pairs(pairs, 3, size=32)
    cfg = TrainConfig(out=tmp_path / "f.pt", run_dir=tmp_path / "run", pairs=[pairs], init=str(tiny_weights),
                      steps=1, batch_size=2, patch=8, lr=1e-2, warmup=0, holdout=0, threads=1, ema=0.9)
    train(cfg, log=lambda m: None)
    start = read_weights(tiny_weights)["state_dict"]
    trained = read_weights(tmp_path / "run" / "last.pt")["state_dict"]
    written = read_weights(cfg.out)["state_dict"]
    # one update, taken after the optimiser's step: the mean of the start and that step
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved
    for k in moved:
        assert torch.allclose(written[k], (start[k] + trained[k]) / 2, atol=1e-6), k
