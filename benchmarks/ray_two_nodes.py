"""A two-node Ray cluster on this one machine, and a shoot enhanced across both nodes.

    python benchmarks/ray_two_nodes.py                  # 8 small photos, tiny model
    python benchmarks/ray_two_nodes.py --photos 12 --megapixels 0.5 --model srpie-x2-fast

What a cluster of two machines does, played by two raylets with their own temporary
folders: a head (``ray start --head``) and a second node that joins it (``ray start
--address``), one CPU each and a resource of their own (``node_a``, ``node_b``), so the two
one-CPU actors of the run land one on each node. The driver (this script) plans the shoot
and holds the lock as ``srpie enhance --ray 127.0.0.1:PORT -j 2`` would. Printed: where each
photo was made (node id, host, pid), the seconds, and whether the outputs are byte for byte
those of a local run. Both nodes are stopped at the end, whatever happens: the processes
started under the two temporary folders, and only those (``ray stop`` would stop every
Ray on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.shoot import make_shoot  # noqa: E402
from srpie_cli import batch  # noqa: E402
from srpie_cli.inference import Settings  # noqa: E402

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this Python


def start_nodes(port: int, temp: list[Path]) -> None:
    """A head on 127.0.0.1:``port`` and a second node joining it, one CPU each."""
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    subprocess.run(RAY + ["start", "--head", "--port", str(port), "--temp-dir", str(temp[0]),
                          "--include-dashboard=false", "--resources", json.dumps({"node_a": 1})] + common,
                   check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(RAY + ["start", "--address", f"127.0.0.1:{port}", "--temp-dir", str(temp[1]),
                          "--resources", json.dumps({"node_b": 1})] + common,
                   check=True, env=env, stdout=subprocess.DEVNULL)


def stop_nodes(temp: list[Path]) -> int:
    """Stop the processes started under ``temp`` (by their ids): SIGTERM, then SIGKILL."""
    def ours() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    cmd = (d / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if any(str(t) in cmd for t in temp):
                    pids.append(int(d.name))
        return pids

    found = ours()
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while ours() and time.monotonic() < deadline:
            time.sleep(0.1)
    return len(found)


def tiny_model(folder: Path) -> Path:
    from srpie_cli.model import DeepSRPIE, SRPIEConfig
    from srpie_cli.weights import save_weights

    path = folder / "tiny.pt"
    save_weights(path, DeepSRPIE(SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)), {"name": "tiny"})
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--megapixels", type=float, default=0.02)
    ap.add_argument("--model", default=None, help="default: a tiny untrained network (seconds)")
    ap.add_argument("--port", type=int, default=6391)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the driver, like the nodes: a cluster on 127.0.0.1
    from srpie_cli.cluster import actors

    work = Path(tempfile.mkdtemp(prefix="srpie-2n-"))
    temp = [Path(tempfile.mkdtemp(prefix="srpie-ray-a-")), Path(tempfile.mkdtemp(prefix="srpie-ray-b-"))]
    try:
        model = args.model or str(tiny_model(work))
        make_shoot(work / "shoot", args.photos, args.megapixels)
        settings = Settings(model=model, threads=1, compile="off")
        local = batch.enhance(inputs=[work / "shoot"], output=work / "local", settings=settings)
        t = time.perf_counter()
        start_nodes(args.port, temp)
        started = time.perf_counter() - t
        t = time.perf_counter()
        outcome = batch.enhance(inputs=[work / "shoot"], output=work / "ray", settings=settings,
                                pool=actors(address=f"127.0.0.1:{args.port}", count=2, cpus=1))
        seconds = time.perf_counter() - t
        nodes = sorted({r.worker["node"] for r in outcome.results if r.worker})
        same = _digest(work / "local") == _digest(work / "ray")
        result = {"photos": args.photos, "done": outcome.count("done"), "local_done": local.count("done"),
                  "nodes": len(nodes), "photos_per_node": {n[:12]: sum(r.worker["node"] == n for r in outcome.results
                                                                   if r.worker) for n in nodes},
                  "byte_identical": same, "cluster_start_s": round(started, 1), "run_s": round(seconds, 1)}
        print(json.dumps(result, indent=1))
        return result
    finally:
        stopped = stop_nodes(temp)
        print(f"stopped {stopped} Ray process(es) of the two nodes", file=sys.stderr)
        for d in [work, *temp]:
            shutil.rmtree(d, ignore_errors=True)


def _digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


if __name__ == "__main__":
    r = main()
    sys.exit(0 if r["nodes"] == 2 and r["byte_identical"] and r["done"] == r["photos"] else 1)
