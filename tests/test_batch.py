import errno
import os
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image

from srpie_cli import batch, defaults, images, inference
from srpie_cli.batch import UsageError
from srpie_cli.inference import Settings
from tests.conftest import disk_full_after, write_dng, write_jpeg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    """The memory of failures (batch.state_dir) kept inside the test's folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def rel(paths, root):
    return sorted(str(Path(p).relative_to(root)) for p in paths)


def test_plan_mirrors_the_tree_beside_the_input_and_skips_hidden(shoot):
    p = batch.plan([shoot])
    out = shoot.parent / "shoot_srpie"
    assert p.out_roots == [out]
    dst = {str(j.src.relative_to(shoot)): j.dst for j in p.jobs}
    assert dst["day1/sub dir/café ñ.png"] == out / "day1/sub dir/café ñ.png"
    assert dst["raw/IMG_0100.dng"] == out / "raw/IMG_0100.tif"
    assert dst["day1/IMG_0002.JPG"] == out / "day1/IMG_0002.JPG"  # the suffix is kept as it was
    assert not any(".hidden" in k or ".cache" in k or k.endswith(".txt") for k in dst)
    # the camera JPEG of the RAW+JPEG pair is enhanced only if the RAW cannot be decoded
    (raw,) = [j for j in p.jobs if j.src.name == "IMG_0100.dng"]
    assert raw.fallback.src == shoot / "raw/IMG_0100.JPG" and raw.fallback.dst == out / "raw/IMG_0100.JPG"
    assert "raw/IMG_0100.JPG" not in dst


@pytest.mark.parametrize("choice,enhanced", [("raw", {"IMG_1.CR2"}), ("jpeg", {"IMG_1.JPG"}), ("both", {"IMG_1.CR2", "IMG_1.JPG"})])
def test_raw_jpeg_pairs(tmp_path, choice, enhanced):
    (tmp_path / "s").mkdir()
    for name in ("IMG_1.CR2", "IMG_1.JPG", "IMG_2.JPG"):
        (tmp_path / "s" / name).write_bytes(b"x")
    p = batch.plan([tmp_path / "s"], raw_jpeg=choice)
    assert {j.src.name for j in p.jobs} == enhanced | {"IMG_2.JPG"}
    fallback = {j.src.name: j.fallback.src.name for j in p.jobs if j.fallback}
    assert fallback == {"raw": {"IMG_1.CR2": "IMG_1.JPG"}, "jpeg": {"IMG_1.JPG": "IMG_1.CR2"}, "both": {}}[choice]


@pytest.mark.parametrize("fmt", [None, "jpeg", "png", "tiff", "webp"])
def test_the_jpeg_of_a_pair_stands_in_whatever_the_output_format(tmp_path, fmt):
    """With --format jpeg the RAW's output and its JPEG's have the same name: the JPEG is
    still its stand-in (one of them writes it), not a collision that loses the frame."""
    (tmp_path / "s").mkdir()
    for name in ("IMG_1.CR2", "IMG_1.JPG"):
        (tmp_path / "s" / name).write_bytes(b"x")
    p = batch.plan([tmp_path / "s"], fmt=fmt)
    (job,) = p.jobs
    assert job.src.name == "IMG_1.CR2" and job.fallback is not None and job.fallback.src.name == "IMG_1.JPG"
    assert not [r for r in p.results if r.status == "failed"]


def test_output_folder_inside_the_input_is_not_walked(tmp_path):
    write_jpeg(tmp_path / "s/a.jpg")
    write_jpeg(tmp_path / "s/out/old.jpg")
    p = batch.plan([tmp_path / "s"], output=tmp_path / "s/out")
    assert [j.src.name for j in p.jobs] == ["a.jpg"]
    with pytest.raises(UsageError, match="input folder"):
        batch.plan([tmp_path / "s"], output=tmp_path / "s")


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path):
    write_jpeg(tmp_path / "s/a.jpg")
    write_jpeg(tmp_path / "s/b.jpg")
    (tmp_path / "o").mkdir()
    (tmp_path / "o/a.jpg").write_bytes(b"done before")
    p = batch.plan([tmp_path / "s"], output=tmp_path / "o")
    assert [j.src.name for j in p.jobs] == ["b.jpg"]
    assert p.results[0].status == "skipped" and "exists" in p.results[0].reason
    # --overwrite replaces only what srpie wrote: a file of someone else's in the way is refused
    p = batch.plan([tmp_path / "s"], output=tmp_path / "o", overwrite=True)
    assert [j.src.name for j in p.jobs] == ["b.jpg"]
    assert p.results[0].status == "failed" and "not written by srpie" in p.results[0].reason
    images.write_photo(tmp_path / "o/a.jpg", images.read_photo(tmp_path / "s/a.jpg"), "jpeg")
    assert len(batch.plan([tmp_path / "s"], output=tmp_path / "o", overwrite=True).jobs) == 2


def test_output_names_that_collide_are_failures_not_overwrites(tmp_path):
    write_jpeg(tmp_path / "s/a.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "s/a.png")
    p = batch.plan([tmp_path / "s"], output=tmp_path / "o", fmt="tiff")
    assert len(p.jobs) == 1
    assert "collides" in p.results[0].reason


def test_walk_survives_a_symlink_loop(tmp_path):
    write_jpeg(tmp_path / "s/sub/a.jpg")
    os.symlink(tmp_path / "s", tmp_path / "s/sub/loop")
    errors = []
    found = list(batch.walk(tmp_path / "s", set(), errors))
    assert rel(found, tmp_path / "s") == ["sub/a.jpg"] and errors == []


def test_walk_names_and_skips_an_unreadable_folder(tmp_path, monkeypatch):
    write_jpeg(tmp_path / "s/ok/a.jpg")
    write_jpeg(tmp_path / "s/locked/b.jpg")
    real = os.scandir

    def scandir(path):  # as root, chmod 000 does not stop reading: simulate the error
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(batch.os, "scandir", scandir)
    p = batch.plan([tmp_path / "s"], output=tmp_path / "o")
    assert [j.src.name for j in p.jobs] == ["a.jpg"]
    (err,) = [r for r in p.results if r.status == "failed"]
    assert err.input.endswith("locked") and "Permission denied" in err.reason


def test_output_folder_that_cannot_be_created_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot be created or written"):
        batch.prepare_outputs([tmp_path / "file" / "out"])


def test_second_run_on_the_same_output_is_refused_by_the_lock(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg")
    (tmp_path / "o").mkdir()
    with batch.OutputLock([tmp_path / "o"]):
        with pytest.raises(UsageError, match="another srpie run"):
            batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert not (tmp_path / "o/a.jpg").exists()
    # the lock is released with the first run
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert out.count("done") == 1


def test_full_disk_is_reported_leaves_no_temporary_file_and_stops(tmp_path, tiny_model, monkeypatch):
    for i in range(4):
        write_jpeg(tmp_path / f"s/{i}.jpg", 16, 16, seed=i)
    disk_full_after(monkeypatch)
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    by = {Path(r.input).name: r for r in out.results}
    assert by["0.jpg"].status == "done"
    assert by["1.jpg"].status == "failed" and "No space left" in by["1.jpg"].reason
    assert out.exit_code == 1
    assert all(r.status == "failed" for n, r in by.items() if n != "0.jpg")
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != batch.LOCK_NAME) == ["0.jpg"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 16, 16)
    (tmp_path / "o").mkdir()
    stale = tmp_path / "o" / f".a.jpg.abc123{images.TMP_MARK}"
    stale.write_bytes(b"half")
    batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert not stale.exists() and (tmp_path / "o/a.jpg").is_file()


def test_alpha_is_upscaled_not_lost_and_16bit_stays_16bit(tmp_path, tiny_model):
    rgba = np.dstack([np.full((8, 10, 3), 90, np.uint8), np.full((8, 10), 200, np.uint8)])
    (tmp_path / "s").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "s/a.png")
    write_dng(tmp_path / "s/r.dng")  # LibRaw refuses frames much smaller than this
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert out.exit_code == 0
    a = images.read_photo(tmp_path / "o/a.png")
    assert a.size == (20, 16) and a.alpha is not None and np.all(a.alpha == 200)
    r = images.read_photo(tmp_path / "o/r.tif")
    assert r.bits == 16 and r.size == (96, 64)


def test_same_input_and_options_give_the_same_bytes(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg", 12, 16)
    write_dng(tmp_path / "s/r.dng")
    s = Settings(model=str(tiny_model), tile=16, overlap=4)  # blended tiles
    batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o1", settings=s)
    batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o2", settings=s)
    for name in ("a.jpg", "r.tif"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()


def test_untrained_model_is_announced(tmp_path, tiny_model):
    from srpie_cli.model import DeepSRPIE, SRPIEConfig
    from srpie_cli.weights import save_weights

    save_weights(tmp_path / "u.pt", DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)), {"untrained": True})
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    said = []

    class L(batch.Listener):
        def warn(self, message):
            said.append(message)

    batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tmp_path / "u.pt"), half=True), listener=L())
    assert any("UNTRAINED" in m for m in said)
    assert any("--half" in m for m in said)  # float16 on the CPU: ignored, with a warning


def test_defaults_follow_the_tiling_module():
    import inspect

    from srpie_cli import tiling
    from srpie_cli.cli import enhance

    # no tile named: the device's default (192 px on a CPU, 384 on CUDA)
    assert Settings().tile is None and Settings().overlap == tiling.DEFAULT_OVERLAP
    params = inspect.signature(enhance).parameters
    assert (params["tile"].default, params["overlap"].default) == (None, tiling.DEFAULT_OVERLAP)
    said = []
    enhancer = inference.load(Settings(device="cpu", precision="float32"), said.append)
    assert enhancer.settings.tile == tiling.default_tile(enhancer.device) == tiling.CPU_TILE
    # bfloat16 halves the bytes of a feature map: larger tiles still fit the cache
    enhancer = inference.load(Settings(device="cpu", precision="bfloat16"), said.append)
    bf16 = enhancer.settings.precision == "bfloat16"  # float32 where the CPU lacks it
    assert enhancer.settings.tile == (defaults.CPU_TILE_BF16 if bf16 else defaults.CPU_TILE)


def test_compile_is_chosen_by_the_size_of_the_run(tmp_path, tiny_model):
    said = []
    small = inference.load(Settings(model=str(tiny_model), device="cpu"), said.append, megapixels=0.5).model
    big = inference.load(Settings(model=str(tiny_model), device="cpu"), said.append, megapixels=50.0).model
    off = inference.load(Settings(model=str(tiny_model), device="cpu", compile="off"), said.append, 50.0).model
    assert not small.compiled and not off.compiled
    assert big.compiled or any("not compiling" in m for m in said)  # no C++ compiler: said so
    write_jpeg(tmp_path / "a.jpg", 40, 50)
    jobs = [batch.Job(tmp_path / "a.jpg", tmp_path / "o.jpg", "jpeg")] * 3
    assert batch.estimate_megapixels(jobs) == pytest.approx(3 * 40 * 50 / 1e6)


def test_planned_under_the_lock_so_a_run_that_just_finished_is_not_redone(tmp_path, tiny_model, monkeypatch):
    write_jpeg(tmp_path / "s/a.jpg", 8, 8)
    write_jpeg(tmp_path / "s/b.jpg", 8, 8, seed=1)
    real_enter = batch.OutputLock.__enter__

    def enter(self):  # the other run wrote a.jpg while this one waited to start
        (tmp_path / "o/a.jpg").write_bytes(b"written by the other run")
        return real_enter(self)

    monkeypatch.setattr(batch.OutputLock, "__enter__", enter)
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    by = {Path(r.input).name: r.status for r in out.results}
    assert by == {"a.jpg": "skipped", "b.jpg": "done"}
    assert (tmp_path / "o/a.jpg").read_bytes() == b"written by the other run"


def test_a_file_that_trips_a_decoder_or_an_encoder_fails_alone(tmp_path, tiny_model, monkeypatch):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_jpeg(tmp_path / "s" / name, 8, 8)
    real_read, real_write = images._read_pillow, images._write_pillow

    def read(path, *a):
        if path.name == "a.jpg":
            raise KeyError("a tag the decoder did not expect")
        return real_read(path, *a)

    def write(f, photo, *a):
        if photo.exif["0th"].get(piexif.ImageIFD.Make) == b"odd":
            raise TypeError("odd metadata")
        return real_write(f, photo, *a)

    monkeypatch.setattr(images, "_read_pillow", read)
    monkeypatch.setattr(images, "_write_pillow", write)
    real_photo = images.read_photo
    monkeypatch.setattr(images, "read_photo", lambda p, *a: _odd(real_photo(p, *a)) if p.name == "b.jpg" else real_photo(p, *a))
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    by = {Path(r.input).name: r for r in out.results}
    assert by["a.jpg"].status == "failed" and "KeyError" in by["a.jpg"].reason
    assert by["b.jpg"].status == "failed" and "TypeError: odd metadata" in by["b.jpg"].reason
    assert by["c.jpg"].status == "done" and out.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["c.jpg"]  # no lock file left


def _odd(photo):
    photo.exif["0th"][piexif.ImageIFD.Make] = b"odd"
    return photo


def test_decode_of_the_next_and_encode_of_the_previous_overlap_with_inference(tmp_path, tiny_model, monkeypatch):
    """Enhancing photo i waits for the decode of photo i+1 to start, and the encode of photo
    i-1 waits for enhancing photo i to start: run one after the other, the events are never
    set and the waits report False (after a generous timeout; nothing here measures time)."""
    import threading

    n = 3
    decoding = [threading.Event() for _ in range(n)]
    enhancing = [threading.Event() for _ in range(n)]
    next_decoded, next_enhanced = [], []
    for i in range(n):
        write_jpeg(tmp_path / f"s/{i}.jpg", 8, 8, seed=i)
    real_read, real_write, real_enhance = images.read_photo, images.write_photo, inference.enhance_photo

    def read(path, *a):
        decoding[int(path.stem)].set()
        return real_read(path, *a)

    def write(path, *a, **kw):
        i = int(path.stem)
        if i + 1 < n:
            next_enhanced.append(enhancing[i + 1].wait(WAIT))
        return real_write(path, *a, **kw)

    def enhance_photo(model, photo, settings, **kw):
        i = len(next_decoded)
        enhancing[i].set()
        if i + 1 < n:
            next_decoded.append(decoding[i + 1].wait(WAIT))
        return real_enhance(model, photo, settings, **kw)

    monkeypatch.setattr(images, "read_photo", read)
    monkeypatch.setattr(images, "write_photo", write)
    monkeypatch.setattr(inference, "enhance_photo", enhance_photo)
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert out.count("done") == n
    assert next_decoded == [True] * (n - 1) and next_enhanced == [True] * (n - 1)


WAIT = 30  # seconds: only reached when the overlap is missing


def test_results_are_reported_in_the_order_of_the_photos_while_writes_lag(tmp_path, tiny_model, monkeypatch):
    """0.jpg's write is still going when 1.jpg fails to decode (it waits for 2.jpg to be
    enhanced): the report and the log still list 0, 1, 2, whatever the threads' timing."""
    import threading

    for i in range(3):
        write_jpeg(tmp_path / f"s/{i}.jpg", 8, 8, seed=i)
    third = threading.Event()
    real_read, real_write, real_enhance = images._read_pillow, images.write_photo, inference.enhance_photo
    waited = []

    def read(path, *a):
        if path.name == "1.jpg":
            raise KeyError("a tag the decoder did not expect")
        return real_read(path, *a)

    def write(path, *a, **kw):
        if path.name == "0.jpg":
            waited.append(third.wait(WAIT))
        return real_write(path, *a, **kw)

    calls, heard = [], []

    def enhance_photo(model, photo, settings, **kw):
        calls.append(photo)
        if len(calls) == 2:  # 2.jpg, the photo after the one that failed
            third.set()
        return real_enhance(model, photo, settings, **kw)

    class Ear(batch.Listener):
        def file_done(self, result):
            heard.append(Path(result.input).name)

    monkeypatch.setattr(images, "_read_pillow", read)
    monkeypatch.setattr(images, "write_photo", write)
    monkeypatch.setattr(inference, "enhance_photo", enhance_photo)
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", listener=Ear(),
                        settings=Settings(model=str(tiny_model), io_threads=2))  # 2.jpg decodes beside 0.jpg's write
    assert waited == [True] and len(calls) == 2
    assert [(Path(r.input).name, r.status) for r in out.results] == [("0.jpg", "done"), ("1.jpg", "failed"), ("2.jpg", "done")]
    assert heard == ["0.jpg", "1.jpg", "2.jpg"]


