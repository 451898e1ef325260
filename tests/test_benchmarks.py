"""Smoke test of the benchmark: the quick run works and its figures are sane (never timing
thresholds: speed is judged by the benchmark's own in-process ratios, by hand)."""

import math

import pytest

from benchmarks.bench import QUICK, Sizes, main, tile_overhead
from srpie_cli.tiling import TileOptions

TINY = Sizes(**{**QUICK.__dict__, "tile": 24, "peer": 16, "image": (40, 56),
                "tile_opts": TileOptions(tile=32, overlap=8), "bicubic": (64, 64), "matmul": 128, "reps": 1,
                "memory": (("tiny", 20, 28, "fast"),), "compile": False})


@pytest.fixture(scope="module")
def report():
    return main(["--threads", "1"], sizes=TINY)


@pytest.mark.slow
def test_every_section_reports_positive_finite_figures(report):
    assert report["peak_gflops"] > 0
    for section in ("network", "peers", "tiled"):
        assert report[section]
        for row in report[section].values():
            assert row["mp_s"] > 0 and math.isfinite(row["mp_s"]) and row["gflops"] > 0
    for row in report["e2e"].values():
        assert row["seconds"] > 0 and 0 <= row["io_share"] < 1
    assert report["bicubic"]["mp_s"] > 0
    assert 0.1 < report["memory"]["tiny"]["peak_gb"] < 8


def test_flop_counts_match_the_architectures(report):
    peers = report["peers"]
    # FLOPs per input pixel follow from the layer widths: RRDBNet x2 ~9 GFLOP/MP and 16.7 M
    # parameters; srpie paper ~1.6 GFLOP/MP, fast about a fifth of it
    assert 8000 < peers["RRDBNet x2 (Real-ESRGAN x2plus)"]["gflop_per_mp"] < 10000
    assert 16e6 < peers["RRDBNet x2 (Real-ESRGAN x2plus)"]["params"] < 17.5e6
    assert 1400 < peers["srpie paper"]["gflop_per_mp"] < 1800
    assert 3 < peers["srpie paper"]["gflop_per_mp"] / peers["srpie fast"]["gflop_per_mp"] < 6
    assert all(0.3e6 < peers[k]["params"] < 2e6 for k in ("SRVGGNetCompact x2", "IMDN x2"))


def test_ratios_are_reported_for_every_target(report):
    keys = " ".join(report["ratios"])
    for target in (">= 2", ">= 3", ">= 5", "<= 1.15", "< 3"):
        assert target in keys
    assert all(v > 0 for v in report["ratios"].values())


def test_tile_overhead_from_the_layout():
    assert tile_overhead(300, 200) == 1  # one tile: no overhead
    assert 1 < tile_overhead(4000, 6000, fit=False) < 1.5 and 1 < tile_overhead(3000, 4000, fit=False) < 1.5
    for h, w in ((3000, 4000), (4000, 6000), (640, 832)):  # fitted tiles never run more pixels
        assert 1 < tile_overhead(h, w) <= tile_overhead(h, w, fit=False)
    assert tile_overhead(3000, 4000) < 1.15  # 12 MP at the default tile


@pytest.mark.slow
def test_cuda_benchmark_runs_in_smoke_form_on_a_cpu(tmp_path):
    from benchmarks import bench_cuda

    rep = bench_cuda.main(["--smoke", "--device", "cpu", "--reps", "1", "--json", str(tmp_path / "c.json")])
    for row in rep["network"].values():
        assert row["mp_s"] > 0 and row["tflops"] > 0
    assert all(r["seconds"] > 0 for r in rep["tiled_12mp"].values())
    assert rep["half"]["psnr_half_vs_float32"] > 60  # on a CPU autocast is off: the same output
    assert all(v > 0 for v in rep["ratios"].values())
    assert (tmp_path / "c.json").is_file()


