"""The GPU path, specified on a CPU: the photo uploaded once, tiled, blended and rounded where
the network is, downloaded once; decoding and encoding in more threads beside it. On a CPU
every step is the same arithmetic as the host path, so the two must agree to the byte; on
PyTorch's "meta" device (shapes without data) any tensor left on the host fails the run, so
a pass there shows that nothing of the image-sized work stays behind."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from srpie_cli import batch, images, inference
from srpie_cli.inference import Settings
from srpie_cli.model import DeepSRPIE, config_for
from srpie_cli.tiling import TileOptions, download, to_tensor, upload, upscale
from tests.conftest import digest, disk_full_after, pattern, write_jpeg
from tests.test_model import perturbed

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_upload_and_download_round_as_the_host_conversions_do(dtype):
    px = pattern(37, 53, 1, dtype)
    x = upload(px, CPU)
    assert x.shape == (1, 3, 37, 53) and x.is_contiguous()
    assert torch.equal(x, to_tensor(images.to_float(px)))
    bits = 8 if dtype == np.uint8 else 16
    y = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1  # outside [0, 1] too
    host = images.from_float(y[0].permute(1, 2, 0).numpy().copy(), bits)
    got = download(y, bits)
    assert got.dtype == dtype and got.flags.c_contiguous and np.array_equal(got, host)


@pytest.mark.parametrize("opts", [TileOptions(tile=32, overlap=8, tile_batch=3),
                                  TileOptions(tile=0, overlap=8),
                                  TileOptions(tile=40, overlap=8, tta=True)], ids=["tiles", "whole", "tta"])
def test_a_photo_on_the_networks_device_never_leaves_it(opts):
    """Padding, tiles, blend weights, the sum and the clamp all on the device of the model: on
    "meta", where mixing in a host tensor raises, the output comes back there."""
    model = DeepSRPIE(config_for("fast", global_context=True)).eval().to("meta")
    meta = torch.device("meta")
    y = upscale(model, upload(pattern(45, 70), meta), opts)
    assert y.device == meta and y.shape == (1, 3, 90, 140)
    with pytest.raises(NotImplementedError, match="meta"):  # rounded there; only the copy back needs bytes
        download(y, 8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("grey", [False, True], ids=["colour", "grey"])
def test_on_device_gives_the_host_paths_bytes(dtype, grey):
    model = perturbed(config_for("fast", global_context=True))
    px = pattern(45, 70, 2, dtype)
    if grey:
        px[..., 1] = px[..., 2] = px[..., 0]
    photo = images.Photo(pixels=px)
    for extra in ({"tile": 32, "overlap": 8}, {"tile": 0}, {"tile": 40, "overlap": 8, "tta": True}):
        host = inference.enhance_photo(model, photo, Settings(on_device=False, **extra)).pixels
        device = inference.enhance_photo(model, photo, Settings(on_device=True, **extra)).pixels
        assert host.dtype == device.dtype == dtype
        assert np.array_equal(host, device), extra


def test_load_chooses_the_host_path_and_two_threads_on_a_cpu(tiny_model):
    e = inference.load(Settings(model=str(tiny_model), device="cpu"))
    assert e.settings.on_device is False and e.settings.io_threads == 2
    e = inference.load(Settings(model=str(tiny_model), device="cpu", on_device=True, io_threads=7))
    assert e.settings.on_device is True and e.settings.io_threads == 7


def table(outcome: batch.Outcome, out: Path) -> list[tuple]:
    """What a run reports, in its order, without the timings (which differ run to run)."""
    return [(r.input, r.status, r.output and str(Path(r.output).relative_to(out)), r.reason, r.megapixels,
             r.notes) for r in outcome.results]


class Heard(batch.Listener):
    def __init__(self):
        self.done = []

    def file_done(self, result):
        self.done.append((result.input, result.status))


def test_the_gpu_pipeline_on_a_cpu_writes_the_same_bytes_and_reports_the_same(tmp_path, tiny_model, shoot):
    """Today's CPU run (the host path, two threads) against what a GPU gets (the photo on the
    network's device, eight threads: five outputs may wait to be encoded), on the shoot with
    every kind of photo and bad file, a RAW+JPEG pair, alpha and 16 bits."""
    for i in range(6):  # enough photos for the deeper backlog to fill
        write_jpeg(shoot / f"more/{i}.jpg", 40, 56, seed=10 + i)
    plain, piped = Heard(), Heard()
    a = batch.enhance(inputs=[shoot], output=tmp_path / "a", listener=plain, report=tmp_path / "a.json",
                      settings=Settings(model=str(tiny_model), on_device=False, io_threads=2))
    b = batch.enhance(inputs=[shoot], output=tmp_path / "b", listener=piped, report=tmp_path / "b.json",
                      settings=Settings(model=str(tiny_model), on_device=True, io_threads=8))
    assert a.count("done") >= 10 and a.count("failed") >= 4
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert table(a, tmp_path / "a") == table(b, tmp_path / "b")
    assert [(Path(i).relative_to(shoot), s) for i, s in plain.done] == \
        [(Path(i).relative_to(shoot), s) for i, s in piped.done]
    ra, rb = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert ra["summary"] == rb["summary"]
    assert rb["settings"] == asdict(Settings(model=str(tiny_model), on_device=True, io_threads=8))


def test_a_full_disk_with_many_writes_in_flight_stops_the_batch_and_leaves_no_part(tmp_path, tiny_model, monkeypatch):
    for i in range(8):
        write_jpeg(tmp_path / f"s/{i}.jpg", 16, 16, seed=i)
    disk_full_after(monkeypatch)
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o",
                        settings=Settings(model=str(tiny_model), on_device=True, io_threads=8))
    by = {Path(r.input).name: r for r in out.results}
    assert len(by) == 8 and by["0.jpg"].status == "done"
    assert all(r.status == "failed" for n, r in by.items() if n != "0.jpg")
    assert "No space left" in by["1.jpg"].reason
    assert any("not started: the batch stopped (disk full)" in r.reason for r in by.values() if r.reason)
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != batch.LOCK_NAME) == ["0.jpg"]


def test_an_interrupt_with_many_writes_in_flight_leaves_complete_outputs_and_a_report(tmp_path, tiny_model):
    for i in range(8):
        write_jpeg(tmp_path / f"s/{i}.jpg", 24, 32, seed=i)

    class StopAfterOne(batch.Listener):
        def file_done(self, result):
            if result.status == "done":
                raise KeyboardInterrupt

    with pytest.raises(batch.Interrupted):
        batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", listener=StopAfterOne(),
                      report=tmp_path / "run.json",
                      settings=Settings(model=str(tiny_model), on_device=True, io_threads=8))
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["interrupted"] == "SIGINT" and sum(doc["summary"].values()) == 8
    assert doc["summary"]["done"] >= 1 and doc["summary"]["interrupted"] >= 1
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == sorted(Path(f["output"]).name for f in doc["files"] if f["status"] == "done")
    for name in written:  # whole photos only: no temporaries, nothing cut short
        assert images.read_photo(tmp_path / "o" / name).size == (64, 48)