def tint_model():
    """A stand-in network that upscales 2x and casts the photo warm: what a look could do."""
    import torch
    import torch.nn.functional as F

    class Tint(torch.nn.Module):
        scale = 2

        def __init__(self):
            super().__init__()
            self.cast = torch.nn.Parameter(torch.tensor([0.08, 0.0, -0.05]).view(1, 3, 1, 1))

        def forward(self, x, *context):
            return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) + self.cast

    return Tint().eval()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_black_and_white_photo_comes_back_neutral_and_a_colour_one_keeps_its_colour(dtype):
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(0)
    grey = (rng.random((24, 32)) * top).astype(dtype)
    mono = np.repeat(grey[..., None], 3, axis=2)
    mono[..., 2] = np.clip(mono[..., 2].astype(np.int64) + (top // 255), 0, top)  # a grey JPEG's rounding
    settings = Settings(tile=0)
    out = inference.enhance_photo(tint_model(), images.Photo(pixels=mono), settings).pixels
    assert out.shape == (48, 64, 3) and out.dtype == dtype
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert abs(float(out.mean()) - float(mono.mean())) < 0.03 * top  # the luma is the network's
    colour = mono.copy()
    colour[3, 5, 0] = top  # one red pixel, off the sampled grid, makes it a colour photo
    out = inference.enhance_photo(tint_model(), images.Photo(pixels=colour), settings).pixels.astype(np.float64)
    assert out[..., 0].mean() - out[..., 2].mean() > 0.1 * top  # the cast is the model's to make


def test_is_monochrome_checks_every_pixel_not_only_the_sample():
    grey = np.full((50, 70, 3), 120, np.uint8)
    assert images.is_monochrome(grey)
    grey[3, 5] = (200, 120, 120)  # off the 7-pixel sampling grid
    assert not images.is_monochrome(grey)
    assert images.is_monochrome(np.full((8, 8, 3), 0.5, np.float32))
    assert not images.is_monochrome(np.zeros((8, 8), np.uint8))  # not an RGB array at all
    assert not images.is_monochrome(np.full((8, 8, 3), 20, np.uint8))  # too dark to tell: left to the model


def test_a_photo_not_started_when_the_disk_filled_is_tried_again_next_run(tmp_path, tiny_model, monkeypatch):
    """The disk fills at 0.jpg's write while 1.jpg, decoded ahead, has failed to decode: it
    is reported "not started", and the next run tries it again rather than skip it as a
    file that failed before (its decode failure came after the batch had stopped)."""
    for i in range(3):
        write_jpeg(tmp_path / f"s/{i}.jpg", 8, 8, seed=i)
    real_read = images._read_pillow
    with monkeypatch.context() as m:
        disk_full_after(m, writes=0)
        m.setattr(images, "_read_pillow",
                  lambda path, *a: (_ for _ in ()).throw(KeyError("odd tag")) if path.name == "1.jpg" else real_read(path, *a))
        drain = batch._Runner.drain
        m.setattr(batch._Runner, "drain", lambda self, hold=None: drain(self, hold=0))  # every write settled at once
        first = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    by = {Path(r.input).name: r for r in first.results}
    assert "No space left" in by["0.jpg"].reason
    assert by["1.jpg"].status == "failed" and by["1.jpg"].reason.startswith("not started")
    again = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert {Path(r.input).name: r.status for r in again.results} == {"0.jpg": "done", "1.jpg": "done", "2.jpg": "done"}


def test_a_run_into_a_folder_inside_another_runs_output_is_busy_either_way(tmp_path):
    """-o out/shoot/day1 while a run works on out/shoot (or the other way round) would clean
    away each other's temporary files; runs into sibling folders do not touch each other."""
    for d in ("out/shoot/day1", "out/shoot/day2"):
        (tmp_path / d).mkdir(parents=True)
    with batch.OutputLock([tmp_path / "out/shoot"]):
        with pytest.raises(UsageError, match="another srpie run"):
            batch.OutputLock([tmp_path / "out/shoot/day1"]).__enter__()
    with batch.OutputLock([tmp_path / "out/shoot/day1"]):
        with pytest.raises(UsageError, match="another srpie run"):
            batch.OutputLock([tmp_path / "out/shoot"]).__enter__()
        with batch.OutputLock([tmp_path / "out/shoot/day2"]):  # a sibling
            pass
    with batch.OutputLock([tmp_path / "out/shoot"]):  # every lock was released
        pass


def test_whatever_is_in_the_way_and_not_an_output_is_never_replaced(tmp_path):
    """An empty file, a dangling link or a folder where an output would go was not written
    by srpie (its outputs appear whole): refused, with or without --overwrite, and left."""
    for name in ("a", "b", "c"):
        write_jpeg(tmp_path / f"s/{name}.jpg")
    (tmp_path / "o/c.jpg").mkdir(parents=True)
    (tmp_path / "o/a.jpg").write_bytes(b"")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "o/b.jpg")
    for overwrite in (False, True):
        p = batch.plan([tmp_path / "s"], output=tmp_path / "o", overwrite=overwrite)
        assert p.jobs == []
        assert {Path(r.input).name: r.status for r in p.results} == {"a.jpg": "failed", "b.jpg": "failed", "c.jpg": "failed"}
        assert all("not written by srpie" in r.reason for r in p.results)
    assert (tmp_path / "o/a.jpg").read_bytes() == b"" and os.readlink(tmp_path / "o/b.jpg") == str(tmp_path / "nowhere.jpg")


def test_a_photo_given_twice_is_done_once_and_named(tmp_path, tiny_model):
    """A folder given twice, or a photo and its folder, whose outputs are the same file: done
    once, the repeat named as skipped, never failed against itself."""
    write_jpeg(tmp_path / "s/a.jpg")
    write_jpeg(tmp_path / "s/sub/b.jpg", seed=1)
    out = batch.enhance(inputs=[tmp_path / "s", tmp_path / "s"], output=tmp_path / "o",
                        settings=Settings(model=str(tiny_model)))
    assert out.exit_code == 0 and out.count("done") == 2 and out.count("skipped") == 2
    assert all("given twice" in r.reason for r in out.results if r.status == "skipped")
    out = batch.enhance(inputs=[tmp_path / "s/a.jpg", tmp_path / "s"], settings=Settings(model=str(tiny_model)))
    assert out.exit_code == 0 and out.count("done") == 2 and out.count("skipped") == 1


def test_a_linked_photo_with_an_output_of_its_own_is_still_delivered(tmp_path, tiny_model):
    write_jpeg(tmp_path / "s/a.jpg")
    (tmp_path / "s/picks").mkdir()
    os.symlink("../a.jpg", tmp_path / "s/picks/a.jpg")
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert sorted(str(Path(r.output).relative_to(tmp_path / "o")) for r in out.results if r.status == "done") == \
        ["a.jpg", "picks/a.jpg"]


def test_a_failure_of_this_runs_settings_is_not_remembered(tmp_path, tiny_model):
    """A PNG with alpha refused as JPEG, or a photo above --max-megapixels, is done by the
    next run with the settings its message asks for, without --retry-failed."""
    Image.new("RGBA", (16, 16), (200, 30, 30, 128)).save(tmp_path / "s.png")
    write_jpeg(tmp_path / "big.jpg", 16, 16)
    model = str(tiny_model)
    first = batch.enhance(inputs=[tmp_path / "s.png"], output=tmp_path / "o", fmt="jpeg", settings=Settings(model=model))
    assert first.results[0].status == "failed" and "alpha" in first.results[0].reason
    assert batch.enhance(inputs=[tmp_path / "s.png"], output=tmp_path / "o", fmt="png",
                         settings=Settings(model=model)).results[0].status == "done"
    first = batch.enhance(inputs=[tmp_path / "big.jpg"], output=tmp_path / "o",
                          settings=Settings(model=model, max_megapixels=0.0001))
    assert first.results[0].status == "failed" and "max-megapixels" in first.results[0].reason
    assert batch.enhance(inputs=[tmp_path / "big.jpg"], output=tmp_path / "o",
                         settings=Settings(model=model)).results[0].status == "done"


def test_a_file_still_being_copied_when_it_failed_is_tried_again_once_whole(tmp_path, tiny_model, monkeypatch):
    """The failure is remembered with the file as it was read: a copy that finished during
    the run is a changed file, done by the next run."""
    write_jpeg(tmp_path / "whole.jpg", 16, 16)
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "s").mkdir()
    (tmp_path / "s/a.jpg").write_bytes(whole[: len(whole) // 3])
    real = images.read_photo

    def read_then_copy_ends(path, *a):
        try:
            return real(path, *a)
        finally:
            path.write_bytes(whole)

    with monkeypatch.context() as m:
        m.setattr(images, "read_photo", read_then_copy_ends)
        first = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert first.results[0].status == "failed"
    again = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)))
    assert again.results[0].status == "done"
    # a file that stays as it was is remembered, as before
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2/b.jpg").write_bytes(whole[: len(whole) // 3])
    for _ in range(2):
        last = batch.enhance(inputs=[tmp_path / "s2"], output=tmp_path / "o2", settings=Settings(model=str(tiny_model)))
    assert last.results[0].reason.startswith(batch.FAILED_BEFORE)


