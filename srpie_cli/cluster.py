"""``--ray``: the batch's per-photo work on the machines of a Ray cluster.

The driver (``srpie enhance`` where it is typed) lists and plans the photos as always and
holds the output lock; a pool of Ray actors, each with one loaded model (one GPU each on a
GPU cluster, a share of the CPUs otherwise), calls ``Enhancer.process`` through the same
worker protocol as ``--jobs`` (``pool.work``). Only names and results travel: the photos
must be on storage every node sees under the same path. Writes are atomic and idempotent,
so Ray's retries (an actor restarted after its process died, its tasks run again) never
leave a half-written or a doubled output.

Ray is an optional extra (``pip install "srpie[ray]"``); this module imports it only when
a run asks for it.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from srpie_cli import SrpieError
from srpie_cli.inference import Settings
from srpie_cli.pool import Result, Task, lost, start, work

INSTALL = 'Ray is not installed: pip install "srpie[ray]" (or pip install "ray>=2.9")'
CPUS_PER_ACTOR = 4  # a CPU actor's share: one process uses about 4 cores well on the network's thin convolutions
IN_FLIGHT = 2  # tasks queued on an actor: the next name is there when a photo is written
OBJECT_STORE = 200 << 20  # a local instance's object store: only names and results pass through it
RESTARTS = 3  # an actor whose process dies is started again this often; its queued tasks are retried


def actors(address: str | None = None, count: int | None = None, cpus: int | None = None) -> Callable:
    """``batch.enhance``'s ``pool`` for a Ray cluster: ``address`` None starts a local Ray
    instance on this machine, ``"auto"`` or ``"ray://host:port"`` joins a running cluster.
    ``count`` actors (default: one per GPU, else one per ``cpus`` CPUs; up to 4 a GPU share
    it), ``cpus`` CPUs each
    (default: 1 beside a GPU, else an equal share of the cluster's CPUs for ``count`` actors,
    else ``CPUS_PER_ACTOR``). A usage error without Ray."""
    from srpie_cli.batch import UsageError

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray: {INSTALL}") from None
    return functools.partial(Actors, address=address, count=count, cpus=cpus)


class Actor:
    """One model on one Ray worker: says hello, then does photos (``pool.work``)."""

    def __init__(self, settings: Settings, megapixels: float):
        import ray

        try:
            self.enhancer, self.greeting = start(settings, megapixels)
        except SrpieError as e:
            self.enhancer, self.greeting = None, {"error": str(e)}
        self.who = {**self.greeting.get("worker", {}), "node": ray.get_runtime_context().get_node_id()}

    def hello(self) -> dict:
        return {**self.greeting, "worker": self.who}

    def process(self, task: Task) -> Result:
        return {**work(self.enhancer, task), "worker": self.who}


class Actors:
    """A pool (``pool.Pool``) of Ray actors.

    Args:
        settings: the run's settings.
        megapixels: the run's size, for ``compile="auto"``.
        address: see ``actors``.
        count: the number of actors.
        cpus: CPUs for each actor.
    """

    def __init__(self, settings: Settings, megapixels: float, address: str | None = None,
                 count: int | None = None, cpus: int | None = None):
        import ray

        self.ray, self.owned = ray, not ray.is_initialized()
        if self.owned:
            _init(address)
        self.actors: list = []
        self.load: dict[Any, int] = {}  # actor -> tasks queued on it
        self.inflight: dict[Any, Any] = {}  # ObjectRef -> actor
        try:
            self._start(settings, megapixels, count, cpus)
        except BaseException:
            self.close(kill=True)
            raise

    def _start(self, settings: Settings, megapixels: float, count: int | None, cpus: int | None) -> None:
        ray = self.ray
        have = ray.cluster_resources()
        gpu = settings.device != "cpu" and have.get("GPU", 0) >= 1
        total_cpus = int(have.get("CPU", 1))
        per = cpus or (1 if gpu else max(1, total_cpus // count if count else min(CPUS_PER_ACTOR, total_cpus)))
        gpus = int(have.get("GPU", 0))
        n = count or (gpus if gpu else max(1, total_cpus // per))
        # more actors than GPUs share them (2 a GPU: one decodes and encodes while the other's network runs)
        a_gpu = -(-n // gpus) if gpu else 0
        share = 1 / a_gpu if gpu else 0
        if n * per > total_cpus or a_gpu > 4:
            room = min(total_cpus // per, 4 * gpus) if gpu else total_cpus // per
            raise SrpieError(f"--ray: the cluster has room for {room} actor(s) of {per} CPU(s)"
                             f"{' and up to 4 a GPU' if gpu else ''} now, not {n}: give fewer --jobs")
        if gpu and settings.device.startswith("cuda"):
            settings = replace(settings, device="cuda")  # an actor sees only its own GPU, as cuda:0
        if not settings.threads and not gpu:
            settings = replace(settings, threads=per)
        remote = ray.remote(Actor).options(num_cpus=per, num_gpus=share, max_restarts=RESTARTS,
                                           max_task_retries=RESTARTS)
        self.actors = [remote.remote(settings, megapixels) for _ in range(n)]
        self.load = {a: 0 for a in self.actors}
        hellos = ray.get([a.hello.remote() for a in self.actors])
        for h in hellos:
            if "error" in h:
                raise SrpieError(h["error"])
        self.hello = hellos[0]
        nodes = len({h["worker"]["node"] for h in hellos})
        self.description = (f"Ray: {n} actor(s) on {nodes} node(s), {self.hello['device']}"
                            f"{f', {share:g} GPU each' if gpu else f', {per} CPU(s) each'}")

    def free(self) -> int:
        return sum(IN_FLIGHT - k for k in self.load.values())

    def submit(self, task: Task) -> Any:
        actor = min(self.load, key=self.load.get)
        ref = actor.process.remote(task)
        self.load[actor] += 1
        self.inflight[ref] = actor
        return ref

    def wait(self) -> list[tuple[Any, Result]]:
        ray = self.ray
        with _signals_deferred() as pending:  # raised inside ray.wait, they would come out as SystemError
            ready: list = []
            while not ready and not pending:
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.25)
        if pending:
            _deliver(*pending[0])
        ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0) if len(self.inflight) > 1 \
            else (ready, None)
        out = []
        for ref in ready:
            actor = self.inflight.pop(ref)
            if actor in self.load:
                self.load[actor] -= 1
            try:
                out.append((ref, ray.get(ref)))
            except ray.exceptions.RayActorError as e:  # restarts spent: that actor is gone
                self.load.pop(actor, None)
                out.append((ref, lost(f"its Ray actor died ({str(e).splitlines()[0][:200]})")))
            except ray.exceptions.RayError as e:  # a bug in srpie, not the photo's doing: that photo fails
                out.append((ref, {**lost(f"the Ray task failed: {str(e).splitlines()[0][:200]}"), "stage": "error"}))
        if not self.load:
            raise SrpieError("--ray: every actor died; run again to do the rest")
        return out

    def close(self, kill: bool = False) -> None:
        """Actors killed (their queued tasks dropped, writes in flight cut short: the driver
        removes their temporary files), and a local Ray instance shut down."""
        ray = self.ray
        for ref in self.inflight:  # cancelled first: a killed actor's tasks would be announced as retried
            try:
                ray.cancel(ref)
            except Exception:
                pass
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        if self.inflight:  # wait until the killed actors' tasks have ended
            ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=30)
        self.actors, self.load, self.inflight = [], {}, {}
        if self.owned:
            ray.shutdown()


def _init(address: str | None) -> None:
    """Connect to (or start) Ray; the run's own SIGTERM handler is kept (``ray.init``
    installs its own, which would stop the driver without its report)."""
    import ray

    main = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main else None
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if address is None:
        kw.update(address="local", object_store_memory=OBJECT_STORE)
    else:
        kw["address"] = address
    try:
        ray.init(**kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SrpieError(f"--ray {address or ''}: cannot start or reach Ray ({str(e).splitlines()[0][:200]})") from None
    finally:
        if main and term is not None:
            signal.signal(signal.SIGTERM, term)


class _signals_deferred:
    """SIGINT and SIGTERM held while Ray's C code waits, delivered after (``_deliver``)."""

    def __enter__(self) -> list:
        self.pending: list = []
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, lambda signum, frame: self.pending.append((signum, self.saved)))
        return self.pending

    def __exit__(self, *exc) -> bool:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def _deliver(signum: int, saved: dict) -> None:
    """A signal held by ``_signals_deferred``, to the handler it would have reached."""
    handler = saved.get(signum)
    if callable(handler):
        handler(signum, None)
    elif handler != signal.SIG_IGN:
        signal.raise_signal(signum)
