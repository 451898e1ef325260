"""The batch run: walk the inputs, plan the outputs, and enhance every photo without babysitting.

* The output tree mirrors the input tree, by default in a folder beside the input
  (``shoot/`` -> ``shoot_srpie/``), never inside the folder being walked.
* Existing outputs are skipped (resume after a crash); every write is atomic, so an output
  that exists is complete.
* One bad file is reported with its reason and the batch goes on; a full disk stops it.
* A lock file in each output folder keeps two runs (two cron jobs) apart.
* Decoding of the next photo and encoding of the previous one run in worker threads while
  the network works on the current one.

``plan()`` decides everything that can be decided without pixels; ``run()`` does the work
and reports through a ``Listener``; ``enhance()`` is both, with the lock and the report.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from srpie_cli import SrpieError, __version__, defaults, images
from srpie_cli.images import Photo
from srpie_cli.inference import Settings, load

LOCK_NAME = ".srpie.lock"
PREFETCH = 2  # photos decoded ahead of the network
WRITE_BACKLOG = 2  # outputs waiting to be encoded before the network waits for them


class UsageError(SrpieError):
    """Nothing was done: bad paths, an output folder that cannot be written, a held lock."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; outputs written so far are complete, nothing is half-written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    fmt: str  # output format


@dataclass
class FileResult:
    input: str
    status: str  # "done", "failed", "skipped", "interrupted"
    output: str | None = None
    reason: str | None = None  # why it failed or was skipped
    megapixels: float = 0.0  # input size
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, enhance, encode
    notes: list[str] = field(default_factory=list)  # metadata not carried over, retries


@dataclass
class Plan:
    jobs: list[Job]
    results: list[FileResult]  # decided without work: skipped and failed entries
    out_roots: list[Path]