@pytest.mark.slow
def test_tile_consistency_reports_each_model(tmp_path):
    import numpy as np
    from PIL import Image

    from benchmarks.tile_consistency import main as consistency

    rng = np.random.default_rng(0)
    img = (np.kron(rng.random((6, 8, 3)), np.ones((12, 12, 1))) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "blocks.png")
    rows = consistency([str(tmp_path / "blocks.png"), "--tile", "32", "--threads", "1",
                        "--model", "srpie-x2-fast", "--model", "srpie-x2-sr"])
    assert [r["model"] for r in rows] == ["srpie-x2-fast", "srpie-x2-sr"]
    for r in rows:
        assert 0 <= r["levels"] <= 255 and r["psnr"] > 40  # blended tiles: close, never a seam
    assert rows[1]["levels"] <= 2  # the pure upscaler reads little context beyond the overlap
    # one tile as large as the photo is the whole-image pass itself
    (same,) = consistency([str(tmp_path / "blocks.png"), "--tile", "0", "--threads", "1", "--model", "srpie-x2-fast"])
    assert same["levels"] == 0


def test_training_step_benchmark_runs_both_ways():
    from benchmarks.train_step import main as train_step

    report = train_step(["--threads", "1", "--batch-size", "2", "--patch", "16", "--steps", "1", "--preset", "fast"])
    row = report["fast"]
    assert row["whole_s"] > 0 and row["look_only_s"] > 0
    # the look-only row trains the look alone: PENet, its own input conv and the context
    from srpie_cli.model import LOOK_PARTS, DeepSRPIE, config_for

    net = DeepSRPIE(config_for("fast", du_features=True, global_context=True, own_look_input=True))
    look = sum(p.numel() for name in LOOK_PARTS if getattr(net, name) is not None for p in getattr(net, name).parameters())
    assert row["look_only_params"] == look < row["whole_params"] == sum(p.numel() for p in net.parameters())


@pytest.mark.slow
def test_shoot_benchmark_runs_the_batch_path_and_compares_models(tmp_path):
    from benchmarks.shoot import main as shoot

    rep = shoot(["--smoke", "--models", "srpie-x2-fast-sr", "srpie-x2-fast-sr", "--json", str(tmp_path / "s.json")])
    assert [r["model"] for r in rep["rows"]] == ["srpie-x2-fast-sr"] * 2
    assert all(r["mp_s"] > 0 and r["split_seconds"]["enhance"] > 0 for r in rep["rows"])
    assert rep["psnr_vs_baseline"][1] > 45  # the same model twice: the same look
    assert (tmp_path / "s.json").is_file()


def test_shoot_benchmark_puts_the_photo_path_before_beside_the_one_now(tmp_path):
    """What a GPU run compares (``--variants before now``), on a CPU: there the two are the same
    arithmetic, so the outputs are the same bytes; the metadata's share is timed apart."""
    from benchmarks.shoot import main as shoot

    rep = shoot(["--smoke", "--threads", "1", "--models", "srpie-x2-fast-sr", "--variants", "before", "now+io4"])
    assert [r["variant"] for r in rep["rows"]] == ["before", "now+io4"]
    assert all(0 < r["network_busy"] <= 1 and r["device_peak_gb"] is None for r in rep["rows"])
    assert rep["psnr_vs_baseline"][1] == 99.0  # identical
    assert rep["metadata_seconds"]["check"] > 0
    with pytest.raises(SystemExit, match="not half, compile or ioN"):
        shoot(["--smoke", "--variants", "now+fp8"])


def test_the_estimate_counts_the_tiles_a_compiled_run_makes():
    """A compiled run keeps one tile shape a photo: more pixels than fitted tiles, and the
    estimate counts those (a 24 MP photo in 320 px tiles: 15 x 22 of 288 px, where fitted
    tiles are 14 x 20 of 304 x 320)."""
    from srpie_cli.estimate import Cost, layout, seconds
    from srpie_cli.inference import Settings

    s = Settings(model="srpie-x2-fast", overlap=12)
    one_shape, fitted = layout(6000, 4000, 320, 12, 1, fit=False), layout(6000, 4000, 320, 12, 1)
    assert one_shape == (15 * 22, 15 * 22 * 288 * 288) and fitted == (14 * 20, 14 * 20 * 304 * 320)
    cost = Cost(a=0.0, b=1e-6, compiled_share=1.0)
    assert seconds(cost, [(6000, 4000)], s, 320, compiled=True) - seconds(cost, [(6000, 4000)], s, 320, compiled=False) \
        == pytest.approx((one_shape[1] - fitted[1]) * 1e-6 + 30.0)
