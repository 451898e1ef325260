"""The srpie command line: thin commands that parse and call the library.

``SrpieError`` raised inside the library becomes a one-line message and an exit code here
(2 for usage errors, 1 for failed work); diagnostics go to stderr, results to stdout.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from srpie_cli import SrpieError, __version__, defaults

app = typer.Typer(
    name="srpie",
    help="Batch photo retoucher: every photo of a shoot at 2x, with exposure, colour and tone "
    "fixed and its metadata kept.\n\nExample: srpie enhance ./shoot/   (writes shoot_srpie/)",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

EXIT_FAILED, EXIT_USAGE = 1, 2


class Preset(str, Enum):
    paper = "paper"
    fast = "fast"


class Recipe(str, Enum):
    cpu = "cpu"
    paper = "paper"


class Loss(str, Enum):
    l1 = "l1"
    hybrid = "hybrid"


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool):
    if value:
        out.print(f"srpie {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.", metavar="")] = None,
):
    """srpie: joint 2x super-resolution and perceptual enhancement for photo batches."""


StrengthOpt = Annotated[float, typer.Option(
    min=0.0, max=2.0, metavar="S",
    help="How much of the model's colour and tone correction to apply: 0 none (upscale only), 1 as "
    "trained, up to 2.")]
ADVANCED = "Advanced"  # the help panel of the engineer's knobs
DATA, MODEL = "Data", "Model"  # srpie train's panels


def _readable_help() -> None:
    """Recent Typer prints each parameter's Python type in --help (``<bool>`` after a flag,
    ``<list[Path]>`` after the photos). Show what a user types instead: nothing after a
    flag, the metavar where one is given, else a plain word (N, X, TEXT, PATH)."""
    from typer import core

    words = {"int": "N", "int range": "N", "float": "X", "float range": "X", "str": "TEXT", "Path": "PATH",
             "dir": "DIR", "file": "FILE", "path": "PATH", "list[Path]": "PATH..."}
    for cls in (core.TyperOption, core.TyperArgument):
        original = getattr(cls, "display_type_rich", None)
        if original is None:  # an older Typer: it shows click's metavars already
            continue

        def display(self, ctx, _original=original, _argument=cls is core.TyperArgument):
            if _argument:  # its name is shown already
                return None
            if getattr(self, "is_flag", False) or getattr(self, "is_bool_flag", False):
                return None
            if self.metavar is not None:
                return self.metavar or None
            shown = _original(self, ctx)
            if not shown:
                return shown
            inner = shown.strip("<>").removesuffix("...")
            return words.get(inner, inner.upper() if "|" not in inner else f"[{inner}]")

        cls.display_type_rich = display


_readable_help()


# ----------------------------------------------------------------------------- enhance, preview
# (defined first: --help lists commands in this order)

def _esc(text) -> str:
    """File names and reasons printed literally (a name like "IMG [1].jpg" is not markup)."""
    from rich.markup import escape

    return escape(_shown(text))


def _shown(text) -> str:
    """A file name as it can be printed on one line: bytes that are not UTF-8 (held by Python
    as lone surrogates) shown as escapes instead of failing the write to the terminal, and
    control characters (a newline, a terminal's escape) as their escapes, so a name cannot
    start a log line of its own or drive the terminal."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class OutFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"
    tiff = "tiff"
    webp = "webp"


class RawJpeg(str, Enum):
    raw = "raw"
    jpeg = "jpeg"
    both = "both"


class Compile(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


def _settings(model, device, tile, overlap, tta, half, quality, max_megapixels, threads, compile=Compile.auto,
              strength=defaults.STRENGTH):
    from srpie_cli.inference import Settings

    return Settings(model=model, device=device, tile=tile, overlap=overlap, tta=tta, half=half,
                    quality=quality, max_megapixels=max_megapixels, threads=threads, compile=compile.value,
                    strength=strength)


def _pool(jobs: int | None, ray: str | None):
    """``batch.enhance``'s pool: Ray actors (--ray), worker processes (--jobs N), or None."""
    if ray is not None:
        from srpie_cli.batch import UsageError
        from srpie_cli.cluster import actors

        try:
            return actors(address=None if ray == "local" else ray, count=jobs)
        except UsageError as e:  # no Ray here: said before any folder is made
            raise fail(_esc(e), EXIT_USAGE) from None
    if jobs and jobs > 1:
        from functools import partial

        from srpie_cli.pool import Processes

        return partial(Processes, jobs=jobs)
    return None


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="NAME|FILE", show_default=False,
    help=f"Shipped model (srpie models) or a weights file [default: {defaults.MODEL} on CUDA, "
    f"{defaults.CPU_MODEL} on a CPU].")]
DeviceOpt = Annotated[str, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N.", rich_help_panel=ADVANCED)]
TileOpt = Annotated[Optional[int], typer.Option(
    min=0, metavar="N", rich_help_panel=ADVANCED,
    help=f"Tile side in input pixels (0: whole image at once; default on a CPU: {defaults.CPU_TILE}, "
    f"{defaults.CPU_TILE_BF16} in bfloat16; {defaults.CUDA_TILE} on CUDA; a compiled network may take 32 less "
    "on an axis that this covers with less slack).")]
CompileOpt = Annotated[Compile, typer.Option(
    rich_help_panel=ADVANCED,
    help=f"torch.compile the network: auto (on a CPU for runs of {defaults.COMPILE_MIN_MP:g} MP or more), on, off.")]
OverlapOpt = Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED,
                                         help="Pixels shared by neighbouring tiles (blended).")]
