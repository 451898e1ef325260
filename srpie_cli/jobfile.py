"""A job file: the options of one job, kept with the shoot (``srpie.toml``) or named with
``--config``, with settings of their own for some folders.

```toml
model = "srpie-x2"
strength = 0.8
suffix = "_2x"
exclude = ["rejects/"]
[folders."low_light"]
strength = 1
[folders."portraits"]
strength = 0.5
```

Options given on the command line win over the file. A folder's settings apply to the photos
in it and below it (the deepest folder named wins). An unknown key or a bad value is a
``JobFileError`` (a usage error) naming the file and the line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from srpie_cli import SrpieError, defaults

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

NAME = "srpie.toml"


class JobFileError(SrpieError):
    """The job file cannot be used: a usage error (exit 2), before any work."""


def _choice(*allowed):
    def check(v):
        if v not in allowed:
            raise ValueError(f"one of {', '.join(map(repr, allowed))}")
        return v
    return check


def _number(lo, hi, kind=float):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise ValueError("an integer" if kind is int else "a number")
        if not lo <= v <= hi:
            raise ValueError(f"between {lo:g} and {hi:g}")
        return kind(v)
    return check


def _text(v):
    if not isinstance(v, str):
        raise ValueError("a string")
    return v


def _suffix(v):
    if not isinstance(v, str) or "/" in v or "\\" in v:
        raise ValueError("a string without a folder separator, e.g. \"_2x\"")
    return v


def _flag(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _globs(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(g, str) and g for g in v):
        raise ValueError('a glob or a list of globs, e.g. ["*.CR3"]')
    return tuple(v)


# key in the file -> (the enhance option it sets, its check)
KEYS: dict[str, tuple[str, Callable]] = {
    "model": ("model", _text),
    "strength": ("strength", _number(0.0, 2.0)),
    "scale": ("scale", _number(1, 2, int)),
    "format": ("fmt", _choice("jpeg", "png", "tiff", "webp")),
    "quality": ("quality", _number(1, 100, int)),
    "suffix": ("suffix", _suffix),
    "include": ("include", _globs),
    "exclude": ("exclude", _globs),
    "output": ("output", _text),
    "min_rating": ("min_rating", _number(0, 5, int)),
    "raw_jpeg": ("raw_jpeg", _choice("raw", "jpeg", "both")),
    "overwrite": ("overwrite", _flag),
    "tta": ("tta", _flag),
    "half": ("half", _flag),
    "precision": ("precision", _choice(*defaults.PRECISIONS)),
    "device": ("device", _text),
    "tile": ("tile", _number(0, 1 << 16, int)),
    "overlap": ("overlap", _number(0, 1 << 12, int)),
    "threads": ("threads", _number(0, 4096, int)),
    "compile": ("compile", _choice("auto", "on", "off")),
    "max_megapixels": ("max_megapixels", _number(0.01, 1e6)),
}
# what a folder may set for itself: how its photos are made and named
FOLDER_KEYS = ("model", "strength", "format", "quality", "suffix", "min_rating", "tta")


@dataclass
class JobFile:
    path: Path
    options: dict = field(default_factory=dict)  # enhance option -> value
    folders: dict[str, dict] = field(default_factory=dict)  # folder (posix, relative) -> its options


def find(inputs, config: Path | None) -> Path | None:
    """``--config FILE``, else ``srpie.toml`` in the first input folder, else None."""
    if config is not None:
        if not Path(config).is_file():
            raise JobFileError(f"{config}: no such job file")
        return Path(config)
    for p in inputs:
        if Path(p).is_dir() and (Path(p) / NAME).is_file():
            return Path(p) / NAME
    return None


def _line(text: str, table: tuple[str, ...], key: str) -> int | None:
    """The line of ``key`` in ``table`` (() for the top), for the message."""
    current: tuple[str, ...] = ()
    for n, line in enumerate(text.splitlines(), start=1):
        head = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if head:
            current = ()
            try:
                doc = tomllib.loads(f"[{head.group(1)}]")  # the table's name, quotes and dots undone
            except tomllib.TOMLDecodeError:
                doc = {"?": {}}
            while doc:
                (name, doc), = doc.items()
                current += (name,)
            continue
        if current == table and re.match(rf"""\s*(["']?){re.escape(key)}\1\s*=""", line):
            return n
    return None


def load(path: Path) -> JobFile:
    """Read and check a job file. JobFileError naming the file and the line of what is wrong."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
        doc = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise JobFileError(f"{path}: cannot read the job file ({getattr(e, 'strerror', None) or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise JobFileError(f"{path}: not valid TOML ({e})") from None

    def where(table: tuple[str, ...], key: str) -> str:
        n = _line(text, table, key)
        return f"{path}, line {n}" if n else str(path)

    def checked(table: tuple[str, ...], items: dict, allowed) -> dict:
        out = {}
        for key, value in items.items():
            if key not in allowed:
                scope = "a folder" if table else "a job file"
                raise JobFileError(f"{where(table, key)}: unknown key {key!r} for {scope} "
                                   f"(known: {', '.join(allowed)})")
            name, check = KEYS[key]
            try:
                out[name] = check(value)
            except ValueError as e:
                raise JobFileError(f"{where(table, key)}: {key} = {value!r}: expected {e}") from None
        return out

    folders = doc.pop("folders", {})
    job = JobFile(Path(path), checked((), doc, [k for k in KEYS]))
    if not isinstance(folders, dict):
        raise JobFileError(f"{where((), 'folders')}: folders must be tables, e.g. [folders.\"portraits\"]")
    for name, items in folders.items():
        if not isinstance(items, dict):
            raise JobFileError(f"{where(('folders',), name)}: folders.{name} must be a table of settings")
        job.folders[name.strip("/")] = checked(("folders", name), items, FOLDER_KEYS)
    return job


def merged(job: JobFile, opts: dict, explicit: set[str]) -> dict:
    """The command line's options with the job file's set where the command line gave none;
    ``output`` relative to the job file's folder."""
    out = dict(opts)
    for name, value in job.options.items():
        if name not in explicit:
            out[name] = job.path.parent / value if name == "output" else value
    return out


def rules(job: JobFile, opts: dict, explicit: set[str], settings, select) -> Callable:
    """``batch.plan``'s ``rule_for``: each folder's format, naming, rating and settings, from
    the folders of the job file that hold it (shallow to deep), under the command line's."""
    from srpie_cli.batch import Rule

    fields = {"model", "strength", "quality", "tta"}

    def rule_for(folder: str) -> Rule:
        own: dict = {}
        for name in sorted(job.folders, key=lambda n: n.count("/")):
            if folder.lower() == name.lower() or folder.lower().startswith(name.lower() + "/"):
                own.update({k: v for k, v in job.folders[name].items() if k not in explicit})
        s = replace(settings, **{k: v for k, v in own.items() if k in fields})
        sel = replace(select, **{k: v for k, v in own.items() if k in ("suffix", "min_rating")})
        return Rule(own.get("fmt", opts.get("fmt")), sel, None if s == settings else s)

    return rule_for
