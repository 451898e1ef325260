"""--jobs N: the batch's per-photo work in a pool of worker processes (srpie_cli/pool.py).

A pool's outputs, report, failure memory and RAW+JPEG fallback are a local run's: the
driver (``pool.drive``) is tested here through an in-process pool (``Inline``, fast), and
once through real worker processes (slow: each spawns and imports torch).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections import deque
from functools import partial
from pathlib import Path

import pytest

from srpie_cli import batch, images, pool
from srpie_cli.inference import Settings
from tests.conftest import digest, write_jpeg


class Inline:
    """A pool of one worker in this process: ``pool.work`` on a real model, no processes.
    ``die`` names inputs whose worker "dies" (a lost result) the first time they are tried."""

    def __init__(self, settings, megapixels, die=()):
        self.enhancer, self.hello = pool.start(settings, megapixels)
        self.description = "inline"
        self.queue: deque = deque()
        self.die = {str(d) for d in die}
        self.closed = None

    def free(self):
        return 1 - len(self.queue)

    def submit(self, task):
        self.queue.append(task)
        return task

    def wait(self):
        task = self.queue.popleft()
        if str(task[0]) in self.die:
            self.die.discard(str(task[0]))
            return [(task, pool.lost("the worker process died"))]
        return [(task, pool.work(self.enhancer, task))]

    def close(self, kill=False):
        self.closed = "killed" if kill else "closed"


def add_pairs(shoot: Path) -> None:
    """A RAW+JPEG pair whose RAW cannot be decoded (its JPEG stands in), and one whose
    files both fail."""
    (shoot / "raw/IMG_0200.dng").write_bytes(b"II*\0 not really a raw")
    write_jpeg(shoot / "raw/IMG_0200.JPG", 24, 32, seed=7)
    (shoot / "raw/IMG_0300.dng").write_bytes(b"II*\0 broken")
    (shoot / "raw/IMG_0300.JPG").write_bytes(b"\xff\xd8 broken")


def table(outcome, out: Path) -> list[tuple]:
    """What a report says of each file, with the output folder's name taken out, by input
    (a local run reports in the order its pipeline settles, a pool in plan order)."""
    def rel(s):
        return s.replace(str(out), "OUT") if s else s
    return sorted((r.input, r.status, rel(r.output), rel(r.reason), r.notes) for r in outcome.results)


def test_work_says_where_a_photo_failed(tmp_path, tiny_model, shoot, one_thread):
    enhancer, hello = pool.start(Settings(model=str(tiny_model)), 0.0)
    assert hello["meta"]["name"] == "tiny" and hello["device"] == "cpu" and hello["worker"]["pid"] == os.getpid()
    (tmp_path / "o").mkdir()
    good = pool.work(enhancer, (shoot / "day1/IMG_0002.JPG", tmp_path / "o/a.jpg", "jpeg"))
    assert good["ok"] and good["megapixels"] > 0 and set(good["timings"]) == {"decode", "enhance", "encode"}
    bad = pool.work(enhancer, (shoot / "bad/not a photo.jpg", tmp_path / "o/b.jpg", "jpeg"))
    assert not bad["ok"] and bad["stage"] == "decode" and bad["content"] and bad["reason"]
    unwritable = pool.work(enhancer, (shoot / "day1/IMG_0002.JPG", tmp_path / "missing/c.jpg", "jpeg"))
    assert unwritable["stage"] == "encode" and unwritable["reason"].startswith("cannot write ")
    assert not unwritable["content"] and unwritable["errno"] is not None
    json.dumps([good, bad, unwritable])  # plain data: it crosses processes and machines


def test_a_pool_makes_what_a_local_run_makes(tmp_path, tiny_model, shoot, one_thread):
    """Outputs byte for byte, the report file by file (order, reasons, notes), the RAW+JPEG
    fallback both ways, the failure memory, and a rerun that writes nothing."""
    add_pairs(shoot)
    settings = Settings(model=str(tiny_model), threads=1)
    local = batch.enhance(inputs=[shoot], output=tmp_path / "a", settings=settings)
    pooled = batch.enhance(inputs=[shoot], output=tmp_path / "b", settings=settings, pool=Inline)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert table(pooled, tmp_path / "b") == table(local, tmp_path / "a")
    assert pooled.exit_code == local.exit_code == 1
    reasons = {Path(r.input).name: r.reason for r in pooled.results}
    assert "IMG_0200.JPG, the other file of its RAW+JPEG pair, is enhanced instead" in reasons["IMG_0200.dng"]
    assert "failed too" in reasons["IMG_0300.dng"]
    again = batch.enhance(inputs=[shoot], output=tmp_path / "b", settings=settings, pool=Inline)
    assert digest(tmp_path / "b") == digest(tmp_path / "a")
    assert {r.status for r in again.results} <= {"skipped", "failed"}
    assert all("failed before" in r.reason for r in again.results if r.status == "failed" and "bad" in r.input)


def test_a_lost_worker_costs_one_retry_then_the_photo_fails(tmp_path, tiny_model, shoot, one_thread):
    src = shoot / "day1/IMG_0002.JPG"
    once = batch.enhance(inputs=[src], output=tmp_path / "a", settings=Settings(model=str(tiny_model)),
                         pool=partial(Inline, die=[src]))
    assert [r.status for r in once.results] == ["done"]

    class AlwaysDies(Inline):
        def wait(self):
            task = self.queue.popleft()
            return [(task, pool.lost("the worker process died"))]

    twice = batch.enhance(inputs=[src], output=tmp_path / "b", settings=Settings(model=str(tiny_model)),
                          pool=AlwaysDies)
    assert [(r.status, r.reason) for r in twice.results] == [("failed", "the worker process died")]
    assert not list((tmp_path / "b").iterdir())  # the folder made for it holds nothing


def test_a_full_disk_stops_the_pool(tmp_path, tiny_model, shoot, monkeypatch, one_thread):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images, "write_photo", full)
    out = batch.enhance(inputs=[shoot / "day1"], output=tmp_path / "o", settings=Settings(model=str(tiny_model)),
                        pool=Inline)
    reasons = [r.reason for r in out.results]
    assert "No space left on device" in reasons[0] and all("not started: the batch stopped (disk full)" in r
                                                            for r in reasons[1:])



class KillOne(batch.Listener):
    """SIGKILLs the worker of the first photo done: the pool must replace it."""

    killed = None

    def file_done(self, result):
        if result.status == "done" and self.killed is None:
            self.killed = result.worker["pid"]
            os.kill(self.killed, signal.SIGKILL)

@pytest.mark.slow
def test_jobs_2_in_worker_processes(tmp_path, tiny_model, shoot):
    """Two spawned workers: the local run's outputs and statuses, both workers named in the
    report, none left running; an interrupt kills them and leaves no partial file."""
    add_pairs(shoot)
    settings = Settings(model=str(tiny_model), threads=1)
    local = batch.enhance(inputs=[shoot], output=tmp_path / "a", settings=settings)
    jobs2 = partial(pool.Processes, jobs=2)
    pooled = batch.enhance(inputs=[shoot], output=tmp_path / "b", settings=settings, pool=jobs2,
                           report=tmp_path / "run.json")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert table(pooled, tmp_path / "b") == table(local, tmp_path / "a")
    doc = json.loads((tmp_path / "run.json").read_text())
    assert len({f["worker"]["pid"] for f in doc["files"] if f["status"] == "done"}) == 2
    assert not multiprocessing.active_children()

    killer = KillOne()
    survived = batch.enhance(inputs=[shoot], output=tmp_path / "k", settings=settings, pool=jobs2, listener=killer)
    assert killer.killed and digest(tmp_path / "k") == digest(tmp_path / "a")
    assert table(survived, tmp_path / "k") == table(local, tmp_path / "a")

    class StopAfterOne(batch.Listener):
        def file_done(self, result):
            if result.status == "done":
                raise KeyboardInterrupt

    with pytest.raises(batch.Interrupted):
        batch.enhance(inputs=[shoot], output=tmp_path / "c", settings=settings, pool=jobs2, listener=StopAfterOne(),
                      report=tmp_path / "c.json")
    assert not multiprocessing.active_children()
    assert not [p for p in (tmp_path / "c").rglob("*") if images.TMP_MARK in p.name]
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["summary"]["interrupted"] > 0 and doc["summary"]["done"] >= 1


def test_ray_without_ray_installed_says_how_to_get_it(tmp_path, monkeypatch, shoot):
    import sys

    from typer.testing import CliRunner

    from srpie_cli.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where it is not installed
    r = CliRunner().invoke(app, ["enhance", str(shoot), "-o", str(tmp_path / "o"), "--ray", "local"])
    assert r.exit_code == 2 and 'pip install "srpie[ray]"' in r.output


@pytest.mark.slow
def test_srpie_enhance_jobs_2(tmp_path, tiny_model, shoot):
    """The command line: --jobs 2 in the Advanced options, the local run's exit code (a bad
    file is status 1), every file in the report with the worker that made it."""
    from typer.testing import CliRunner

    from srpie_cli.cli import app

    r = CliRunner().invoke(app, ["enhance", str(shoot), "-o", str(tmp_path / "o"), "-m", str(tiny_model),
                                 "--threads", "1", "--jobs", "2", "--report", str(tmp_path / "run.json")])
    assert r.exit_code == 1, r.output
    assert "2 worker processes" in r.output
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["summary"]["done"] == 6 and doc["summary"]["failed"] == 4
    assert all(f["worker"]["pid"] for f in doc["files"] if f["status"] == "done")


def test_a_photo_that_fails_in_the_network_is_reported_as_a_local_run_reports_it(tmp_path, tiny_model, shoot,
                                                                                  monkeypatch, one_thread):
    from srpie_cli import inference

    def broken(*a, **k):
        raise RuntimeError("the network broke")

    monkeypatch.setattr(inference, "enhance_photo", broken)
    src = shoot / "day1/IMG_0002.JPG"
    settings = Settings(model=str(tiny_model))
    local = batch.enhance(inputs=[src], output=tmp_path / "a", settings=settings).results[0]
    pooled = batch.enhance(inputs=[src], output=tmp_path / "b", settings=settings, pool=Inline).results[0]
    assert (pooled.status, pooled.reason, pooled.megapixels, pooled.notes) == \
        (local.status, local.reason, local.megapixels, local.notes) == ("failed", "RuntimeError: the network broke",
                                                                         local.megapixels, local.notes)
    assert pooled.megapixels > 0 and set(pooled.timings) == set(local.timings) == {"decode"}


def test_a_pool_carries_each_photos_xmp_sidecar_as_a_local_run_does(tmp_path, tiny_model, one_thread):
    from tests.conftest import write_jpeg

    src = write_jpeg(tmp_path / "s/IMG_0007.jpg", 16, 16)
    (tmp_path / "s/IMG_0007.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4" xmp:Label="Red"/>'
        "</rdf:RDF></x:xmpmeta>")
    settings = Settings(model=str(tiny_model), threads=1)
    batch.enhance(inputs=[src.parent], output=tmp_path / "a", settings=settings)
    batch.enhance(inputs=[src.parent], output=tmp_path / "b", settings=settings, pool=Inline)
    for out in ("a", "b"):
        xmp = images.read_photo(tmp_path / out / "IMG_0007.jpg").xmp or b""
        assert b'Rating="4"' in xmp or b"<xmp:Rating>4<" in xmp, out
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