TtaOpt = Annotated[bool, typer.Option("--tta", rich_help_panel=ADVANCED,
                                      help="Average the four flips (4x slower, slightly better).")]
HalfOpt = Annotated[bool, typer.Option("--half", rich_help_panel=ADVANCED,
                                       help="float16 on CUDA (ignored with a warning on the CPU).")]


Precision = Enum("Precision", {p: p for p in defaults.PRECISIONS}, type=str)


PrecisionOpt = Annotated[Precision, typer.Option(
    rich_help_panel=ADVANCED, help="auto: on a CPU with AVX512-BF16 or AMX, bfloat16, and int8 convolutions where "
    "it also has VNNI and the model a calibration (srpie calibrate); float16 on CUDA with --half; else float32. "
    "float32 to force it.")]
MaxMpOpt = Annotated[float, typer.Option("--max-megapixels", min=0.01, metavar="MP",
                                         help="Refuse larger inputs (decompression bombs).")]
ThreadsOpt = Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED,
                                         help="CPU threads for the network (0: all; 1-2 on a busy shared machine).")]
QualityOpt = Annotated[int, typer.Option(min=1, max=100, metavar="Q", help="JPEG/WebP quality (4:4:4 chroma).")]
JobsOpt = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", min=1, metavar="N", rich_help_panel=ADVANCED,
    help="Worker processes, each with its own model and an equal share of the cores, or --threads each "
    "(many-core servers); with --ray, the number of actors (default: one per GPU, or one per 4 CPUs).")]
RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", metavar="ADDRESS", rich_help_panel=ADVANCED,
    help='Process the photos on a Ray cluster: "local" (a Ray instance on this machine), "auto", HOST:PORT or '
    'ray://HOST:PORT (a running cluster). Paths must be the same on every node. Needs pip install "srpie\\[ray]".')]


def _sig(x: float) -> str:
    """A speed with three significant digits: 0.0138, 1.25, 412 (never 0.01)."""
    return f"{x:.3g}"


