"""Training data: synthetic pairs from good photos, and a studio's own (before, after) pairs.

Patches are float32 H x W x 3 in [0, 1]. Every sample is (lr, hr, context): the context is
the 64 x 64 thumbnail of the whole photo the low-resolution patch was cut from, as the
network sees it at inference (``model.context_thumbnail``), flipped and damaged as the patch
was. ``batch`` turns lists of samples into NCHW tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srpie_cli import SrpieError, images
from srpie_cli.degrade import downscale, make_lr
from srpie_cli.images import to_float
from srpie_cli.model import context_thumbnail

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder``, sorted, hidden files and folders skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SrpieError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def load_rgb(path: Path) -> np.ndarray:
    """8-bit RGB, H x W x 3, upright: read by ``images.read_photo``, the reader ``srpie
    enhance`` uses, so a camera JPEG tagged sideways meets its upright export aligned."""
    return images.to8(images.read_photo(path).pixels)


def shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (antialiased) so the long side is at most ``max_side``: large photos become
    cleaner targets (JPEG blocks and noise average out) and cheaper to keep in memory."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    with Image.fromarray(img) as im:
        return np.asarray(im.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS))


def thumbnail(img: np.ndarray) -> np.ndarray:
    """The global-context thumbnail of a float H x W x 3 image, as 64 x 64 x 3 float32."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    return context_thumbnail(t)[0].permute(1, 2, 0).numpy()


