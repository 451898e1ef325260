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


@app.command("eval")
def evaluate(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="HR images (SR protocol) or a pairs folder with --pairs.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Shipped model name or weights file.")] = "srpie-x2-sr",
    pairs: Annotated[bool, typer.Option("--pairs", help="FOLDER holds before/ and after/: score RGB against the after.")] = False,
    holdout: Annotated[int, typer.Option(min=0, help="With --pairs: score only the last N pairs (the held-out ones); 0: all.")] = 0,
    tta: Annotated[bool, typer.Option(help="Self-ensemble over four flips.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Score a model beside bicubic: PSNR/SSIM on Y (2x SR protocol) or RGB on pairs."""
    from srpie_cli.data import PairSet
    from srpie_cli.evaluate import evaluate_pairs, evaluate_sr, mean_score
    from srpie_cli.tiling import TileOptions
    from srpie_cli.weights import load_model

    try:
        net, meta = load_model(model)
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
    for col in ("image", "PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for s in scores:
        table.add_row(s.name, f"{s.psnr:.2f}", f"{s.ssim:.4f}", f"{s.bicubic_psnr:.2f}", f"{s.bicubic_ssim:.4f}")
    table.add_row("[bold]mean", f"[bold]{mean['psnr']:.2f}", f"[bold]{mean['ssim']:.4f}",
                  f"{mean['bicubic_psnr']:.2f}", f"{mean['bicubic_ssim']:.4f}")
    out.print(table)


@app.command()
def models():
    """List the shipped models with their size, training and scores."""
    from srpie_cli.model import count_parameters
    from srpie_cli.weights import SHIPPED, load_model

    table = Table(title="srpie models")
    for col in ("name", "parameters", "what", "trained", "scores"):
        table.add_column(col)
    for name, entry in SHIPPED.items():
        try:
            net, meta = load_model(name)
        except SrpieError as e:
            table.add_row(name, "-", entry.summary, f"[red]{e}", "")
            continue
        if meta["untrained"]:
            table.add_row(name, f"{count_parameters(net):,}", entry.summary, "[yellow]not shipped yet", "")
            continue
        trained = f"{meta.get('steps', '?')} steps, {meta.get('train_seconds', 0) / 3600:.1f} h"
        scores = "; ".join(f"{k}: {v['psnr']:.2f} dB (bicubic {v['bicubic_psnr']:.2f})"
                           for k, v in (meta.get("scores") or {}).items() if isinstance(v, dict) and "psnr" in v)
        table.add_row(name, f"{count_parameters(net):,}", entry.summary, trained, scores)
    out.print(table)