def _duration(seconds: float) -> str:
    """About 40 s, 3 min, 1 h 20 min: an estimate reads in round figures."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60):.0f} min"


class _Lines:
    """Plain line-per-file log on stderr (cron, pipes)."""

    wants_estimate = True  # the header says the run's megapixels and an estimate (batch.Listener)

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def start(self, total, model, device):
        if not self.quiet:
            default = " (the default on this device)" if model.get("default_for") else ""
            err.print(f"srpie {__version__}: {total} photo(s), model {model.get('name')}{default}, {device}, "
                      f"{model.get('precision', 'float32')}", highlight=False)

    def sizes(self, megapixels, seconds):
        if not self.quiet:
            eta = f", about {_duration(seconds)} on this machine" if seconds is not None else ""
            err.print(f"{sum(megapixels.values()):.1f} MP to enhance{eta}", highlight=False)

    def tiles(self, src, done, total):
        pass

    def warn(self, message):
        err.print(f"[bold yellow]warning:[/] {_esc(message)}", highlight=False, soft_wrap=True)

    def file_done(self, r):
        if r.status == "failed":
            err.print(f"[red]failed[/] {_esc(r.input)}: {_esc(r.reason)}", highlight=False, soft_wrap=True)
        elif not self.quiet:
            secs = sum(r.timings.values())
            speed = f", {_sig(r.megapixels / r.timings['enhance'])} MP/s" if r.timings.get("enhance") else ""
            detail = {"done": f"-> {r.output} ({r.megapixels:.1f} MP, {secs:.1f} s{speed})",
                      "skipped": f"({r.reason})"}.get(r.status, r.reason or "")
            err.print(_shown(f"{r.status} {r.input} {detail}"), highlight=False, soft_wrap=True, markup=False)
            for note in r.notes:
                err.print(_shown(f"  note: {note}"), highlight=False, soft_wrap=True, markup=False)


class _Bar(_Lines):
    """A rich progress bar on a terminal, in megapixels: a large frame moves it tile by tile,
    and the time left counts the megapixels left, not the files."""

    def __init__(self):
        super().__init__(quiet=False)
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]enhance"), BarColumn(), TextColumn("{task.fields[files]}"),
                                 TextColumn("{task.fields[mps]} MP/s"), TimeRemainingColumn(), console=err)
        self.task = None
        self.mp, self.t0, self.total, self.n = 0.0, None, 0, 0
        self.per_file: dict[str, float] | None = None  # megapixels of each job, once known
        self.finished = 0.0  # megapixels of the jobs settled

    def start(self, total, model, device):
        import time

        super().start(total, model, device)
        self.t0, self.total = time.perf_counter(), total
        self.task = self.progress.add_task("enhance", total=total, mps="-", files=f"0/{total} photos")
        self.progress.start()

    def sizes(self, megapixels, seconds):
        self.progress.console.print(f"{sum(megapixels.values()):.1f} MP to enhance"
                                    + (f", about {_duration(seconds)} on this machine" if seconds is not None else ""),
                                    highlight=False)
        self.per_file = megapixels
        self.progress.update(self.task, total=max(sum(megapixels.values()), 1e-9), completed=0)

    def tiles(self, src, done, total):
        if self.per_file is not None and total:
            self.progress.update(self.task, completed=self.finished + self.per_file.get(src, 0.0) * done / total)

    def file_done(self, r):
        import time

        if r.status == "failed":
            self.progress.console.print(f"[red]failed[/] {_esc(r.input)}: {_esc(r.reason)}", highlight=False, soft_wrap=True)
        if self.task is None:  # the plan's own results come before the bar starts
            return
        self.n += 1
        self.mp += r.megapixels if r.status == "done" else 0.0
        elapsed = max(time.perf_counter() - self.t0, 1e-6)
        fields = {"mps": _sig(self.mp / elapsed), "files": f"{self.n}/{self.total} photos"}
        if self.per_file is None:
            self.progress.update(self.task, advance=1, **fields)
        else:
            self.finished += self.per_file.get(r.input, 0.0)
            self.progress.update(self.task, completed=self.finished, **fields)

    def stop(self):
        self.progress.stop()


def _summary(outcome, report):
    """One row per status, each file counted once, so the rows add up to the files seen; the
    lines below say what the counts hide (pairs, files that failed in an earlier run)."""
    table = Table(title="srpie enhance", show_header=True)
    for col in ("status", "files"):
        table.add_column(col)
    for status in ("done", "skipped", "failed", "interrupted"):
        n = outcome.count(status)
        if n or status in ("done", "failed"):
            table.add_row(status, str(n))
    table.add_row("total", str(len(outcome.results)))
    mp = sum(r.megapixels for r in outcome.results if r.status == "done")
    out.print(table)
    speed = f" ({_sig(mp / outcome.seconds)} MP/s)" if mp and outcome.seconds > 0 else ""
    out.print(f"{mp:.1f} MP in {outcome.seconds:.1f} s{speed}" + (f"; report: {_shown(report)}" if report else ""),
              highlight=False, soft_wrap=True, markup=False)

    def count(status, *words):
        return sum(1 for r in outcome.results if r.status == status and all(w in (r.reason or "") for w in words))

    lines = [
        (count("skipped", "RAW+JPEG pair"), "file(s) of RAW+JPEG pairs skipped: the other file of each pair was "
         "enhanced (--raw-jpeg)"),
        (count("failed", "is enhanced instead"), "file(s) of RAW+JPEG pairs failed: the other file of each pair "
         "was enhanced instead"),
        (count("failed", "failed too"), "RAW+JPEG pair(s) failed both files: nothing delivered for them"),
        (count("failed", "failed before"), "file(s) failed in an earlier run and are unchanged: not tried again "
         "(--retry-failed)"),
    ]
    for n, text in lines:
        if n:
            out.print(f"{n} {text}", highlight=False, soft_wrap=True)


@app.command()
def enhance(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(metavar="PHOTO_OR_FOLDER...", show_default=False,
                                                help="Photos and folders (folders are walked recursively).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", file_okay=False, metavar="DIR",
        help="Output folder (default: beside the input, e.g. shoot_srpie/).")] = None,
    model: ModelOpt = None,
    strength: StrengthOpt = defaults.STRENGTH,
    scale: Annotated[int, typer.Option(
        min=1, max=2, metavar="1|2", help="2: upscale (the default); 1: apply the look alone, at the photo's own "
        "size.")] = defaults.SCALE,
    fmt: Annotated[Optional[OutFormat], typer.Option(
        "--format", help="Output format (default: as the input; RAW -> 16-bit TIFF, HEIC and AVIF -> JPEG).")] = None,
    quality: QualityOpt = defaults.QUALITY,
    suffix: Annotated[str, typer.Option(
        metavar="TEXT", help="Added to each output's name (_2x: IMG_0001_2x.jpg); with one, -o may be the input "
        "folder and the outputs sit beside the originals.")] = "",
    include: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Only files matching (relative to the input folder, any case), e.g. '*.CR3'; "
        "repeatable.")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Leave out files and folders matching, e.g. 'rejects/'; repeatable.")] = None,
    min_rating: Annotated[Optional[int], typer.Option(
        min=0, max=5, metavar="N", help="Only frames rated N or more in their XMP sidecar (Lightroom, darktable, "
        "Capture One); rejected frames are never enhanced.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        dir_okay=False, metavar="FILE.toml", help="Job file of options and per-folder settings (default: "
        "srpie.toml in the input folder, if there is one); the command line wins.")] = None,
    raw_jpeg: Annotated[RawJpeg, typer.Option(
        "--raw-jpeg", help="RAW+JPEG pairs of one exposure: enhance the raw, the jpeg, or both; the other file "
        "stands in when the chosen one cannot be decoded.")] = RawJpeg.raw,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Redo outputs srpie wrote before (default: skip them, resume). A file in the way that "
        "srpie did not write is never replaced.")] = False,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Try again the files that failed in an earlier run (default: unchanged ones are "
        "listed as failed before, without the work).")] = False,
    report: Annotated[Optional[Path], typer.Option(
        dir_okay=False, metavar="FILE.json", help="Write a JSON report: per-file status, output, timings, notes. "
        "Replaces only an earlier srpie report.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be done, skipped and failed (headers only), the megapixels and how long "
        "it would take here; write nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and failures.")] = False,
    max_megapixels: MaxMpOpt = defaults.MAX_MEGAPIXELS,
    device: DeviceOpt = defaults.DEVICE,
    tile: TileOpt = None,
    overlap: OverlapOpt = defaults.OVERLAP,
    tta: TtaOpt = False,
    half: HalfOpt = False,
    precision: PrecisionOpt = Precision.auto,
    threads: ThreadsOpt = 0,
    compile: CompileOpt = Compile.auto,
    jobs: JobsOpt = None,
    ray: RayOpt = None,
):
    """Enhance every photo at 2x, keeping its metadata; skips what is done, goes on past bad files.

    Example: srpie enhance ./shoot/ -o /srv/enhanced --report run.json
    """
    opts = dict(output=output, model=model, strength=strength, fmt=fmt.value if fmt else None, quality=quality,
                suffix=suffix, include=tuple(include or ()), exclude=tuple(exclude or ()), min_rating=min_rating,
                raw_jpeg=raw_jpeg.value, overwrite=overwrite, max_megapixels=max_megapixels, device=device,
                tile=tile, overlap=overlap, tta=tta, half=half, threads=threads, compile=compile.value,
                precision=precision.value, scale=scale)
    # given on the command line: these win over a job file (by name: Typer may bundle its own click)
    given = {name for name in opts
             if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    _enhance(paths, opts, given, config=config, report=report, retry_failed=retry_failed, dry_run=dry_run,
             quiet=quiet, pool=_pool(jobs, ray))


def _enhance(paths, opts: dict, given: set[str], *, config, report, retry_failed, dry_run, quiet, pool):
    """enhance's work: the job file under the command line, then a dry run or the run."""
    from srpie_cli import jobfile
    from srpie_cli.batch import Interrupted, Selection, UsageError
    from srpie_cli.batch import enhance as run_enhance
    from srpie_cli.inference import Settings

    rule_for = None
    try:
        if (found := jobfile.find(paths, config)) is not None:
            job = jobfile.load(found)
            opts = jobfile.merged(job, opts, given)
        settings = Settings(**{k: opts[k] for k in ("model", "device", "tile", "overlap", "tta", "half", "quality",
                                                    "max_megapixels", "threads", "compile", "strength",
                                                    "precision", "scale")})
        select = Selection(opts["include"], opts["exclude"], opts["suffix"], opts["min_rating"])
        if found is not None and job.folders:
            rule_for = jobfile.rules(job, opts, given, settings, select)
    except jobfile.JobFileError as e:
        raise fail(_esc(e), EXIT_USAGE) from None
    common = dict(inputs=paths, output=opts["output"], fmt=opts["fmt"], raw_jpeg=opts["raw_jpeg"],
                  overwrite=opts["overwrite"], retry_failed=retry_failed, settings=settings, select=select,
                  rule_for=rule_for)
    if dry_run:
        raise typer.Exit(_dry_run(**common))
    listener = _Bar() if (err.is_terminal and not quiet) else _Lines(quiet)
    try:
        outcome = run_enhance(**common, report=report, listener=listener, pool=pool)
    except UsageError as e:
        raise fail(_esc(e), EXIT_USAGE) from None
    except SrpieError as e:
        raise fail(_esc(e), EXIT_FAILED) from None
    except Interrupted as e:
        err.print(f"interrupted ({e}): finished outputs are complete; run again to do the rest", highlight=False)
        raise typer.Exit(128 + e.signum) from None
    finally:
        if isinstance(listener, _Bar):
            listener.stop()
    if not quiet:
        _summary(outcome, report)
    raise typer.Exit(outcome.exit_code)