def test_a_failure_is_remembered_through_a_linked_folder_and_nested_inputs(tmp_path, tiny_model):
    """A bad file in a folder the shoot links to, or in a folder given beside its parent,
    is listed as failed before on the next run, not read again every run."""
    (tmp_path / "card").mkdir()
    (tmp_path / "card/bad.jpg").write_bytes(b"not a photo")
    (tmp_path / "s/day1").mkdir(parents=True)
    (tmp_path / "s/day1/bad1.jpg").write_bytes(b"not a photo either")
    os.symlink(tmp_path / "card", tmp_path / "s/day2")
    for _ in range(2):
        out = batch.enhance(inputs=[tmp_path / "s", tmp_path / "s/day1", tmp_path / "s"], output=tmp_path / "o",
                            settings=Settings(model=str(tiny_model)))
    failed = {Path(r.input).name: r.reason for r in out.results if r.status == "failed"}
    assert set(failed) == {"bad.jpg", "bad1.jpg"}
    assert all(reason.startswith(batch.FAILED_BEFORE) for reason in failed.values())


def test_a_photo_refused_for_its_size_or_for_memory_is_never_remembered(tmp_path, monkeypatch):
    """Whatever reader refuses it (tifffile failing over to Pillow too), a photo above
    --max-megapixels, or one the machine had no memory for, is a Refused, not the file's own."""
    import tifffile

    from srpie_cli import Refused

    Image.new("RGB", (200, 100)).save(tmp_path / "a.tif", compression="tiff_lzw")
    with pytest.raises(Refused) as e:
        images.read_photo(tmp_path / "a.tif", 0.01)
    assert not batch.remembered(e.value)

    def odd(*a, **kw):
        raise ValueError("odd header")

    monkeypatch.setattr(tifffile, "TiffFile", odd)  # the Pillow fallback
    with pytest.raises(Refused):
        images.read_photo(tmp_path / "a.tif", 0.01)

    def no_memory(path, *a):
        raise MemoryError

    monkeypatch.setattr(images, "_read_pillow", no_memory)
    write_jpeg(tmp_path / "b.jpg")
    with pytest.raises(Refused, match="not enough memory") as e:
        images.read_photo(tmp_path / "b.jpg")
    assert not batch.remembered(e.value)
