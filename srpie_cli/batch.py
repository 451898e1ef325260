"""The batch run: walk the inputs, plan the outputs, and enhance every photo without babysitting.

* The output tree mirrors the input tree, by default in a folder beside the input
  (``shoot/`` -> ``shoot_srpie/``), never inside the folder being walked.
* Existing outputs are skipped (resume after a crash); every write is atomic, so an output
  that exists is complete.
* One bad file is reported with its reason and the batch goes on; a full disk stops it.
* A lock on each output folder keeps two runs (two cron jobs) apart; nothing of it stays
  in the folder (``OutputLock``).
* Only regular files are photos: a FIFO, a socket or a device named ``*.jpg`` is named and
  passed over (opening one would wait forever), and so is a symlink loop.
* srpie's own outputs are never taken as inputs: a folder run skips, with that reason, every
  photo whose metadata names srpie as its software (an earlier single-file run's
  ``<folder>_srpie/`` below the folder, an ``-o`` inside it); named alone, such a file is
  enhanced again.
* A file that failed is not worked on again while it is unchanged (same size and
  modification time): the next run lists it as failed before, without decoding it;
  ``retry_failed`` tries again. The memory of failures lives outside the output folder, in
  the user's state folder (``state_dir``), so the delivery folder holds only photos.
* A RAW+JPEG pair is one frame: the file ``raw_jpeg`` chooses is enhanced, and when it
  cannot be decoded the other one is enhanced instead.
* Decoding of the next photo and encoding of the previous one run in worker threads while
  the network works on the current one.

``plan()`` decides everything that can be decided without pixels; ``run()`` does the work
and reports through a ``Listener``; ``enhance()`` is both, with the lock and the report.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from srpie_cli import Refused, SrpieError, __version__, defaults, images, sidecar
from srpie_cli.images import Photo
from srpie_cli.inference import Settings, load

LOCK_NAME = ".srpie.lock"
PREFETCH = 2  # photos decoded ahead of the network
WRITE_BACKLOG = 2  # outputs waiting to be encoded before the network waits for them (at least)


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
    fallback: Job | None = None  # the other file of a RAW+JPEG pair: enhanced if ``src`` cannot be decoded
    sidecar: Path | None = None  # its XMP sidecar: rating, label, title, keywords carried into the output
    settings: Settings | None = None  # a job file's settings for its folder; None: the run's


@dataclass
class FileResult:
    input: str
    status: str  # "done", "failed", "skipped", "interrupted"
    output: str | None = None
    reason: str | None = None  # why it failed or was skipped
    megapixels: float = 0.0  # input size
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, enhance, encode
    notes: list[str] = field(default_factory=list)  # metadata not carried over, retries
    worker: dict | None = None  # --jobs, --ray: who made it (host, pid, Ray node); None in a local run
    settings: dict | None = None  # what it was made with, where a job file's folder settings differ from the run's


@dataclass
class Plan:
    jobs: list[Job]
    results: list[FileResult]  # decided without work: skipped and failed entries
    out_roots: list[Path]
    root_of: dict[Path, set[Path]] = field(default_factory=dict)  # each job's input -> its output roots


@dataclass(frozen=True)
class Selection:
    """Which photos of the inputs are enhanced and how their outputs are named.

    ``include`` / ``exclude``: globs matched, ignoring case, against the path relative to the
    input folder; a glob without ``/`` matches a file's or a folder's name at any depth
    (``*.CR3``, ``rejects/``), one with ``/`` the whole relative path (``day1/*.jpg``; ``*``
    crosses folders). A trailing ``/`` matches folders only. ``suffix`` goes between an
    output's name and its extension (``_2x``: ``IMG_0001_2x.jpg``); with one, the outputs may
    sit beside the originals. ``min_rating``: only frames rated this or more in their XMP
    sidecar (``sidecar.py``); rejects never."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    suffix: str = ""
    min_rating: int | None = None

    def excluded(self, rel: str, is_dir: bool) -> str | None:
        """Why the file or folder at ``rel`` (posix, relative to the input folder) is left out."""
        for pat in self.exclude:
            if _glob(rel, pat, is_dir):
                return f"excluded by --exclude {pat!r}"
        if not is_dir and self.include and not any(_glob(rel, pat, False) for pat in self.include):
            return f"not matched by --include {' '.join(map(repr, self.include))}"
        if not is_dir and self.suffix and Path(rel).stem.lower().endswith(self.suffix.lower()):
            return f"its name ends with --suffix {self.suffix!r}: an output, not a photo of the shoot"
        return None


def _glob(rel: str, pattern: str, is_dir: bool) -> bool:
    from fnmatch import fnmatchcase

    pat = pattern.strip().lower()
    if pat.endswith("/"):
        if not is_dir:
            return False
        pat = pat.rstrip("/")
    rel = rel.lower()
    return fnmatchcase(rel if "/" in pat else rel.rsplit("/", 1)[-1], pat)


class Listener:
    """What the batch says while it runs; the CLI draws progress from it. Default: silence."""

    wants_estimate = False  # True: the run times its model (cached, a few seconds) and calls ``sizes``

    def start(self, total: int, model: dict, device: str) -> None: ...

    def sizes(self, megapixels: dict[str, float], seconds: float | None) -> None:
        """Each job's input megapixels (from its header) and the estimated seconds of the run."""

    def tiles(self, src: str, done: int, total: int) -> None:
        """Progress within one photo: ``done`` of its ``total`` tiles."""

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


def walk(root: Path, skip: set[Path], errors: list[FileResult], select: Selection = Selection()) -> Iterator[Path]:
    """Photo files below ``root``, sorted, recursively; hidden entries and ``skip`` folders
    left out. Folder symlinks are followed once (a loop ends there). Recorded in ``errors``
    and passed over, each with its reason: a file that looks like a photo srpie cannot read
    (JPEG XL, PSD, a JPEG named .dat), what ``select`` leaves out (an excluded folder is one
    entry), an unreadable folder, a photo name on something that is not a regular file (a
    FIFO would hang the run), a symlink loop."""
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
            left_out = select.excluded(p.relative_to(root).as_posix(), is_dir)
            if is_dir:
                if _resolved(p) in skip:
                    continue
                if left_out:
                    errors.append(FileResult(str(p), "skipped", reason=left_out))
                else:
                    yield from visit(p)
            elif is_preview_sheet(p):
                continue
            elif left_out:
                if images.format_of(p) or images.foreign_reason(p):
                    errors.append(FileResult(str(p), "skipped", reason=left_out))
            elif (foreign := images.foreign_reason(p)) is not None:
                errors.append(FileResult(str(p), "skipped", reason=foreign))  # named, never passed over
            elif images.format_of(p):
                if (why := not_a_photo_file(p)) is not None:
                    errors.append(FileResult(str(p), "failed", reason=why))
                else:
                    yield p

    yield from visit(root)


def not_a_photo_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a photo file (None when it is a regular file): only
    regular files are opened, since opening a FIFO or a device waits for a writer forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (the link points back to itself), skipped"
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
        "a device" if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "not a file"
    return f"not a regular file ({kind}), skipped"


def _resolved(p: Path) -> Path:
    """``p.resolve()``, or ``p`` made absolute where a symlink loop stops resolving."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return p.absolute()


def is_preview_sheet(path: Path) -> bool:
    """A comparison sheet ``srpie preview`` left beside a photo: not a photo of the shoot."""
    return path.stem.endswith(PREVIEW_SUFFIX)


def _out_suffix(src: Path, source_kind: str, fmt: str) -> str:
    if source_kind == fmt:
        return src.suffix  # keep IMG_1.JPG as IMG_1.JPG
    return images.OUT_SUFFIX[fmt]


def output_roots(inputs: Sequence[Path], output: Path | None, raw_jpeg: str = "raw", suffix: str = "") -> list[Path]:
    """The output folder of each input. UsageError for bad paths or options: all that can
    be refused before any folder is created."""
    if raw_jpeg not in ("raw", "jpeg", "both"):
        raise UsageError(f"--raw-jpeg must be raw, jpeg or both, not {raw_jpeg!r}")
    if not inputs:
        raise UsageError("no input: give photo files or folders")
    for p in inputs:
        if not p.exists():
            loop = not_a_photo_file(p) if p.is_symlink() else None
            raise UsageError(f"{p}: {loop or 'no such file or folder'}")
    roots = []
    for p in inputs:
        if output is None:
            roots.append(default_output(p))
        elif len(inputs) == 1 or not p.is_dir():
            roots.append(Path(output))
        else:
            roots.append(Path(output) / p.resolve().name)
    for p, r in zip(inputs, roots):
        if p.is_dir() and r.resolve() == p.resolve() and not suffix:
            raise UsageError(f"{r}: the output folder is the input folder; give another -o, or --suffix "
                             "(e.g. _2x) to write the outputs beside the originals")
    return roots


@dataclass(frozen=True)
class Rule:
    """How the photos of one folder are made: the run's options, or a job file's settings for
    that folder (``jobfile.py``)."""

    fmt: str | None = None
    select: Selection = Selection()
    settings: Settings | None = None  # None: the run's


def plan(inputs: Sequence[Path], output: Path | None = None, fmt: str | None = None,
         raw_jpeg: str = "raw", overwrite: bool = False,
         failed_before: Callable[[Path, Path], str | None] | None = None,
         select: Selection = Selection(), rule_for: Callable[[str], Rule] | None = None) -> Plan:
    """Decide every output path, which files to skip and why. Raises UsageError for bad
    paths; the output folders are not created here (see ``prepare_outputs``).
    ``failed_before(file, output root)``: the reason a file failed in an earlier run into that
    root if it is unchanged since, else None; such a file is listed as failed without being decoded again.
    ``select``: which files and how outputs are named; ``rule_for(folder)``: a folder's own
    (posix, relative to the output root; "" for the top)."""
    inputs = [Path(p) for p in inputs]
    roots = output_roots(inputs, output, raw_jpeg, select.suffix)
    results: list[FileResult] = []
    rules = _rules(fmt, select, rule_for)
    side_of = sidecar.Finder()
    sources = _culled(_sources(inputs, roots, results, select), rules, results, side_of)

    # RAW+JPEG pairs: the same name in the same folder; the file not chosen is the fallback
    kinds: dict[tuple[Path, str], dict[str, tuple[Path, Path, Path]]] = {}
    for f, out_dir, root in sources:
        kinds.setdefault((f.parent, f.stem.lower()), {})[images.format_of(f)] = (f, out_dir, root)
    drop = {"raw": "jpeg", "jpeg": "raw"}.get(raw_jpeg)

    input_set = {_resolved(f) for f, _, _ in sources}
    claimed: dict[str, Path] = {}
    p = Plan([], results, roots)

    def job_for(f: Path, out_dir: Path, root: Path, partner: Path | None = None) -> tuple[Job | None, FileResult | None]:
        """The job of ``f``, or the result that settles it now (skipped or failed). ``partner``:
        the file of its RAW+JPEG pair it stands in for, whose output it may share (one writes)."""
        kind = images.format_of(f)
        rule = rules(out_dir.relative_to(root).as_posix() if out_dir != root else "")
        ofmt = images.output_format(kind, rule.fmt)
        dst = out_dir / (f.stem + rule.select.suffix + _out_suffix(f, kind, ofmt))
        key, there = str(dst).lower(), os.path.lexists(dst)
        why = None
        if key in claimed and _resolved(claimed[key]) == _resolved(f):  # a folder given twice, a file and its folder
            return None, FileResult(str(f), "skipped", reason=f"the same photo as {claimed[key]}, given twice")
        if key in claimed and claimed[key] is not partner:
            why = f"output name collides with the output of {claimed[key]}"
        elif _resolved(dst) in input_set:
            why = "output would overwrite an input photo"
        elif there and not _output_like(dst, overwrite):
            why = (f"{dst} is in the way and was not written by srpie: refused to replace it "
                   "(move it, or give another -o)")
        if why:
            return None, FileResult(str(f), "failed", output=str(dst), reason=why)
        claimed[key] = f
        if not overwrite and there:
            return None, FileResult(str(f), "skipped", output=str(dst), reason="output exists (--overwrite to redo)")
        if failed_before and (reason := failed_before(f, root)):
            return None, FileResult(str(f), "failed", reason=f"{FAILED_BEFORE}: {reason} (--retry-failed to try again)")
        return Job(f, dst, ofmt, sidecar=side_of(f), settings=rule.settings), None

    def add(job: Job | None, res: FileResult | None, root: Path) -> None:
        if job is None:
            results.append(res)
        else:
            p.root_of.setdefault(job.src, set()).add(root)
            p.jobs.append(job)

    keep = "RAW" if raw_jpeg == "raw" else "JPEG"
    for f, out_dir, root in sources:
        kind = images.format_of(f)
        pair = kinds[(f.parent, f.stem.lower())]
        if not drop or not {"raw", "jpeg"} <= pair.keys():
            add(*job_for(f, out_dir, root), root)
            continue
        if kind == drop:
            continue  # planned with the file it stands in for
        other, other_dir, other_root = pair[drop]
        job, res = job_for(f, out_dir, root)
        skip_other = FileResult(str(other), "skipped", reason=f"RAW+JPEG pair: enhancing the {keep} (--raw-jpeg to choose)")
        if job is None and not res.reason.startswith(FAILED_BEFORE):
            results += [res, skip_other]  # done before, or refused: the other file is not needed
            continue
        fallback, other_res = job_for(other, other_dir, other_root, partner=f)
        if job is None:  # the chosen file is known bad: the other file is the job now
            results.append(res)
            add(fallback, other_res, other_root)
            continue
        if fallback is None:
            results.append(skip_other)  # its output exists, or it failed before: no stand-in
        else:
            p.root_of.setdefault(fallback.src, set()).add(other_root)
        add(replace(job, fallback=fallback), None, root)
    return p


FAILED_BEFORE = "failed before, unchanged since"


def _rules(fmt: str | None, select: Selection, rule_for: Callable[[str], Rule] | None) -> Callable[[str], Rule]:
    """Each folder's rule, looked up once."""
    cache: dict[str, Rule] = {}

    def rule(folder: str) -> Rule:
        if folder not in cache:
            cache[folder] = rule_for(folder) if rule_for else Rule(fmt, select)
        return cache[folder]

    return rule


def _culled(sources: list[tuple[Path, Path, Path]], rules: Callable[[str], Rule],
            results: list[FileResult], side_of: Callable[[Path], Path | None]) -> list[tuple[Path, Path, Path]]:
    """The sources less the frames culled in their XMP sidecar, or in their own XMP where they
    have no sidecar (Lightroom writes a JPEG's rating into it): rejects always, and those
    rated below the folder's ``min_rating`` (unrated counts as 0). A photo whose sidecar cannot be read is kept (the
    note says why nothing was carried), unless a minimum rating has to be checked."""
    kept = []
    for f, out_dir, root in sources:
        side = side_of(f)
        least = rules(out_dir.relative_to(root).as_posix() if out_dir != root else "").select.min_rating
        try:
            c = sidecar.read(side) if side is not None else sidecar.embedded(f)
        except ValueError as e:  # enhanced with a note (``sidecar.carry``), unless its rating decides
            if least is not None:
                results.append(FileResult(str(f), "skipped", reason=f"{e}: its rating is unknown (--min-rating)"))
            else:
                kept.append((f, out_dir, root))
            continue
        where = side.name if side is not None else "its own XMP"
        if c is not None and (why := c.rejected):
            results.append(FileResult(str(f), "skipped", reason=why))
        elif least is not None and (c is None or (c.rating or 0) < least):
            said = f"rated {c.rating} in {where}" if c is not None and c.rating is not None else \
                "unrated (no rating in an XMP sidecar or in the file)"
            results.append(FileResult(str(f), "skipped", reason=f"{said}, below --min-rating {least}"))
        else:
            kept.append((f, out_dir, root))
    return kept


def _output_like(dst: Path, overwrite: bool) -> bool:
    """Whether what is at ``dst`` may stand as this photo's output: a file with something in
    it (resumed: skipped), and with ``overwrite`` one srpie wrote (replaced). An empty file, a
    link, a folder or a FIFO was never written by srpie (its outputs appear whole, by rename)."""
    try:
        st = os.lstat(dst)
    except OSError:  # gone since: nothing in the way
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return False
    return not overwrite or images.made_by_srpie(dst)


def _sources(inputs: list[Path], roots: list[Path], results: list[FileResult],
             select: Selection = Selection()) -> list[tuple[Path, Path, Path]]:
    """(photo file, its output folder, its output root) for every input; what cannot be a
    photo recorded in ``results``. Folder runs pass over srpie's own outputs."""
    skip = {_resolved(r) for r in roots}
    sources: list[tuple[Path, Path, Path]] = []
    for p, r in zip(inputs, roots):
        if p.is_dir():
            for f in walk(p, skip, results, select):
                if images.made_by_srpie(f):  # an earlier run's output below the folder
                    results.append(FileResult(str(f), "skipped", reason="an output of srpie, not a photo of the "
                                              "shoot (name the file to enhance it again)"))
                else:
                    sources.append((f, r / f.parent.relative_to(p), r))
        elif (foreign := images.foreign_reason(p)) is not None:
            results.append(FileResult(str(p), "failed", reason=foreign))
        elif not images.format_of(p):
            results.append(FileResult(str(p), "failed", reason=f"unsupported file type {p.suffix or '(none)'!r}"))
        elif (why := not_a_photo_file(p)) is not None:
            results.append(FileResult(str(p), "failed", reason=why))
        else:
            sources.append((p, r, r))
    return sources


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
    """An exclusive lock on each output folder, so two runs (two cron jobs) never work on one.

    Where the OS allows (Linux, macOS: ``flock`` on the folder itself) nothing is written
    into the folder, which is what a client receives. Elsewhere (Windows, network file
    systems that refuse ``flock`` on a folder) a ``.srpie.lock`` file is locked instead and
    removed when the run ends: a run that opened it just before it was removed finds its
    lock on a file no longer in place and tries again, so two runs never both hold one.
    Either lock dies with the process: a crash never leaves a stale lock. Nothing waits:
    a held lock is a UsageError at once."""

    def __init__(self, roots: Sequence[Path]):
        self.roots = sorted(dict.fromkeys(r.resolve() for r in roots))
        self.held: list[tuple[int, Path | None]] = []  # (fd, lock file to remove or None)

    def __enter__(self) -> OutputLock:
        try:
            for r in self.roots:
                self.held.append(_lock_folder(r))
            # a shared lock on every folder above: a run into a folder inside another run's
            # (-o out/shoot/day1 while one works on out/shoot) is busy too, either way round;
            # runs into sibling folders share their parents
            own = set(self.roots)
            for a in dict.fromkeys(a for r in self.roots for a in r.parents if a not in own):
                fd = _flock_folder(a, shared=True)
                if fd is not None:
                    self.held.append((fd, None))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for fd, path in reversed(self.held):
            if path is not None:
                path.unlink(missing_ok=True)  # removed while still held: see the class docstring
            os.close(fd)  # closing releases the lock
        self.held = []


def _busy(r: Path) -> UsageError:
    return UsageError(f"{r}: another srpie run is working on this output folder; try again when it has finished")


def _lock_folder(r: Path) -> tuple[int, Path | None]:
    fd = _flock_folder(r, shared=False)
    if fd is not None:
        return fd, None
    # no flock, or this file system cannot lock a folder: a lock file instead
    path = r / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            raise _busy(r)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd, path
        os.close(fd)  # locked a file the run before removed as we opened it: again
    raise _busy(r)


def _flock_folder(r: Path, shared: bool) -> int | None:
    """An ``flock`` on folder ``r`` itself, exclusive or ``shared``: its descriptor, None
    where there is no ``flock`` (Windows) or the folder cannot be opened or locked, and a
    UsageError while another run holds a lock that excludes it."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(r, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        if shared:
            raise UsageError(f"{r}: another srpie run is working on this folder, which holds the output "
                             "folder; try again when it has finished") from None
        raise _busy(r) from None
    except OSError:
        os.close(fd)
        return None


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def state_dir() -> Path:
    """Where srpie remembers what failed: ``$XDG_STATE_HOME/srpie`` (``~/.local/state/srpie``),
    outside any output folder, so a delivery folder holds nothing but photos."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "srpie"


class Failures:
    """The files that failed in earlier runs into one output root, each with its size and
    modification time: while both are unchanged, the file is not worked on again."""

    def __init__(self, root: Path):
        key = hashlib.sha256(os.fsencode(str(_resolved(root)))).hexdigest()[:20]
        self.path = state_dir() / f"failed-{key}.json"
        self.root = root
        try:
            doc = json.loads(self.path.read_bytes())
            self.files: dict[str, dict] = dict(doc.get("files", {}))
        except (OSError, ValueError, AttributeError, TypeError):
            self.files = {}

    @staticmethod
    def _key(f: Path) -> tuple[str, list[int]] | None:
        st = file_state(f)
        return None if st is None else (str(_resolved(f)), st)

    def reason(self, f: Path) -> str | None:
        """Why ``f`` failed before, if it is unchanged since."""
        k = self._key(f)
        entry = self.files.get(k[0]) if k else None
        if not isinstance(entry, dict) or entry.get("stat") != k[1]:
            return None
        return str(entry.get("reason") or "unknown reason")

    def update(self, results: Sequence[FileResult], failed_decoding: dict[str, list[int] | None]) -> None:
        """Forget files that are done; remember the files whose own content failed them, as
        they were when read (``file_state``): a file still being copied then is tried again."""
        for r in results:
            k = self._key(Path(r.input))
            if k is None:
                continue
            if r.input in failed_decoding:
                if failed_decoding[r.input] is not None:
                    self.files[k[0]] = {"stat": failed_decoding[r.input], "reason": r.reason}
            elif r.status == "done":
                self.files.pop(k[0], None)
        try:
            if not self.files:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = _json_bytes({"output": str(self.root), "files": self.files})
            images.atomic_write(self.path, lambda f: f.write(data))
        except OSError:
            pass  # a memory of failures only saves time: never fail a run over it


def _json_bytes(doc) -> bytes:
    """JSON as UTF-8. A file name that is not UTF-8 (undecodable bytes, held by Python as
    lone surrogates) is written as its JSON escape, which Python reads back to the same name."""
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8", "backslashreplace")


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

def estimate_megapixels(jobs: Sequence[Job], enough: float = defaults.COMPILE_MIN_MP, min_side: int = 0) -> float:
    """Input megapixels of the jobs from their headers (RAW: from the file size, about 1 MB a
    megapixel), stopping once ``enough`` is reached. Photos with a side under ``min_side``
    are not counted: a compiled network runs them eager (``inference.enhance_photo``)."""
    from PIL import Image

    total = 0.0
    for job in jobs:
        try:
            with Image.open(job.src) as im:
                if min(im.size) >= min_side:
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


def file_state(f: Path) -> list[int] | None:
    """A file's size and modification time (None: it cannot be read): what ``Failures``
    compares, taken before a photo is read."""
    try:
        st = os.stat(f)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def remembered(e: BaseException) -> bool:
    """Whether a failure to read a photo is the file's own, remembered (``Failures``) so that
    an unchanged file is not read again: not the disk or memory (OSError, MemoryError), not
    a reader this machine lacks ("cannot read ("), not this run's settings (``Refused``)."""
    return not isinstance(e, (OSError, MemoryError, Refused)) and "cannot read (" not in str(e)


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
        results: list[FileResult] | None = None, failed_decoding: dict[str, list[int] | None] | None = None,
        pool: Callable | None = None) -> list[FileResult]:
    """Enhance every job of the plan; returns one result per file (the plan's own first),
    appended to ``results`` as they come, so an interrupted run still knows what it did.
    ``failed_decoding`` collects the inputs whose own content failed them, with their
    ``file_state`` when read (for ``Failures``)."""
    listener = listener or Listener()
    results = [] if results is None else results
    results.extend(p.results)
    for r in p.results:
        listener.file_done(r)
    min_side = settings.tile if settings.tile is not None else defaults.CPU_TILE
    mp = estimate_megapixels(p.jobs, min_side=min_side) if settings.compile == "auto" else 0.0
    groups = _groups(p.jobs, settings)
    if pool is not None and len(groups) > 1:
        raise UsageError("a job file's per-folder settings need a local run: --jobs and --ray run one model")
    if pool is not None:  # --jobs, --ray: ``pool(settings, mp)`` starts workers doing the same work (pool.py)
        from srpie_cli.pool import run as run_pool

        own = next(iter(groups), settings)  # a job file's settings, when one applies to every photo
        run_pool(p.jobs, pool(own, mp), listener, results, failed_decoding if failed_decoding is not None else {})
        return results
    failed_decoding = failed_decoding if failed_decoding is not None else {}
    for n, (own, jobs) in enumerate(groups.items()):  # one model per distinct settings (a job file's folders)
        t = time.perf_counter()
        enhancer = load(own, listener.warn, mp)
        loaded = time.perf_counter() - t
        if n == 0:
            listener.start(len(p.jobs) + sum(j.fallback is not None for j in p.jobs), enhancer.meta, str(enhancer.device))
            if getattr(listener, "wants_estimate", False):
                _announce(p.jobs, enhancer, listener, loaded)
        record = None if own == settings else {k: v for k, v in asdict(own).items() if getattr(settings, k) != v}
        _Runner(enhancer, listener, results, failed_decoding, record).go(jobs)
        del enhancer
    return results


def _groups(jobs: Sequence[Job], settings: Settings) -> dict[Settings, list[Job]]:
    """The jobs by the settings they are made with, the run's first (each is a model to load)."""
    groups: dict[Settings, list[Job]] = {settings: []}
    for job in jobs:
        groups.setdefault(job.settings or settings, []).append(job)
    if not groups[settings] and len(groups) > 1:
        del groups[settings]
    return groups


def header_sizes(jobs: Sequence[Job]) -> dict[Path, tuple[int, int] | str]:
    """Each job's (width, height) from its header, or the reason the header cannot be read."""
    from srpie_cli import estimate

    sizes: dict[Path, tuple[int, int] | str] = {}
    for job in jobs:
        try:
            sizes[job.src] = estimate.header_size(job.src)
        except SrpieError as e:
            sizes[job.src] = _reason(e, job.src)
    return sizes


def _announce(jobs: Sequence[Job], enhancer, listener: Listener, loaded: float) -> None:
    """Tell the listener every photo's megapixels and the run's estimate (the model timed once
    on this machine, then cached: ``estimate``)."""
    import torch

    from srpie_cli import estimate

    sizes = {k: v for k, v in header_sizes(jobs).items() if not isinstance(v, str)}
    s = enhancer.settings
    key = estimate.cache_key(s, str(enhancer.device), s.threads or torch.get_num_threads())
    cost = estimate.cached(key)
    if cost is None:
        cost = estimate.calibrate(enhancer, loaded)
        estimate.remember(key, cost)
    secs = estimate.seconds(cost, sizes.values(), s, s.tile, getattr(enhancer.model, "compiled", False)) - cost.load
    listener.sizes({str(k): w * h / 1e6 for k, (w, h) in sizes.items()}, secs)


class _Runner:
    """One run's pipeline: the next photos decode in worker threads while the network works
    on the current one, and the previous ones encode behind it, in ``settings.io_threads``
    threads (``defaults.IO_THREADS``). With more threads than ``PREFETCH`` + ``WRITE_BACKLOG``
    + 1, more outputs may wait to be encoded, but never so many that a decode waits behind
    them: the network is the one to wait. Whatever the threads, results are settled in the
    order of the jobs."""

    def __init__(self, enhancer, listener: Listener, results: list[FileResult], failed_decoding: dict[str, list[int] | None],
                 record: dict | None = None):
        self.enhancer, self.settings, self.listener = enhancer, enhancer.settings, listener
        self.record = record  # the settings that differ from the run's, for the report
        self.results, self.failed_decoding = results, failed_decoding
        self.decoding: deque[tuple[Job, Future]] = deque()
        # writes in flight, in the order of the jobs, and between them the results decided
        # without a write (job None): each is settled when everything before it is
        self.writing: deque[tuple[FileResult, Job | None, Future | None]] = deque()
        self.pending = 0  # the writes in ``writing``: outputs held in memory
        self.prepared: set[Path] = set()  # output folders made and cleaned, by the main thread only
        self.stop: str | None = None
        threads = self.settings.io_threads or defaults.IO_THREADS["cpu"]
        self.backlog = max(WRITE_BACKLOG, threads - PREFETCH - 1)  # outputs in memory: backlog + 1
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="srpie-io")

    def settle(self, res: FileResult) -> None:
        self.results.append(res)
        self.listener.file_done(res)

    def decided(self, res: FileResult) -> None:
        """Settle ``res`` (a failure or a skip, decided now) after the writes before it."""
        if self.writing:
            self.writing.append((res, None, None))
        else:
            self.settle(res)

    def drain(self, hold: int | None = None) -> None:
        """Settle what leads ``writing`` and has ended (a decided result, a write done), and
        with ``hold``, wait for writes until no more than ``hold`` outputs are in memory."""
        while self.writing:
            fut = self.writing[0][2]
            if not (fut is None or fut.done() or (hold is not None and self.pending > hold)):
                break
            self.finish_write(self.writing.popleft())

    def decode(self, job: Job) -> tuple[Job, Photo | None, float, list[FileResult]]:
        """Decode, and check that the output can be written, before the network runs. Returns
        the job decoded (a RAW+JPEG pair's other file when the chosen one cannot be), its
        photo (None when nothing could be), seconds, and the failures met on the way."""
        failures: list[FileResult] = []
        for j in (job, job.fallback):
            if j is None:
                break
            t, state = time.perf_counter(), file_state(j.src)
            try:
                photo = self.enhancer.decode(j.src)
                if j.sidecar is not None:
                    sidecar.carry(photo, j.sidecar)
            except FILE_ERRORS as e:
                failures.append(FileResult(str(j.src), "failed", reason=_reason(e, j.src)))
                if remembered(e):
                    self.failed_decoding[str(j.src)] = state
                continue
            try:  # what the output cannot hold depends on the run's --format: not remembered
                images.check_writable(j.dst, photo, j.fmt, self.settings.quality)
            except FILE_ERRORS as e:
                failures.append(FileResult(str(j.src), "failed", reason=_reason(e, j.src)))
                continue
            if failures:
                failures[0].reason += f"; {j.src.name}, the other file of its RAW+JPEG pair, is enhanced instead"
            return j, photo, time.perf_counter() - t, failures
        if len(failures) == 2:
            failures[0].reason += "; the other file of its RAW+JPEG pair failed too"
        return job, None, 0.0, failures

    def encode(self, job: Job, photo: Photo) -> tuple[list[str], float]:
        t = time.perf_counter()
        notes = images.write_photo(job.dst, photo, job.fmt, self.settings.quality)
        return notes, time.perf_counter() - t

    def go(self, jobs: Sequence[Job]) -> None:
        todo = deque(jobs)
        try:
            while todo or self.decoding:
                while todo and len(self.decoding) < PREFETCH and self.stop is None:
                    job = todo.popleft()
                    self.decoding.append((job, self.pool.submit(self.decode, job)))
                if not self.decoding:
                    break
                job, fut = self.decoding.popleft()
                self.enhance(job, *fut.result())
                self.drain(hold=self.backlog)
                if self.stop:
                    break
            self.drain(hold=0)
        except BaseException:
            self.abort()
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.stop:
            for job in [j for j, _ in self.decoding] + list(todo):
                for j in (job, job.fallback):
                    if j is not None:
                        # a decode that failed after the stop is not this file's failure to remember
                        self.failed_decoding.pop(str(j.src), None)
                        self.settle(FileResult(str(j.src), "failed", reason=f"not started: the batch stopped ({self.stop})"))

    def enhance(self, job: Job, j: Job, photo: Photo | None, dt: float, failures: list[FileResult]) -> None:
        """The network on one decoded photo, and its write queued."""
        for r in failures:
            self.decided(r)
        if photo is None:
            return
        if j is job and job.fallback is not None:
            self.decided(FileResult(str(job.fallback.src), "skipped", reason="RAW+JPEG pair: the other file "
                                   f"({job.src.name}) is enhanced (--raw-jpeg to choose)"))
        res = FileResult(str(j.src), "failed", output=None, megapixels=round(photo.megapixels, 3), settings=self.record)
        res.timings["decode"] = round(dt, 3)
        res.notes += photo.notes  # what the decoder noted reaches the log and the report
        self.drain()  # what is settled before this photo reaches the log before its network runs
        try:
            t = time.perf_counter()
            out = self.enhancer.enhance(photo, on_retry=res.notes.append,
                                        on_tile=lambda done, n, src=str(j.src): self.listener.tiles(src, done, n))
            res.timings["enhance"] = round(time.perf_counter() - t, 3)
            del photo
            folder = j.dst.parent
            if folder not in self.prepared:
                folder.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(folder)
                self.prepared.add(folder)
        except FILE_ERRORS as e:
            res.reason = _reason(e, j.src)
            self.decided(res)
            return
        self.writing.append((res, j, self.pool.submit(self.encode, j, out)))
        self.pending += 1

    def finish_write(self, item: tuple[FileResult, Job | None, Future | None]) -> None:
        res, job, fut = item
        if fut is None:  # decided without a write
            self.settle(res)
            return
        self.pending -= 1
        try:
            notes, dt = fut.result()
            res.status, res.output = "done", str(job.dst)
            res.notes += notes
            res.timings["encode"] = round(dt, 3)
        except FILE_ERRORS as e:
            res.status, res.reason = "failed", f"cannot write {job.dst}: {_reason(e, job.dst)}"
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.stop = "disk full"
        self.settle(res)

    def abort(self) -> None:
        """Interrupted: writes in flight end complete or removed, queued ones are reported."""
        for _, f in self.decoding:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        while self.writing:  # every write has ended (complete, or removed) or never started
            item = self.writing.popleft()
            if item[2] is not None and item[2].cancelled():
                self.pending -= 1
                res = item[0]
                res.status, res.reason = "interrupted", "not done: the run was interrupted"
                self.results.append(res)
            else:
                self.finish_write(item)


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
            report: Path | None = None, listener: Listener | None = None, retry_failed: bool = False,
            pool: Callable | None = None, select: Selection = Selection(),
            rule_for: Callable[[str], Rule] | None = None) -> Outcome:
    """Check everything that can be refused (paths, the report, the model, the device), then
    create and lock the output folders, plan, run, and write the report (also when
    interrupted: SIGINT and SIGTERM raise ``Interrupted`` after the report is written).
    ``select``, ``rule_for``: see ``plan``."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    inputs = [Path(i) for i in inputs]
    roots = output_roots(inputs, output, raw_jpeg, select.suffix)
    report = check_report(Path(report), inputs) if report is not None else None
    check_settings(settings)
    prepare_outputs(roots)
    if report is not None:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{report}: its folder cannot be created ({e.strerror or e})") from None
    results: list[FileResult] = []
    interrupted: Interrupted | None = None
    failed_decoding: dict[str, list[int] | None] = {}
    memory = {r: Failures(r) for r in dict.fromkeys(roots)}
    with OutputLock(roots), _signals_raise():
        # planned under the lock: what a run that just finished wrote is skipped, not redone
        p = plan(inputs, output, fmt, raw_jpeg, overwrite,
                 failed_before=None if retry_failed else _recall(memory), select=select,
                 rule_for=rule_for)
        try:
            run(p, settings, listener, results, failed_decoding, pool=pool)
        except Interrupted as e:
            interrupted = e
        except KeyboardInterrupt:
            interrupted = Interrupted(signal.SIGINT)
        for root, m in memory.items():
            m.update([r for r in results if root in p.root_of.get(Path(r.input), {root})], failed_decoding)
    if interrupted:
        known = {r.input for r in results}
        results += [FileResult(str(j.src), "interrupted", reason="not done: the run was interrupted")
                    for job in p.jobs for j in (job, job.fallback) if j is not None and str(j.src) not in known]
    outcome = Outcome(results, time.perf_counter() - t0, interrupted and str(interrupted))
    if report is not None:
        write_report(report, outcome, settings, started, inputs)
    if interrupted:
        raise interrupted
    return outcome


@dataclass
class DryRun:
    """What ``enhance`` would do, from headers alone: nothing is written."""

    jobs: list[tuple[Job, tuple[int, int]]]  # what would be enhanced, with its size (w, h)
    results: list[FileResult]  # what would be skipped or fail (headers only)
    megapixels: float
    seconds: float  # estimated, model loading included
    how: str  # how the model's speed was found (cached, or calibrated now)
    device: str
    tile: int
    settings: Settings | None = None  # the run's; a job's own (a job file's folder) is ``Job.settings``


def dry_run(*, inputs: Sequence[Path], output: Path | None = None, settings: Settings = Settings(),
            fmt: str | None = None, raw_jpeg: str = "raw", overwrite: bool = False, retry_failed: bool = False,
            warn: Callable[[str], None] = lambda m: None, select: Selection = Selection(),
            rule_for: Callable[[str], Rule] | None = None) -> DryRun:
    """``enhance`` without the work: the plan, every photo's header read, the total megapixels
    and an estimate for this machine. Creates no folder, takes no lock, writes nothing in the
    output folder (the model's calibration is cached in the user's cache folder)."""
    from srpie_cli import estimate

    inputs = [Path(i) for i in inputs]
    roots = output_roots(inputs, output, raw_jpeg, select.suffix)
    check_settings(settings)
    memory = {r: Failures(r) for r in dict.fromkeys(roots)}  # read only
    p = plan(inputs, output, fmt, raw_jpeg, overwrite,
             failed_before=None if retry_failed else _recall(memory), select=select, rule_for=rule_for)
    jobs, results = [], list(p.results)
    for job in p.jobs:
        size = header_sizes([job])[job.src]
        if isinstance(size, str):
            results.append(FileResult(str(job.src), "failed", reason=size))
        elif size[0] * size[1] / 1e6 > settings.max_megapixels:
            results.append(FileResult(str(job.src), "failed", reason=f"refused: {size[0]}x{size[1]} is above the "
                                      f"{settings.max_megapixels:g} MP limit"))
        else:
            jobs.append((job, size))
    mp = sum(w * h for _, (w, h) in jobs) / 1e6
    secs, hows = 0.0, []
    for own in _groups([j for j, _ in jobs], settings):  # a job file's folders: a model each
        sizes = [size for j, size in jobs if (j.settings or settings) == own]
        cost, compiled, tile, how = estimate.cost_for(own, mp, warn)
        secs += estimate.seconds(cost, sizes, own, tile, compiled)
        hows.append(how)
    how = "; ".join(dict.fromkeys(hows))
    from srpie_cli.tiling import pick_device

    return DryRun(jobs, results, mp, secs, how, str(pick_device(settings.device)), tile, settings)


def _recall(memory: dict[Path, Failures]) -> Callable[[Path, Path], str | None]:
    """``plan``'s ``failed_before``: the memory of the output root the file goes to (whatever
    the file resolves to: a folder reached through a link is remembered as any other)."""

    def failed_before(f: Path, root: Path) -> str | None:
        m = memory.get(root)
        return None if m is None else m.reason(f)

    return failed_before


def check_report(report: Path, inputs: Sequence[Path]) -> Path:
    """The report may replace only an earlier srpie report: never an input photo or any
    other file that is in the way. UsageError before any work."""
    if report.is_dir():
        raise UsageError(f"{report}: is a folder; --report wants a file name")
    if any(_resolved(report) == _resolved(i) for i in inputs):
        raise UsageError(f"{report}: is an input; --report would overwrite it")
    if report.exists():
        try:
            with open(report, "rb") as f:
                doc = json.loads(f.read(64 << 20))
            ok = isinstance(doc, dict) and "srpie" in doc and "files" in doc
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"{report}: exists and is not a srpie report; refusing to overwrite it "
                             "(give a new file name)")
    if images.format_of(report):  # a later folder run would take it for a photo
        raise UsageError(f"{report}: a photo's name; --report wants a name like run.json")
    return report


def check_settings(settings: Settings) -> None:
    """An unknown model or device is a UsageError found before any folder is created."""
    from srpie_cli.tiling import pick_device
    from srpie_cli.weights import resolve

    try:
        resolve(settings.model)
        pick_device(settings.device)
    except SrpieError as e:
        raise UsageError(str(e)) from None


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
    data = _json_bytes(doc)
    images.atomic_write(path, lambda f: f.write(data))