def _dry_run(**kw) -> int:
    """``enhance --dry-run``: the plan on stdout, one line a file, then the totals and the estimate."""
    from dataclasses import asdict

    from srpie_cli.batch import UsageError, dry_run

    try:
        d = dry_run(**kw, warn=lambda m: err.print(f"[bold yellow]warning:[/] {_esc(m)}", highlight=False))
    except UsageError as e:
        raise fail(_esc(e), EXIT_USAGE) from None
    except SrpieError as e:
        raise fail(_esc(e), EXIT_FAILED) from None
    for job, (w, h) in d.jobs:
        own = "" if job.settings is None else "".join(  # a job file's folder settings
            f", {k} {v}" for k, v in asdict(job.settings).items() if getattr(d.settings, k) != v)
        out.print(_shown(f"would enhance {job.src} -> {job.dst} ({w}x{h}, {w * h / 1e6:.1f} MP{own})"),
                  highlight=False, soft_wrap=True, markup=False)
    for r in d.results:
        verb = {"skipped": "would skip", "failed": "would fail"}.get(r.status, r.status)
        out.print(_shown(f"{verb} {r.input}: {r.reason}"), highlight=False, soft_wrap=True, markup=False)
    skipped = sum(r.status == "skipped" for r in d.results)
    out.print(f"{len(d.jobs)} to enhance ({d.megapixels:.1f} MP), {skipped} to skip, {len(d.results) - skipped} "
              f"would fail; about {_duration(d.seconds)} on {d.device} ({d.how}); nothing written", highlight=False)
    return 0


