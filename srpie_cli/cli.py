"""The srpie command line: thin commands that parse and call the library.

``SrpieError`` raised inside the library becomes a one-line message and an exit code here
(2 for usage errors, 1 for failed work); diagnostics go to stderr, results to stdout.
"""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from srpie_cli import SrpieError, __version__

app = typer.Typer(
    name="srpie",
    help="Batch photo retoucher: Deep SR-PIE 2x super-resolution and enhancement.",
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
                                                    help="Show the version and exit.")] = None,
):
    """srpie: joint 2x super-resolution and perceptual enhancement for photo batches."""


@app.command()
def train(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Weights file to write (best by validation).")],
    photos: Annotated[Optional[list[Path]], typer.Option(exists=True, file_okay=False, help="Folder of good photos (synthetic pairs); repeatable.")] = None,
    pairs: Annotated[Optional[list[Path]], typer.Option(exists=True, file_okay=False, help="Folder of real pairs: before/ and after/ subfolders; repeatable.")] = None,
    sr_only: Annotated[bool, typer.Option("--sr-only", help="Synthetic pairs get bicubic downscaling only (pure super-resolution).")] = False,
    preset: Annotated[Preset, typer.Option(help="Network size.")] = Preset.paper,
    init: Annotated[Optional[str], typer.Option(help="Start from these weights (name or file): fine-tuning.")] = None,
    recipe: Annotated[Recipe, typer.Option(help="cpu: lr 1e-3 cosine, 48 px; paper: lr 1e-4, 64 px.")] = Recipe.cpu,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps (the schedule spans them).")] = 2000,
    minutes: Annotated[Optional[float], typer.Option(help="Stop after this many minutes.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Patches per step (recipe default).")] = None,
    patch: Annotated[Optional[int], typer.Option(min=8, help="Low-resolution patch side (recipe default).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (recipe default).")] = None,
    loss: Annotated[Loss, typer.Option(help="l1, or the paper's hybrid loss.")] = Loss.l1,
    vgg: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Local VGG-19 weights for the content loss.")] = None,
    val: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="HR folder scored with the SR protocol.")] = None,
    holdout: Annotated[int, typer.Option(min=0, help="Pairs per folder held out to validate on.")] = 3,
    pair_fraction: Annotated[float, typer.Option(min=0, max=1, help="Share of each batch from real pairs.")] = 0.5,
    val_every: Annotated[int, typer.Option(min=1)] = 250,
    run_dir: Annotated[Optional[Path], typer.Option(help="Checkpoints and log (default: runs/<out name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads (0: all).")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
):
    """Train or fine-tune a model on good photos and/or (before, after) pairs."""
    from srpie_cli.train import TrainConfig, train as run_train

    rec = TrainConfig.recipe(recipe.value)
    for name, value in (("batch_size", batch_size), ("patch", patch), ("lr", lr)):
        if value is not None:
            rec[name] = value
    cfg = TrainConfig(out=out_path, run_dir=run_dir or Path("runs") / out_path.stem, photos=photos or [],
                      pairs=pairs or [], enhance=not sr_only, preset=preset.value, init=init, steps=steps,
                      minutes=minutes, loss=loss.value, vgg=vgg, val=val, holdout=holdout,
                      pair_fraction=pair_fraction, val_every=val_every, resume=resume, threads=threads,
                      seed=seed, command="srpie " + " ".join(shlex.quote(a) for a in sys.argv[1:]), **rec)
    try:
        summary = run_train(cfg, log=lambda m: err.print(m, highlight=False))
    except SrpieError as e:
        raise fail(str(e), EXIT_FAILED) from None
    out.print(json.dumps(summary["scores"], indent=1))