class Listener:
    """What the batch says while it runs; the CLI draws progress from it. Default: silence."""

    def start(self, total: int, model: dict, device: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def file_done(self, result: FileResult) -> None: ...


# ----------------------------------------------------------------------------- planning

def default_output(path: Path) -> Path:
    """``shoot/`` -> ``shoot_srpie/`` beside it; a single photo -> its folder's ``_srpie`` twin."""
    folder = path if path.is_dir() else path.parent
    folder = folder.resolve()
    if folder.parent == folder:
        raise UsageError(f"{path}: no folder beside the filesystem root to write to: give -o OUT")
    return folder.parent / f"{folder.name}_srpie"


PREVIEW_SUFFIX = "_srpie_preview"  # srpie preview's default sheet name: <photo>_srpie_preview.png


def walk(root: Path, skip: set[Path], errors: list[FileResult]) -> Iterator[Path]:
    """Files below ``root``, sorted, recursively; hidden entries and ``skip`` folders left out.
    Folder symlinks are followed once (a loop ends there); an unreadable folder is recorded
    in ``errors`` and passed over."""
    seen: set[tuple[int, int]] = set()

    def visit(folder: Path) -> Iterator[Path]:
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return
            seen.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            errors.append(FileResult(str(folder), "failed", reason=f"folder unreadable, skipped ({e.strerror or e})"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if p.resolve() not in skip:
                    yield from visit(p)
            elif images.format_of(p) and not is_preview_sheet(p):
                yield p

    yield from visit(root)


def is_preview_sheet(path: Path) -> bool:
    """A comparison sheet ``srpie preview`` left beside a photo: not a photo of the shoot."""
    return path.stem.endswith(PREVIEW_SUFFIX)


def _out_suffix(src: Path, source_kind: str, fmt: str) -> str:
    if source_kind == fmt:
        return src.suffix  # keep IMG_1.JPG as IMG_1.JPG
    return images.OUT_SUFFIX[fmt]


def output_roots(inputs: Sequence[Path], output: Path | None, raw_jpeg: str = "raw") -> list[Path]:
    """The output folder of each input. UsageError for bad paths or options: all that can
    be refused before any folder is created."""
    if raw_jpeg not in ("raw", "jpeg", "both"):
        raise UsageError(f"--raw-jpeg must be raw, jpeg or both, not {raw_jpeg!r}")
    if not inputs:
        raise UsageError("no input: give photo files or folders")
    for p in inputs:
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
    roots = []
    for p in inputs:
        if output is None:
            roots.append(default_output(p))
        elif len(inputs) == 1 or not p.is_dir():
            roots.append(Path(output))
        else:
            roots.append(Path(output) / p.resolve().name)
    for p, r in zip(inputs, roots):
        if p.is_dir() and r.resolve() == p.resolve():
            raise UsageError(f"{r}: the output folder is the input folder; give another -o")
    return roots


def plan(inputs: Sequence[Path], output: Path | None = None, fmt: str | None = None,
         raw_jpeg: str = "raw", overwrite: bool = False) -> Plan:
    """Decide every output path, which files to skip and why. Raises UsageError for bad
    paths; the output folders are not created here (see ``prepare_outputs``)."""
    inputs = [Path(p) for p in inputs]
    roots = output_roots(inputs, output, raw_jpeg)
    skip = {r.resolve() for r in roots}

    results: list[FileResult] = []
    sources: list[tuple[Path, Path]] = []  # (file, its output root / relative folder)
    for p, r in zip(inputs, roots):
        if p.is_dir():
            for f in walk(p, skip, results):
                sources.append((f, r / f.parent.relative_to(p)))
        elif images.format_of(p):
            sources.append((p, r))
        else:
            results.append(FileResult(str(p), "failed", reason=f"unsupported file type {p.suffix or '(none)'!r}"))

    # RAW+JPEG pairs: the same name in the same folder
    kinds: dict[tuple[Path, str], set[str]] = {}
    for f, _ in sources:
        kinds.setdefault((f.parent, f.stem.lower()), set()).add(images.format_of(f))
    drop = {"raw": "jpeg", "jpeg": "raw"}.get(raw_jpeg)

    input_set = {f.resolve() for f, _ in sources}
    claimed: dict[str, Path] = {}
    jobs: list[Job] = []
    for f, out_dir in sources:
        kind = images.format_of(f)
        pair = kinds[(f.parent, f.stem.lower())]
        if drop and kind == drop and {"raw", "jpeg"} <= pair:
            keep = "RAW" if raw_jpeg == "raw" else "JPEG"
            results.append(FileResult(str(f), "skipped", reason=f"RAW+JPEG pair: enhancing the {keep} (--raw-jpeg to choose)"))
            continue
        ofmt = images.output_format(kind, fmt)
        dst = out_dir / (f.stem + _out_suffix(f, kind, ofmt))
        key = str(dst).lower()
        if key in claimed:
            results.append(FileResult(str(f), "failed", output=str(dst), reason=f"output name collides with the output of {claimed[key]}"))
            continue
        if dst.resolve() in input_set:
            results.append(FileResult(str(f), "failed", output=str(dst), reason="output would overwrite an input photo"))
            continue
        claimed[key] = f
        if not overwrite and dst.is_file() and dst.stat().st_size > 0:
            results.append(FileResult(str(f), "skipped", output=str(dst), reason="output exists (--overwrite to redo)"))
            continue
        jobs.append(Job(f, dst, ofmt))
    return Plan(jobs, results, roots)


def prepare_outputs(roots: Sequence[Path]) -> None:
    """Create the output folders and prove they are writable, before any work."""
    for r in dict.fromkeys(roots):
        try:
            r.mkdir(parents=True, exist_ok=True)
            probe = r / f".srpie-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"{r}: output folder cannot be created or written ({e.strerror or e})") from None


class OutputLock:
    """An exclusive lock on each output folder (a ``.srpie.lock`` file holding the pid).
    The OS drops it when the process dies, so a crash never leaves a stale lock."""

    def __init__(self, roots: Sequence[Path]):
        self.roots = sorted(dict.fromkeys(r.resolve() for r in roots))
        self.files: list = []

    def __enter__(self) -> OutputLock:
        try:
            for r in self.roots:
                path = r / LOCK_NAME
                f = open(path, "a+")
                if not _try_lock(f):
                    f.seek(0)
                    holder = f.read().strip() or "unknown"
                    f.close()
                    raise UsageError(f"{r}: another srpie run ({holder}) is working on this output folder; "
                                     "try again when it has finished")
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}")
                f.flush()
                self.files.append(f)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files:
            f.close()  # closing releases the lock
        self.files = []


def _try_lock(f) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files a killed run (SIGKILL, power loss) left; only call under the lock."""
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(".") and images.TMP_MARK in e.name and e.is_file():
                    Path(e.path).unlink(missing_ok=True)
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------- the work

def estimate_megapixels(jobs: Sequence[Job], enough: float = defaults.COMPILE_MIN_MP) -> float:
    """Input megapixels of the jobs from their headers (RAW: from the file size, about 1 MB a
    megapixel), stopping once ``enough`` is reached."""
    from PIL import Image

    total = 0.0
    for job in jobs:
        try:
            with Image.open(job.src) as im:
                total += im.width * im.height / 1e6
        except Exception:
            try:
                total += job.src.stat().st_size / 1e6
            except OSError:
                pass
        if total >= enough:
            break
    return total


# errors one file can raise without the batch being wrong: reported for that file
FILE_ERRORS = (SrpieError, OSError, ValueError, RuntimeError, MemoryError)


def _reason(e: BaseException, path: Path | None = None) -> str:
    """The reason alone: the report and the log name the file beside it."""
    if isinstance(e, SrpieError):
        msg = str(e)
        for prefix in ((f"{path}: ", f"{path.name}: ") if path else ()):
            if msg.startswith(prefix):
                return msg[len(prefix):]
        return msg
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def run(p: Plan, settings: Settings, listener: Listener | None = None,
        results: list[FileResult] | None = None) -> list[FileResult]:
    """Enhance every job of the plan; returns one result per file (the plan's own first),
    appended to ``results`` as they come, so an interrupted run still knows what it did."""
    listener = listener or Listener()
    results = [] if results is None else results
    results.extend(p.results)
    for r in p.results:
        listener.file_done(r)
    mp = estimate_megapixels(p.jobs) if settings.compile == "auto" else 0.0
    enhancer = load(settings, listener.warn, mp)
    settings = enhancer.settings
    listener.start(len(p.jobs), enhancer.meta, str(enhancer.device))

    def decode(job: Job) -> tuple[Photo, float]:
        """Decode, and check that the output can be written, before the network runs."""
        t = time.perf_counter()
        photo = enhancer.decode(job.src)
        images.check_writable(job.dst, photo, job.fmt, settings.quality)
        return photo, time.perf_counter() - t

    prepared: set[Path] = set()  # output folders made and cleaned, by the main thread only

    def encode(job: Job, photo: Photo) -> tuple[list[str], float]:
        t = time.perf_counter()
        notes = images.write_photo(job.dst, photo, job.fmt, settings.quality)
        return notes, time.perf_counter() - t

    todo = deque(p.jobs)
    decoding: deque[tuple[Job, Future]] = deque()
    writing: deque[tuple[FileResult, Job, Future]] = deque()
    stop: str | None = None

    def finish_write(item) -> None:
        nonlocal stop
        res, job, fut = item
        try:
            notes, dt = fut.result()
            res.status, res.output = "done", str(job.dst)
            res.notes += notes
            res.timings["encode"] = round(dt, 3)
        except FILE_ERRORS as e:
            res.status, res.reason = "failed", f"cannot write {job.dst}: {_reason(e, job.dst)}"
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                stop = "disk full"
        results.append(res)
        listener.file_done(res)

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="srpie-io")
    try:
        while todo or decoding:
            while todo and len(decoding) < PREFETCH and stop is None:
                job = todo.popleft()
                decoding.append((job, pool.submit(decode, job)))
            if not decoding:
                break
            job, fut = decoding.popleft()
            res = FileResult(str(job.src), "failed", output=None)
            try:
                photo, dt = fut.result()
                res.megapixels = round(photo.megapixels, 3)
                res.timings["decode"] = round(dt, 3)
                res.notes += photo.notes  # what the decoder noted reaches the log and the report
                t = time.perf_counter()
                out = enhancer.enhance(photo, on_retry=res.notes.append)
                res.timings["enhance"] = round(time.perf_counter() - t, 3)
                del photo
            except FILE_ERRORS as e:
                res.reason = _reason(e, job.src)
                results.append(res)
                listener.file_done(res)
                continue
            if job.dst.parent not in prepared:
                try:
                    job.dst.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    res.reason = f"cannot create {job.dst.parent}: {_reason(e)}"
                    results.append(res)
                    listener.file_done(res)
                    continue
                remove_stale_temporaries(job.dst.parent)
                prepared.add(job.dst.parent)
            writing.append((res, job, pool.submit(encode, job, out)))
            del out
            while writing and (writing[0][2].done() or len(writing) > WRITE_BACKLOG):
                finish_write(writing.popleft())
            if stop:
                break
        while writing:
            finish_write(writing.popleft())
    except BaseException:
        for _, f in decoding:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # writes in flight end complete or removed
        while writing:  # every write has ended (complete, or removed) or never started
            item = writing.popleft()
            if item[2].cancelled():
                res = item[0]
                res.status, res.reason = "interrupted", "not done: the run was interrupted"
                results.append(res)
            else:
                finish_write(item)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if stop:
        left = [j for j, _ in decoding] + list(todo)
        for job in left:
            r = FileResult(str(job.src), "failed", reason=f"not started: the batch stopped ({stop})")
            results.append(r)
            listener.file_done(r)
    return results


# ----------------------------------------------------------------------------- all of it

@dataclass
class Outcome:
    results: list[FileResult]
    seconds: float
    interrupted: str | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0


def enhance(*, inputs: Sequence[Path], output: Path | None = None, settings: Settings = Settings(),
            fmt: str | None = None, raw_jpeg: str = "raw", overwrite: bool = False,
            report: Path | None = None, listener: Listener | None = None) -> Outcome:
    """Plan, check the output folders, lock them, run, and write the report (also when
    interrupted: SIGINT and SIGTERM raise ``Interrupted`` after the report is written)."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    inputs = [Path(i) for i in inputs]
    roots = output_roots(inputs, output, raw_jpeg)
    if report is not None:
        report = Path(report)
        if not report.parent.is_dir():
            raise UsageError(f"{report}: its folder does not exist")
    prepare_outputs(roots)
    results: list[FileResult] = []
    interrupted: Interrupted | None = None
    with OutputLock(roots), _signals_raise():
        # planned under the lock: what a run that just finished wrote is skipped, not redone
        p = plan(inputs, output, fmt, raw_jpeg, overwrite)
        try:
            run(p, settings, listener, results)
        except Interrupted as e:
            interrupted = e
        except KeyboardInterrupt:
            interrupted = Interrupted(signal.SIGINT)
    if interrupted:
        known = {r.input for r in results}
        results += [FileResult(str(j.src), "interrupted", reason="not done: the run was interrupted")
                    for j in p.jobs if str(j.src) not in known]
    outcome = Outcome(results, time.perf_counter() - t0, interrupted and str(interrupted))
    if report is not None:
        write_report(report, outcome, settings, started, inputs)
    if interrupted:
        raise interrupted
    return outcome


class _signals_raise:
    """SIGTERM raises ``Interrupted`` in the main thread (as SIGINT raises KeyboardInterrupt),
    so writes in flight finish or clean up instead of dying half-written."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, _raise)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _raise(signum, frame):
    raise Interrupted(signum)


def write_report(path: Path, outcome: Outcome, settings: Settings, started: datetime, inputs) -> None:
    doc = {
        "srpie": __version__,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(outcome.seconds, 3),
        "inputs": [str(p) for p in inputs],
        "settings": asdict(settings),
        "interrupted": outcome.interrupted,
        "summary": {s: outcome.count(s) for s in ("done", "failed", "skipped", "interrupted")},
        "files": [asdict(r) for r in outcome.results],
    }
    data = json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")
    images.atomic_write(path, lambda f: f.write(data))