@app.command()
def preview(
    photo: Annotated[Path, typer.Argument(exists=True, metavar="PHOTO_OR_FOLDER", show_default=False,
                                          help="The photo to judge, or a folder: one contact sheet of every frame.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", dir_okay=False, metavar="FILE",
        help="Sheet to write, .png or .jpg (default: <name>_srpie_preview.png beside the photo; "
        "<folder>_srpie_preview.jpg beside the folder).")] = None,
    model: ModelOpt = None,
    strength: Annotated[str, typer.Option(
        metavar="S[,S...]", help="How much of the model's colour and tone correction to apply (0 none, 1 as trained, "
        "up to 2); several, e.g. 0,0.5,1, put one panel each side by side.")] = f"{defaults.STRENGTH:g}",
    crop: Annotated[int, typer.Option(min=8, metavar="N", help="Side of the zoomed crop, in input pixels.")] = 64,
    zoom: Annotated[int, typer.Option(min=1, max=8, metavar="N", help="Magnification of the crop.")] = 3,
    at: Annotated[Optional[str], typer.Option(
        metavar="X,Y", help="Crop centre as fractions of the width and height (default 0.5,0.5).")] = None,
    max_megapixels: MaxMpOpt = defaults.MAX_MEGAPIXELS,
    device: DeviceOpt = defaults.DEVICE,
    tile: TileOpt = None,
    overlap: OverlapOpt = defaults.OVERLAP,
    tta: TtaOpt = False,
    half: HalfOpt = False,
    threads: ThreadsOpt = 0,
):
    """A before/after sheet of one photo (bicubic 2x beside srpie 2x, with a zoomed crop of each),
    or a contact sheet of a whole folder.

    Example: srpie preview IMG_0001.jpg --strength 0,0.5,1   or   srpie preview ./shoot/
    """
    from srpie_cli.preview import contact_sheet
    from srpie_cli.preview import preview as make_preview

    strengths = _strengths(strength)
    centre = _centre(at)
    settings = _settings(model, device, tile, overlap, tta, half, defaults.QUALITY, max_megapixels, threads,
                         strength=strengths[0])

    def log(message):
        err.print(f"[bold yellow]warning:[/] {_esc(message)}", highlight=False)

    try:
        if photo.is_dir():
            if len(strengths) > 1:
                raise fail("several strengths go on one photo's sheet: give a photo, not a folder")
            path, left_out = contact_sheet(folder=photo, output=output, settings=settings, log=log)
            for line in left_out:
                err.print(f"left out {_esc(line)}", highlight=False, soft_wrap=True)
        else:
            path = make_preview(photo=photo, output=output, crop=crop, zoom=zoom, at=centre, settings=settings, log=log,
                                strengths=strengths if len(strengths) > 1 else None)
    except SrpieError as e:
        raise fail(_esc(e), EXIT_FAILED) from None
    out.print(str(path), highlight=False, soft_wrap=True)


