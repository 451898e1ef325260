"""--ray: the batch's per-photo work on Ray actors (srpie_cli/cluster.py), on a local Ray
instance of two one-CPU actors. Skipped where Ray is not installed (``pip install
"srpie[ray]"``); slow: Ray takes seconds to start and each actor imports torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srpie_cli import batch, images
from srpie_cli.inference import Settings
from tests.conftest import digest, write_jpeg
from tests.test_pool import KillOne, add_pairs, table

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module: two CPUs, a small object store, no dashboard."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, logging_level="WARNING",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def two_actors():
    from srpie_cli.cluster import actors

    return actors(count=2, cpus=1)


def test_ray_makes_what_a_local_run_makes(local_ray, tmp_path, tiny_model, shoot):
    """Byte for byte, file by file; a corrupt file fails alone; the report names a Ray node
    for every photo done; a rerun writes nothing."""
    add_pairs(shoot)
    settings = Settings(model=str(tiny_model), threads=1)
    local = batch.enhance(inputs=[shoot], output=tmp_path / "a", settings=settings)
    on_ray = batch.enhance(inputs=[shoot], output=tmp_path / "b", settings=settings, pool=two_actors(),
                           report=tmp_path / "run.json")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert table(on_ray, tmp_path / "b") == table(local, tmp_path / "a")
    assert on_ray.exit_code == 1 and on_ray.count("done") == local.count("done") >= 6
    doc = json.loads((tmp_path / "run.json").read_text())
    assert sum(doc["summary"].values()) == len(doc["files"]) == len(local.results)
    done = [f for f in doc["files"] if f["status"] == "done"]
    assert all(f["worker"]["node"] and f["worker"]["host"] and f["timings"]["enhance"] >= 0 for f in done)
    again = batch.enhance(inputs=[shoot], output=tmp_path / "b", settings=settings, pool=two_actors())
    assert digest(tmp_path / "b") == digest(tmp_path / "a") and again.count("done") == 0


def test_an_actor_killed_mid_run_costs_nothing(local_ray, tmp_path, tiny_model):
    """SIGKILL the process of the actor that delivered the first photo: Ray restarts it and
    runs its tasks again; every photo is delivered once, no temporary file stays."""
    for i in range(10):
        write_jpeg(tmp_path / "s" / f"IMG_{i:04d}.jpg", 48, 64, seed=i)
    settings = Settings(model=str(tiny_model), threads=1)

    killer = KillOne()
    out = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=settings, pool=two_actors(),
                        listener=killer)
    assert killer.killed
    assert sorted(Path(r.input).name for r in out.results if r.status == "done") == [f"IMG_{i:04d}.jpg" for i in range(10)]
    assert len(out.results) == 10
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"IMG_{i:04d}.jpg" for i in range(10)]
    assert not [p for p in (tmp_path / "o").rglob("*") if images.TMP_MARK in p.name]


def test_an_interrupt_stops_the_actors_and_a_rerun_does_the_rest(local_ray, tmp_path, tiny_model):
    for i in range(8):
        write_jpeg(tmp_path / "s" / f"IMG_{i:04d}.jpg", 48, 64, seed=i)
    settings = Settings(model=str(tiny_model), threads=1)

    class StopAfterOne(batch.Listener):
        def file_done(self, result):
            if result.status == "done":
                raise KeyboardInterrupt

    with pytest.raises(batch.Interrupted):
        batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=settings, pool=two_actors(),
                      listener=StopAfterOne(), report=tmp_path / "run.json")
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["interrupted"] == "SIGINT" and doc["summary"]["done"] >= 1 and sum(doc["summary"].values()) == 8
    assert not [p for p in (tmp_path / "o").rglob("*") if images.TMP_MARK in p.name]
    rest = batch.enhance(inputs=[tmp_path / "s"], output=tmp_path / "o", settings=settings, pool=two_actors())
    assert rest.count("done") + rest.count("skipped") == 8 and rest.count("skipped") >= 1
    assert len(list((tmp_path / "o").iterdir())) == 8


def test_two_nodes_on_one_machine(tmp_path):
    """benchmarks/ray_two_nodes.py: a head and a second raylet (their own temporary
    folders, one CPU and a resource each), a shoot across both: every photo done, both
    nodes in the report, outputs byte for byte a local run's, both nodes stopped."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/ray_two_nodes.py"), "--photos", "6", "--port", "6397"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    assert doc["nodes"] == 2 and doc["done"] == 6 and doc["byte_identical"]
    assert "stopped" in r.stderr
