"""Weights as data: the shipped models, and safe loading of any weights file.

A weights file is a plain ``torch.save`` dict ``{"format", "config", "state_dict", "meta"}``
of tensors, strings and numbers. It is loaded with ``torch.load(weights_only=True)``, which
refuses pickled Python objects: a weights file can never run code. The config inside the
file builds the network, so no side file is needed.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from srpie_cli import SrpieError, defaults
from srpie_cli.defaults import SHIPPED
from srpie_cli.model import DeepSRPIE, SRPIEConfig, config_for

FORMAT = "srpie-weights-1"
WEIGHTS_DIR = Path(__file__).parent / "_weights"  # the installed copy of the repo's weights/


DEFAULT_MODEL = defaults.MODEL


def weights_dir() -> Path:
    """Shipped weights: inside the installed package, or the repo's weights/ when run from a
    source checkout."""
    if WEIGHTS_DIR.is_dir():
        return WEIGHTS_DIR
    return Path(__file__).resolve().parent.parent / "weights"


def resolve(name_or_path: str | os.PathLike) -> Path | None:
    """Path of a shipped model name or a file; None for a known name whose file is absent."""
    key = str(name_or_path)
    if key in SHIPPED:
        path = weights_dir() / SHIPPED[key].file
        return path if path.is_file() else None
    path = Path(name_or_path)
    if not path.is_file():
        raise SrpieError(f"{key}: no such model name or weights file (shipped: {', '.join(SHIPPED)})")
    return path


def read_weights(path: str | os.PathLike) -> dict:
    """Load a weights file safely; SrpieError with the reason when it is not one."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SrpieError(f"{path}: refused: the file holds pickled Python objects, not plain weights") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as e:
        raise SrpieError(f"{path}: not a readable weights file ({_first_line(e)})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "config" not in blob or "state_dict" not in blob:
        raise SrpieError(f"{path}: not an srpie weights file (expected format {FORMAT!r})")
    return blob


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0][:160] if lines else type(e).__name__)


def build(blob: dict, source: str = "weights") -> DeepSRPIE:
    try:
        model = DeepSRPIE(SRPIEConfig.from_dict(blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise SrpieError(f"{source}: weights do not fit their config ({_first_line(e)})") from None
    return model.eval()


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> tuple[DeepSRPIE, dict]:
    """Return (model in eval mode on CPU, meta). An absent shipped file gives an untrained
    model with ``meta["untrained"] = True``; callers must say so loudly."""
    path = resolve(name_or_path)
    if path is None:
        return DeepSRPIE(config_for(SHIPPED[str(name_or_path)].preset)).eval(), {"name": str(name_or_path), "untrained": True}
    blob = read_weights(path)
    meta = blob.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}  # a file's meta is informative only
    meta.setdefault("name", path.stem)
    meta["untrained"] = bool(meta.get("untrained", False))
    return build(blob, str(path)), meta


def save_weights(path: str | os.PathLike, model: DeepSRPIE, meta: dict | None = None, extra: dict | None = None) -> None:
    """Write a weights file atomically (temporary file in the same folder, then rename).
    ``extra`` holds training state (optimizer, step) for checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "config": model.cfg.to_dict(), "meta": meta or {},
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}
    if extra:
        blob.update(extra)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a weights file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