def _strengths(text: str) -> list[float]:
    """``--strength 0,0.5,1`` as numbers between 0 and 2 (exit 2 otherwise)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 <= v <= 2 for v in values):
        raise fail(f"--strength {text!r}: expected numbers between 0 and 2, e.g. 0.5 or 0,0.5,1")
    return values


def _centre(at: str | None) -> tuple[float, float] | None:
    if not at:
        return None
    try:
        cx, cy = (float(v) for v in at.split(","))
    except ValueError:
        cx = cy = -1.0
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        raise fail(f"--at {at!r}: expected X,Y fractions between 0 and 1, e.g. 0.3,0.6")
    return cx, cy


@app.command()
def models():
    """The shipped models: what each does to a photo, its size and how fast it runs."""
    from srpie_cli.model import count_parameters
    from srpie_cli.weights import SHIPPED, load_model

    table = Table(title="srpie models", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max(map(len, SHIPPED)))  # a name is typed: never cut it
    table.add_column("what it does to a photo", ratio=3)
    table.add_column("speed", ratio=2)
    table.add_column("params", justify="right", no_wrap=True)
    notes = []
    for name, entry in SHIPPED.items():
        default = {defaults.MODEL: "\n(default on CUDA)", defaults.CPU_MODEL: "\n(default on a CPU)"}.get(name, "")
        try:
            net, meta = load_model(name)
        except SrpieError as e:
            table.add_row(name, entry.does + default, entry.speed, "-")
            notes.append(f"{name}: {e}")
            continue
        if meta["untrained"]:
            notes.append(f"{name}: weights file not installed (an untrained network: bicubic only)")
        table.add_row(name, entry.does + default, entry.speed, f"{count_parameters(net) / 1e3:,.0f} k")
    out.print(table)
    for note in notes:
        err.print(f"[bold yellow]warning:[/] {_esc(note)}", highlight=False)
    out.print("Scores and how each was trained: weights/README.md (installed beside the weights).",
              highlight=False)


@app.command("eval")
def evaluate(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="HR images (SR protocol) or a pairs folder with --pairs.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Shipped model name or weights file (default: the pure upscaler, which the SR protocol scores).")] = defaults.EVAL_MODEL,
    pairs: Annotated[bool, typer.Option("--pairs", help="FOLDER holds before/ and after/: score RGB against the after.")] = False,
    holdout: Annotated[int, typer.Option(min=0, help="With --pairs: score only the last N pairs (the held-out ones); 0: all.")] = 0,
    tta: Annotated[bool, typer.Option(help="Self-ensemble over four flips.")] = False,
    strength: StrengthOpt = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Score a model beside bicubic: PSNR/SSIM on Y (2x SR protocol) or RGB on pairs.

    Example: srpie eval pairs/ --pairs --holdout 3 --model house.pt
    """
    from srpie_cli.data import PairSet
    from srpie_cli.evaluate import evaluate_pairs, evaluate_sr, mean_score
    from srpie_cli.model import with_strength
    from srpie_cli.tiling import TileOptions
    from srpie_cli.weights import load_model

    try:
        net, meta = load_model(model)
        with_strength(net, strength)
        if meta["untrained"]:
            err.print(f"[bold yellow]warning:[/] {model}: no trained weights shipped; scoring an UNTRAINED network")
        opts = TileOptions(tile=0, tta=tta)
        if pairs:
            train_set, held = PairSet.from_folders([folder], net.scale, holdout)
            scores = evaluate_pairs(net, held if holdout else train_set, opts)
        else:
            scores = evaluate_sr(net, folder, opts)
    except SrpieError as e:
        raise fail(str(e), EXIT_FAILED) from None
    if not scores:
        raise fail(f"{folder}: no images to score", EXIT_FAILED)
    mean = mean_score(scores)
    metric = "RGB" if pairs else f"Y, {net.scale}px border"
    if as_json:
        out.print_json(json.dumps({"model": model, "folder": str(folder), "metric": metric, "mean": mean,
                                   "images": [vars(s) for s in scores]}))
        return
    table = Table(title=f"{model} on {folder.name} ({metric})")
    for col in ("image", "PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM", "colour shift"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for s in scores:
        table.add_row(s.name, f"{s.psnr:.2f}", f"{s.ssim:.4f}", f"{s.bicubic_psnr:.2f}", f"{s.bicubic_ssim:.4f}",
                      f"{s.colour_shift:.1f}")
    table.add_row("[bold]mean", f"[bold]{mean['psnr']:.2f}", f"[bold]{mean['ssim']:.4f}",
                  f"{mean['bicubic_psnr']:.2f}", f"{mean['bicubic_ssim']:.4f}", f"{mean['colour_shift']:.1f}")
    table.caption = "colour shift: the largest change of a channel's mean against bicubic, in 8-bit levels"
    out.print(table)


def _train_config(opts: dict):
    """srpie train's options as a TrainConfig: the recipe's defaults, then what was given."""
    from srpie_cli.train import TrainConfig

    rec = TrainConfig.recipe(opts["recipe"].value)
    rec.update({k: opts[k] for k in ("batch_size", "patch", "lr") if opts[k] is not None})
    same = ("photos", "pairs", "init", "du_features", "global_context", "global_skip", "rrelu", "look_only", "look_from",
            "steps", "minutes", "ema", "vgg", "val", "holdout", "val_pairs", "pair_fraction", "clean_fraction",
            "val_every", "resume", "threads", "device", "workers", "seed")
    kw = {k: opts[k] for k in same} | {"photos": opts["photos"] or [], "pairs": opts["pairs"] or []}
    out = opts["out_path"]
    return TrainConfig(out=out, run_dir=opts["run_dir"] or Path("runs") / out.stem, enhance=not opts["sr_only"],
                       preset=opts["preset"].value, loss=opts["loss"].value,
                       command="srpie " + " ".join(shlex.quote(a) for a in sys.argv[1:]), **kw, **rec)


@app.command()
def train(
    out_path: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.pt",
                                           help="Weights file to write (best by validation).")],
    pairs: Annotated[Optional[list[Path]], typer.Option(
        exists=True, file_okay=False, metavar="DIR", rich_help_panel=DATA,
        help="Real pairs: before/ and after/ subfolders; repeatable.")] = None,
    photos: Annotated[Optional[list[Path]], typer.Option(
        exists=True, file_okay=False, metavar="DIR", rich_help_panel=DATA,
        help="Good photos, damaged into synthetic pairs; repeatable.")] = None,
    sr_only: Annotated[bool, typer.Option("--sr-only", rich_help_panel=DATA,
                                          help="Synthetic pairs are only downscaled (pure super-resolution).")] = False,
    holdout: Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=DATA,
                                         help="Pairs per folder held out (the last N by name).")] = 3,
    val_pairs: Annotated[int, typer.Option(
        min=0, metavar="N", rich_help_panel=DATA,
        help="Pairs per folder, before the held-out ones, to choose the best file on (0: the held-out ones).")] = 0,
    val: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, metavar="DIR", rich_help_panel=DATA,
                                                help="HR folder scored with the SR protocol.")] = None,
    pair_fraction: Annotated[float, typer.Option(min=0, max=1, metavar="F", rich_help_panel=DATA,
                                                 help="Share of each batch from real pairs.")] = defaults.LOOK_PAIR_FRACTION,
    clean_fraction: Annotated[float, typer.Option(
        min=0, max=1, metavar="F", rich_help_panel=DATA,
        help="Share of synthetic pairs left undamaged (good photos stay as they are).")] = 0.3,
    init: Annotated[Optional[str], typer.Option(metavar="NAME|FILE", rich_help_panel=MODEL,
                                                help="Start from these weights: fine-tuning.")] = None,
    look_only: Annotated[bool, typer.Option(
        "--look-only", rich_help_panel=MODEL,
        help="With --init: train only the look; the upscaler stays as it is (a step costs about half).")] = False,
    look_from: Annotated[Optional[str], typer.Option(
        metavar="NAME|FILE", rich_help_panel=MODEL,
        help="With --init: take the look from this model, on the --init model's upscaler.")] = None,
    preset: Annotated[Preset, typer.Option(rich_help_panel=MODEL, help="Network size, from scratch.")] = Preset.paper,
    du_features: Annotated[bool, typer.Option("--du-features", rich_help_panel=MODEL,
                                              help="DUNet also sees MBFNet's features (docs/network.md).")] = False,
    global_context: Annotated[bool, typer.Option(
        "--global-context", rich_help_panel=MODEL,
        help="The look also sees a thumbnail of the whole photo (docs/network.md).")] = False,
    global_skip: Annotated[bool, typer.Option(hidden=True, help="--no-global-skip: the paper's ablation.")] = True,
    rrelu: Annotated[bool, typer.Option(hidden=True, help="--no-rrelu: RReLU fixed at its inference slope.")] = True,
    recipe: Annotated[Recipe, typer.Option(hidden=True, help="cpu (default) or paper: the paper's lr 1e-4, 64 px.")] = Recipe.cpu,
    steps: Annotated[int, typer.Option(min=1, metavar="N", help="Optimiser steps (the schedule spans them).")] = 2000,
    minutes: Annotated[Optional[float], typer.Option(
        metavar="M", help="Time budget, resumes included; the schedule ends with --steps or --minutes.")] = None,
    loss: Annotated[Loss, typer.Option(help="l1, or the paper's hybrid loss.")] = Loss.l1,
    ema: Annotated[float, typer.Option(
        min=0, max=0.99999, metavar="DECAY",
        help="Write an exponential moving average of the weights (0.999: about 1,000 steps); 0: off.")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(min=1, metavar="N", rich_help_panel=ADVANCED,
                                                      help="Patches per step.")] = None,
    patch: Annotated[Optional[int], typer.Option(min=8, metavar="N", rich_help_panel=ADVANCED,
                                                 help="Low-resolution patch side.")] = None,
    lr: Annotated[Optional[float], typer.Option(metavar="X", rich_help_panel=ADVANCED,
                                                help="Peak learning rate.")] = None,
    vgg: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, metavar="FILE", rich_help_panel=ADVANCED,
                                                help="Local VGG-19 weights for the content loss.")] = None,
    val_every: Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=ADVANCED,
                                           help="Steps between validations.")] = 250,
    run_dir: Annotated[Optional[Path], typer.Option(metavar="DIR", rich_help_panel=ADVANCED,
                                                    help="Checkpoints (default: runs/<out name>).")] = None,
    threads: Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED,
                                         help="CPU threads (0: all).")] = 0,
    device: Annotated[str, typer.Option(metavar="DEVICE", rich_help_panel=ADVANCED,
                                        help="auto, cpu, cuda or cuda:N.")] = defaults.DEVICE,
    workers: Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED,
                                         help="Processes making batches (a GPU needs several).")] = 0,
    seed: Annotated[int, typer.Option(metavar="N", rich_help_panel=ADVANCED, help="Random seed.")] = 0,
):
    """Train or fine-tune a model: a house look from your own before/after pairs.

    Example: srpie train --pairs pairs/ --init srpie-x2 --look-only --steps 1000 --out house.pt
    """
    from srpie_cli.train import check_config
    from srpie_cli.train import train as run_train

    cfg = _train_config(locals())
    try:
        check_config(cfg)  # before any folder is made: nothing to train on, an unknown model or device
    except SrpieError as e:
        raise fail(_esc(e), EXIT_USAGE) from None
    try:
        if err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.1e}"), TimeRemainingColumn())
            with Progress(*columns, console=err) as bar:
                # with a time budget the step count is not known ahead: the bar shows progress only
                task = bar.add_task("train", total=None if cfg.minutes else cfg.steps, loss=0.0, lr=cfg.lr)
                summary = run_train(cfg, log=lambda m: bar.console.print(m, highlight=False),
                                    on_step=lambda step, loss, lr: bar.update(task, completed=step, loss=loss, lr=lr))
        else:  # cron / nohup: one line every 20 steps
            summary = run_train(cfg, log=lambda m: err.print(m, highlight=False, soft_wrap=True))
    except SrpieError as e:
        raise fail(str(e), EXIT_FAILED) from None
    out.print(json.dumps(summary["scores"], indent=1))


