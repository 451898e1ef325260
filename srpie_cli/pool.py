"""The per-photo work of a batch done by a pool of workers, each with its own loaded model.

Two pools share this protocol: ``--jobs N`` (``Processes``: N worker processes on this
machine, each with a share of the cores) and ``--ray`` (``cluster.Actors``: Ray actors on
the machines of a cluster). A worker is started once with the run's settings, loads its
model (``inference.load``) and then takes tasks, ``(src, dst, fmt)``, one at a time:
``work`` calls ``Enhancer.process`` and turns what it returns or raises into a plain dict
(``Result``), the only thing that travels back. Pixels never leave the worker: inputs and
outputs are on storage every worker sees.

``drive`` is the driver's side, the same for every pool: it hands out the plan's jobs,
tries the other file of a RAW+JPEG pair when the chosen one cannot be decoded, stops on a
full disk, and turns each result into the ``FileResult`` a local run would have written
(same reason, same failure memory), so a pool's outputs and report are the local run's.
On an interrupt it kills the workers: their writes are atomic, and the temporary files of
writes cut short are removed (the run holds the output lock, so every temporary file in
its folders is its own).

Byte for byte: a worker's outputs are a local run's with the same ``--threads`` (each
worker's share). PyTorch's CPU kernels split their sums by thread, so a local run on all
cores and a worker on half of them can differ by one level in a few pixels (about 0.02 %
of the values measured with srpie-x2-fast), as two local runs with different ``--threads`` do.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from srpie_cli import SrpieError
from srpie_cli.inference import Enhancer, Settings, load

Task = tuple  # (src, dst, output format, XMP sidecar or None)
Result = dict[str, Any]  # what ``work`` returns; see there
DECODE, ENHANCE, ENCODE = "decode", "enhance", "encode"  # where a photo failed


class Staged(Enhancer):
    """An Enhancer that knows how far ``process`` got, so a failure is judged as the local
    run judges it: before the network (decode, the check of the output's metadata) it is the
    file's own, and the other file of a RAW+JPEG pair stands in; after it, the disk's.
    ``seen`` keeps what was known of the photo (size, decoder notes, timings) for the
    report of a photo that fails after its decode, as a local run reports it."""

    stage = DECODE
    read = False  # the photo was read: a failure before the network is the output check's

    def process(self, src: Path, dst: Path, fmt: str, side: Path | None = None):
        self.stage, self.seen, self.read = DECODE, {"megapixels": 0.0, "timings": {}, "notes": []}, False
        return super().process(src, dst, fmt, side)

    def check(self, dst: Path, photo, fmt: str) -> None:
        self.read = True
        super().check(dst, photo, fmt)

    def decode(self, src: Path):
        t = time.perf_counter()
        photo = super().decode(src)
        self.seen.update(megapixels=round(photo.megapixels, 3), notes=list(photo.notes))
        self.seen["timings"]["decode"] = round(time.perf_counter() - t, 3)
        return photo

    def enhance(self, photo, *args, **kw):
        self.stage, t = ENHANCE, time.perf_counter()
        out = super().enhance(photo, *args, **kw)
        self.stage = ENCODE
        self.seen["timings"]["enhance"] = round(time.perf_counter() - t, 3)
        return out


def start(settings: Settings, megapixels: float) -> tuple[Staged, dict]:
    """A worker's model, and its hello: the model's metadata, the device, the warnings of
    loading it and who the worker is (``identity``)."""
    warnings: list[str] = []
    e = load(settings, warnings.append, megapixels)
    hello = {"meta": e.meta, "device": str(e.device), "warnings": warnings, "worker": identity()}
    return Staged(e.model, e.meta, e.device, e.settings), hello


def identity() -> dict:
    """Who did a photo: the host and process (and, on Ray, the node: ``cluster.Actor``)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def work(enhancer: Staged, task: Task) -> Result:
    """One photo, start to end, as a plain dict: ``ok``; on failure ``stage`` (decode,
    enhance or encode), ``reason`` (as the local run words it), ``errno`` and ``content``
    (the file's own content failed it: remembered, not tried again while unchanged); always
    ``megapixels``, ``timings`` and ``notes`` (what is known of them) and ``worker``.
    Never raises for a photo: one bad photo fails that photo, never the pool."""
    from srpie_cli.batch import FILE_ERRORS, _reason, remembered

    src, dst, fmt = Path(task[0]), Path(task[1]), task[2]
    side = Path(task[3]) if len(task) > 3 and task[3] is not None else None
    res: Result = {"ok": False, "stage": None, "reason": None, "errno": None, "content": False,
                   "megapixels": 0.0, "timings": {}, "notes": [], "worker": identity()}
    try:
        done = enhancer.process(src, dst, fmt, side)
    except Exception as e:
        stage = enhancer.stage
        res.update(stage=stage, errno=getattr(e, "errno", None))
        res["reason"] = f"cannot write {dst}: {_reason(e, dst)}" if stage == ENCODE else _reason(e, src)
        res["content"] = stage == DECODE and not enhancer.read and isinstance(e, FILE_ERRORS) and remembered(e)
        if stage != DECODE:
            res.update(enhancer.seen)
        return res
    res.update(ok=True, megapixels=done.megapixels, timings=done.timings, notes=done.notes)
    return res


class Pool(Protocol):
    """What ``drive`` needs of a pool of workers."""

    hello: dict  # the first worker's hello (``start``)
    description: str  # for the progress line: "cpu, 2 worker processes"

    def free(self) -> int: ...  # tasks it can take now

    def submit(self, task: Task) -> Any: ...  # a key for the task

    def wait(self) -> list[tuple[Any, Result]]: ...  # at least one finished task

    def close(self, kill: bool = False) -> None: ...


# ----------------------------------------------------------------------------- --jobs

def threads_each(settings: Settings, workers: int) -> Settings:
    """Each worker's settings: ``--threads`` if given, else an equal share of the cores."""
    if settings.threads:
        return settings
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return replace(settings, threads=max(1, cores // workers))


def _serve(conn, settings: Settings, megapixels: float) -> None:
    """A worker process: load the model, say hello, then one task at a time until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the driver decides
    try:
        enhancer, hello = start(settings, megapixels)
    except SrpieError as e:
        conn.send({"error": str(e)})
        return
    conn.send(hello)
    while (task := conn.recv()) is not None:
        conn.send(work(enhancer, task))


class Processes:
    """``--jobs N``: N worker processes on this machine ("spawn": torch and threads do not
    fork safely), each with ``cores // N`` threads and its own model. A worker that dies
    (the kernel's out-of-memory killer) is replaced; its photo is tried once more.

    Args:
        settings: the run's settings.
        megapixels: the run's size, for ``compile="auto"`` (``inference.load``).
        jobs: the number of worker processes.
    """

    def __init__(self, settings: Settings, megapixels: float, jobs: int):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.settings, self.megapixels = threads_each(settings, jobs), megapixels
        self.workers: list[list] = []  # [process, connection, task in hand or None]
        try:
            for _ in range(jobs):
                self.workers.append(self._spawn())
            hellos = [self._hello(w) for w in self.workers]
        except BaseException:
            self.close(kill=True)
            raise
        self.hello = hellos[0]
        self.description = (f"{self.hello['device']}, {jobs} worker processes of "
                            f"{self.settings.threads} thread(s)")

    def _spawn(self) -> list:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_serve, args=(child, self.settings, self.megapixels), daemon=True,
                             name="srpie-worker")
        p.start()
        child.close()
        return [p, parent, None]

    @staticmethod
    def _hello(w: list) -> dict:
        try:
            hello = w[1].recv()
        except EOFError:
            raise SrpieError(f"a worker process could not start (exit code {w[0].exitcode})") from None
        if "error" in hello:
            raise SrpieError(hello["error"])
        return hello

    def free(self) -> int:
        return sum(w[2] is None for w in self.workers)

    def submit(self, task: Task) -> Any:
        i = next(i for i, w in enumerate(self.workers) if w[2] is None)
        try:
            self.workers[i][1].send(task)
        except OSError:  # it died between two photos: a new one takes the task
            self._replace(i)
            self.workers[i][1].send(task)
        self.workers[i][2] = task
        return task

    def _replace(self, i: int) -> None:
        p, conn, _ = self.workers[i]
        p.kill()
        p.join()
        conn.close()
        self.workers[i] = new = self._spawn()
        self._hello(new)

    def wait(self) -> list[tuple[Any, Result]]:
        from multiprocessing.connection import wait

        busy = [w for w in self.workers if w[2] is not None]
        ready = set(wait([w[1] for w in busy] + [w[0].sentinel for w in busy]))
        out = []
        for w in busy:
            task = w[2]
            if w[1] in ready:
                try:
                    out.append((task, w[1].recv()))
                    w[2] = None
                    continue
                except (EOFError, OSError):  # killed: the pipe ends, or is reset mid-message
                    pass
            if w[0].sentinel in ready or not w[0].is_alive():
                w[0].join()
                out.append((task, lost(f"the worker process died while working on it (exit code {w[0].exitcode}; "
                                       "out of memory?)")))
                self._replace(self.workers.index(w))
        return out

    def close(self, kill: bool = False) -> None:
        for p, conn, _ in self.workers:
            try:
                if kill:
                    p.kill()
                else:
                    conn.send(None)
            except (OSError, ValueError):
                pass
        for p, conn, _ in self.workers:
            p.join(timeout=None if kill else 30)
            if p.is_alive():
                p.kill()
                p.join()
            conn.close()
        self.workers = []


def lost(reason: str) -> Result:
    """The result of a task whose worker died: tried again once (``drive``), then failed."""
    return {"ok": False, "stage": "lost", "reason": reason, "errno": None, "content": False,
            "megapixels": 0.0, "timings": {}, "notes": [], "worker": None}


# ----------------------------------------------------------------------------- the driver

def run(jobs: Sequence, pool: Pool, listener, results: list, failed_decoding: dict) -> None:
    """``batch.run`` with a pool: its warnings and progress line, then ``drive``."""
    try:
        for w in pool.hello["warnings"]:
            listener.warn(w)
        listener.start(len(jobs) + sum(j.fallback is not None for j in jobs), pool.hello["meta"], pool.description)
    except BaseException:
        pool.close(kill=True)
        raise
    drive(jobs, pool, listener, results, failed_decoding)


@dataclass
class _Entry:
    """A task in the driver's hands: its job, and which file of it is tried."""

    index: int  # the job's place in the plan: results are reported in plan order
    job: Any  # batch.Job
    file: Any  # job itself or job.fallback
    tries: int = 0
    held: Any = None  # the chosen file's failure, waiting for its stand-in's outcome
    state: Any = None  # the file's size and time when handed out (batch.file_state)


def drive(jobs: Sequence, pool: Pool, listener, results: list, failed_decoding: dict) -> None:
    """Every job through ``pool``, each file's ``FileResult`` to ``listener`` and ``results``
    as a local run (``batch._Runner``) would make it; the results appended here end in plan
    order. The pool is closed at the end (killed on an interrupt)."""
    from srpie_cli.batch import FileResult

    d = _Driver(pool, listener, results, failed_decoding, FileResult)
    first = len(results)
    todo = deque(_Entry(i, job, job) for i, job in enumerate(jobs))
    try:
        d.go(todo)
    except BaseException:
        pool.close(kill=True)
        raise
    else:
        pool.close()
    finally:
        d.tidy()
    if d.stop:
        for e in todo:
            if e.held is not None:
                d.settle(e, e.held)
            for j in (e.file, e.file.fallback if e.file is e.job else None):
                if j is not None:
                    d.settle(e, FileResult(str(j.src), "failed", reason=f"not started: the batch stopped ({d.stop})"))
    order = {id(r): d.index_of.get(id(r), -1) for r in results[first:]}
    results[first:] = sorted(results[first:], key=lambda r: order[id(r)])


class _Driver:
    def __init__(self, pool: Pool, listener, results: list, failed_decoding: dict, file_result: Callable):
        self.pool, self.listener, self.results, self.failed_decoding = pool, listener, results, failed_decoding
        self.FileResult = file_result
        self.stop: str | None = None
        self.inflight: dict[Any, _Entry] = {}
        self.prepared: set[Path] = set()
        self.created: list[Path] = []  # folders this run made: removed again if nothing was written there
        self.index_of: dict[int, int] = {}

    def settle(self, e: _Entry, res) -> None:
        self.index_of[id(res)] = e.index
        self.results.append(res)
        self.listener.file_done(res)

    def go(self, todo: deque) -> None:
        from srpie_cli.batch import file_state

        while todo or self.inflight:
            while todo and self.stop is None and self.pool.free():
                e = todo.popleft()
                self.prepare(e.file.dst.parent)
                e.tries += 1
                e.state = file_state(e.file.src)
                self.inflight[self.pool.submit((e.file.src, e.file.dst, e.file.fmt, getattr(e.file, "sidecar", None)))] = e
            if not self.inflight:
                break
            for key, r in self.pool.wait():
                self.finish(self.inflight.pop(key), r, todo)

    def prepare(self, folder: Path) -> None:
        """An output folder made and its stale temporary files removed before the first
        task that writes there is handed out (no write of this run is in it yet)."""
        from srpie_cli.batch import remove_stale_temporaries

        if folder in self.prepared:
            return
        missing = [f for f in (folder, *folder.parents) if not f.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self.created += missing
        remove_stale_temporaries(folder)
        self.prepared.add(folder)

    def tidy(self) -> None:
        """After the workers: temporary files of writes cut short removed, folders made for
        photos that all failed removed again (a local run makes a folder only to write)."""
        from srpie_cli.batch import remove_stale_temporaries

        for folder in self.prepared:
            remove_stale_temporaries(folder)
        for folder in self.created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass

    def finish(self, e: _Entry, r: Result, todo: deque) -> None:
        """One task's result: settled as the local run would, or the task tried again."""
        FileResult, j = self.FileResult, e.file
        if r["stage"] == "lost" and e.tries < 2:
            todo.appendleft(e)  # its worker died: once more, on another worker
            return
        res = FileResult(str(j.src), "failed", megapixels=r["megapixels"], timings=r["timings"], notes=r["notes"],
                         reason=r["reason"])
        if r["worker"] is not None:
            res.worker = r["worker"]
        if r["ok"]:
            res.status, res.output, res.reason = "done", str(j.dst), None
        elif r["stage"] == ENCODE and r["errno"] in (errno.ENOSPC, errno.EDQUOT):
            self.stop = "disk full"
        if r["content"]:
            self.failed_decoding[str(j.src)] = e.state
        if j is e.job and j.fallback is not None:
            if not r["ok"] and r["stage"] == DECODE:  # the other file of the pair stands in
                res.timings, res.megapixels = {}, 0.0
                todo.appendleft(_Entry(e.index, e.job, j.fallback, held=res))
                return
            self.settle(e, FileResult(str(j.fallback.src), "skipped", reason="RAW+JPEG pair: the other file "
                                      f"({j.src.name}) is enhanced (--raw-jpeg to choose)"))
        if e.held is not None:
            decoded = r["ok"] or r["stage"] != DECODE
            e.held.reason += (f"; {j.src.name}, the other file of its RAW+JPEG pair, is enhanced instead" if decoded
                              else "; the other file of its RAW+JPEG pair failed too")
            self.settle(e, e.held)
        if not r["ok"] and r["stage"] == DECODE:
            res.timings, res.megapixels = {}, 0.0  # as a local run reports a photo it could not decode
        self.settle(e, res)