def random_flip(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random h/v flip and transpose for every array of a pair."""
    if rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if rng.random() < 0.5:
        arrays = [a[::-1] for a in arrays]
    if rng.random() < 0.5:
        arrays = [a.transpose(1, 0, 2) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


@dataclass
class PhotoSet:
    """Good photos kept in memory as uint8; pairs are made on the fly."""

    images: list[np.ndarray]
    names: list[str]
    thumbs: list[np.ndarray] = field(init=False, repr=False)  # the context thumbnail of each photo

    def __post_init__(self):
        self.thumbs = [thumbnail(to_float(a)) for a in self.images]

    @classmethod
    def from_folders(cls, folders: list[Path], max_side: int = 1600, min_side: int = 64) -> PhotoSet:
        images, names = [], []
        for folder in folders:
            for p in list_images(folder):
                a = shrink(load_rgb(p), max_side)
                if min(a.shape[:2]) >= min_side:
                    images.append(a)
                    names.append(str(p))
        if not images:
            raise SrpieError(f"no usable photos in {', '.join(map(str, folders))}")
        return cls(images, names)

    def sample(self, rng: np.random.Generator, patch: int, scale: int,
               enhance: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lr, hr, context) with lr ``patch`` x ``patch``; images drawn in proportion to
        their area; the context gets the patch's look damage (not its blur, noise or JPEG,
        which a thumbnail averages away)."""
        areas = np.array([a.shape[0] * a.shape[1] for a in self.images], dtype=np.float64)
        k = rng.choice(len(self.images), p=areas / areas.sum())
        img = self.images[k]
        size = patch * scale
        h, w = img.shape[:2]
        size = min(size, h - h % scale, w - w % scale)
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        hr, thumb = random_flip([to_float(img[y:y + size, x:x + size]), self.thumbs[k]], rng)
        lr, look = make_lr(hr, scale, rng, enhance=enhance)
        return lr, hr, np.clip(look(thumb), 0, 1).astype(np.float32)


def match_pairs(before_dir: Path, after_dir: Path) -> list[tuple[Path, Path]]:
    """Pairs matched by relative path and file stem (so ``a.jpg`` meets ``a.png``).
    Unmatched files on either side are left out."""
    before = {p.relative_to(before_dir).with_suffix("").as_posix(): p for p in list_images(before_dir)}
    after = {p.relative_to(after_dir).with_suffix("").as_posix(): p for p in list_images(after_dir)}
    return [(before[k], after[k]) for k in sorted(before.keys() & after.keys())]


def find_pair_dirs(folder: Path) -> tuple[Path, Path]:
    """A pairs folder holds two subfolders: before (input/low/before) and after
    (expert*/high/after/target)."""
    subs = {p.name.lower(): p for p in Path(folder).iterdir() if p.is_dir()}
    before = next((subs[n] for n in ("before", "input", "low", "lr") if n in subs), None)
    after = next((subs[n] for n in sorted(subs) if n in ("after", "high", "target", "hr") or n.startswith("expert")), None)
    if before is None or after is None:
        raise SrpieError(f"{folder}: a pairs folder needs 'before/' and 'after/' subfolders "
                         "(or input/ + expert*/, low/ + high/)")
    return before, after


def load_pair(before: Path, after: Path, scale: int, max_side: int = 1600) -> tuple[np.ndarray, np.ndarray]:
    """(before at 1/scale of after, after), float32. When the before is not already
    1/scale of the after (the usual case: same-size pairs), it is downscaled to that size
    with antialiased bicubic, the same operator as the synthetic pairs."""
    a = shrink(load_rgb(after), max_side)
    h, w = a.shape[0] - a.shape[0] % scale, a.shape[1] - a.shape[1] % scale
    a = to_float(a[:h, :w])
    b = to_float(load_rgb(before))
    if b.shape[:2] != (h // scale, w // scale):
        if b.shape[:2] != (h, w):
            with Image.fromarray((b * 255 + 0.5).astype(np.uint8)) as im:
                b = to_float(np.asarray(im.resize((w, h), Image.Resampling.LANCZOS)))
        b = downscale(b, scale)
        b = (b * 255 + 0.5).astype(np.uint8).astype(np.float32) / 255.0
    return b, a


@dataclass
class PairSet:
    """Real (before, after) pairs in memory, before already at 1/scale."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    names: list[str]
    groups: list[int] = field(default_factory=list)  # which folder each pair came from
    thumbs: list[np.ndarray] = field(init=False, repr=False)  # the context thumbnail of each before

    def __post_init__(self):
        self.thumbs = [thumbnail(lr) for lr, _ in self.pairs]

    @classmethod
    def from_folders(cls, folders: list[Path], scale: int, holdout: int = 0) -> tuple[PairSet, PairSet]:
        """Training and held-out sets; the last ``holdout`` pairs of each folder (in sorted
        order) are held out."""
        pairs, names, groups = [], [], []
        for g, folder in enumerate(folders):
            matched = match_pairs(*find_pair_dirs(folder))
            if not matched:
                raise SrpieError(f"{folder}: no before/after pairs matched by name")
            for b, a in matched:
                pairs.append(load_pair(b, a, scale))
                names.append(str(b))
                groups.append(g)
        return cls(pairs, names, groups).split(holdout)

    def __len__(self) -> int:
        return len(self.pairs)

    def split(self, last: int) -> tuple[PairSet, PairSet]:
        """(all but the last ``last`` pairs of each folder, those last ones), order kept."""
        head, tail = ([], [], []), ([], [], [])
        for g in sorted(set(self.groups)):
            members = [i for i, gi in enumerate(self.groups) if gi == g]
            for n, i in enumerate(members):
                part = tail if n >= len(members) - last else head
                part[0].append(self.pairs[i])
                part[1].append(self.names[i])
                part[2].append(g)
        return PairSet(*head), PairSet(*tail)

    def sample(self, rng: np.random.Generator, patch: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lr, hr, context). Folders are drawn uniformly, then a pair: a large set does not
        drown a small one."""
        group = rng.choice(sorted(set(self.groups)))
        members = [i for i, g in enumerate(self.groups) if g == group]
        k = members[rng.integers(len(members))]
        lr, hr = self.pairs[k]
        p = min(patch, lr.shape[0], lr.shape[1])
        y, x = rng.integers(0, lr.shape[0] - p + 1), rng.integers(0, lr.shape[1] - p + 1)
        lr_p = lr[y:y + p, x:x + p]
        hr_p = hr[y * scale:(y + p) * scale, x * scale:(x + p) * scale]
        return tuple(random_flip([lr_p, hr_p, self.thumbs[k]], rng))


def batch(samples: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    """(lr, hr, context) samples -> (lr, hr, context) NCHW tensors."""
    return tuple(torch.from_numpy(np.stack([s[i] for s in samples])).permute(0, 3, 1, 2).contiguous()
                 for i in range(len(samples[0])))