@app.command("train-look")
def train_look(
    out_path: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.pt", help="Weights file to write.")],
    init: Annotated[str, typer.Option(metavar="NAME|FILE", help="The upscaler to put the look in front of "
                                      "(a model with a look: the look is kept, its tone stage trained).")
                    ] = "srpie-x2-sr",
    pairs: Annotated[Optional[list[Path]], typer.Option(
        exists=True, file_okay=False, metavar="DIR", help="Real pairs: before/ and after/ subfolders; repeatable.")] = None,
    photos: Annotated[Optional[list[Path]], typer.Option(
        exists=True, file_okay=False, metavar="DIR", help="Good photos, damaged into synthetic pairs; repeatable.")] = None,
    tone_pairs: Annotated[Optional[list[Path]], typer.Option(
        exists=True, file_okay=False, metavar="DIR",
        help="Dark frames and their good versions (before/ and after/): a tone stage (exposure, noise "
        "reduction) is trained after the look; repeatable.")] = None,
    holdout: Annotated[int, typer.Option(min=0, metavar="N", help="Pairs per folder held out and scored.")] = 3,
    steps: Annotated[int, typer.Option(min=1, metavar="N", help="Optimiser steps.")] = defaults.LOOK_STEPS,
    val: Annotated[Optional[list[Path]], typer.Option(exists=True, file_okay=False, metavar="DIR",
                                                      help="HR folders scored with the SR protocol.")] = None,
    pair_fraction: Annotated[float, typer.Option(min=0, max=1, metavar="F", rich_help_panel=ADVANCED,
                                                 help="Share of each batch from real pairs.")] = defaults.LOOK_PAIR_FRACTION,
    clean_fraction: Annotated[float, typer.Option(min=0, max=1, metavar="F", rich_help_panel=ADVANCED,
                                                  help="Share of synthetic samples left undamaged.")] = defaults.LOOK_CLEAN_FRACTION,
    exclude: Annotated[Optional[list[str]], typer.Option(metavar="NAME", rich_help_panel=ADVANCED,
                                                         help="A pair never trained on (k-fold); repeatable.")] = None,
    tone_steps: Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED,
                                            help="Steps of the tone stage (0: keep the --init model's).")
                          ] = defaults.LOOK_TONE_STEPS,
    denoise_steps: Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED,
                                               help="Steps of the tone stage's denoiser, trained last on the "
                                               "--tone-pairs (0: none).")] = 0,
    look_from: Annotated[Optional[str], typer.Option(
        metavar="NAME|FILE", rich_help_panel=ADVANCED,
        help="Train nothing: put this model's look (with its tone stage) in front of --init's upscaler, "
        "score it and write it.")] = None,
    dark: Annotated[float, typer.Option(min=0, max=1, metavar="F", rich_help_panel=ADVANCED,
                                        help="Share of the tone stage's photos made dark, noisy frames.")
                    ] = defaults.LOOK_DARK,
    cast: Annotated[float, typer.Option(min=0, max=1, metavar="F", rich_help_panel=ADVANCED,
                                        help="Strongest synthetic colour cast (log gain).")] = defaults.LOOK_CAST,
    lr: Annotated[float, typer.Option(min=0, metavar="LR", rich_help_panel=ADVANCED,
                                      help="Peak learning rate (cosine-decayed) of the look and of its tone stage.")
                  ] = defaults.LOOK_LR,
    seed: Annotated[int, typer.Option(metavar="N", rich_help_panel=ADVANCED, help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=ADVANCED, help="CPU threads (0: all).")] = 0,
):
    """Train a global look (one colour mapping per photo, set from its thumbnail) and put it in
    front of an upscaler: a minute or two on a CPU.

    Example: srpie train-look --pairs pairs/ --photos good/ --init srpie-x2-sr --out house.pt
    """
    import torch

    from srpie_cli.look import LookConfig, make_model

    if not pairs and not photos and not tone_pairs and not look_from:
        raise fail("nothing to train the look on: give --pairs, --photos and/or --tone-pairs folders")
    if threads:
        torch.set_num_threads(threads)
    cfg = LookConfig(photos=photos or [], pairs=pairs or [], holdout=holdout, exclude=exclude or [], steps=steps,
                     pair_fraction=pair_fraction, clean_fraction=clean_fraction, tone_pairs=tone_pairs or [],
                     tone_steps=tone_steps, denoise_steps=denoise_steps, dark=dark, cast=cast, lr=lr, seed=seed)
    command = "srpie " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        meta = make_model(cfg, init, out_path, command, val or [], log=lambda m: err.print(m, highlight=False),
                          look_from=look_from)
    except SrpieError as e:
        raise fail(_esc(e), EXIT_FAILED) from None
    out.print(json.dumps(meta["scores"], indent=1))



@app.command()
def calibrate(
    model: Annotated[str, typer.Argument(metavar="NAME|FILE", help="Shipped model name or weights file.")],
    photos: Annotated[list[Path], typer.Argument(exists=True, metavar="PHOTOS...",
                                                 help="Photos or folders like the ones it will enhance: a few dozen.")],
):
    """Measure a model's feature ranges for int8 (VNNI) on this kind of photo: writes
    NAME.int8.json beside its weights file, with which --precision auto runs int8 on a CPU that
    has it. Every shipped model comes calibrated.

    Example: srpie calibrate house.pt shoots/2026-05-wedding/
    """
    from srpie_cli.batch import walk
    from srpie_cli.int8 import calibrate_photos, calibration_path, save
    from srpie_cli.weights import load_model, resolve, weights_dir

    try:
        path = resolve(model)
        if path is None:
            raise SrpieError(f"{model}: its weights file is not installed (looked in {weights_dir()})")
        net, _ = load_model(path)
        errors: list = []
        files = [f for p in photos for f in (walk(p, set(), errors) if p.is_dir() else [p])]
        warn = lambda m: err.print(f"[bold yellow]warning:[/] {_esc(m)}", highlight=False)  # noqa: E731
        for e in errors:
            warn(f"{e.input}: {e.reason}")
        convs, seen = calibrate_photos(net, files, warn)
        if not seen:
            raise SrpieError("no photo could be read: nothing to calibrate on")
    except SrpieError as e:
        raise fail(_esc(e), EXIT_FAILED) from None
    target = calibration_path(path)
    command = " ".join(shlex.quote(str(a)) for a in ["srpie", "calibrate", model, *photos])
    try:
        save(target, net, convs, {"model": model, "photos": seen, "command": command})
    except OSError as e:
        raise fail(f"{_esc(target)}: cannot write the calibration ({_esc(e.strerror or e)})", EXIT_FAILED) from None
    out.print(f"{seen} photos, {len(convs)} convolutions: {_esc(target)}", highlight=False)
