"""The global look: training the thumbnail network that sets one colour mapping per photo.

A retoucher's pass is mostly one smooth colour mapping per photo (``model.GlobalLook``), so
the look is trained on its own, at low resolution and without the upscaler: a step costs
milliseconds, a whole run a minute on two CPU cores, and recipes can be compared by k-fold
over a handful of real pairs instead of by one held-out trio. ``attach`` then puts the look
in front of a trained upscaler: the joint model's output is the upscaler's on the looked-at
photo, and ``--strength`` scales the mapping towards the identity.

The data: good photos under synthetic damage (exposure, casts, flat contrast, washed-out
colour, lifted blacks; some left undamaged, so a photo that needs nothing is left alone) and
real before/after pairs (FiveK's flat renders and expert C's retouch; LOL's dark frames).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from srpie_cli import SrpieError, __version__
from srpie_cli.data import find_pair_dirs, list_images, load_rgb, match_pairs, shrink
from srpie_cli.degrade import contrast, exposure, haze, saturation, white_balance
from srpie_cli.images import to_float
from srpie_cli.model import DeepSRPIE, GlobalLook, context_thumbnail
from srpie_cli.tiling import to_pixels, to_tensor


@dataclass
class LookConfig:
    photos: list[Path] = field(default_factory=list)  # good photos (synthetic pairs)
    pairs: list[Path] = field(default_factory=list)  # real pairs, before/ and after/
    holdout: int = 3  # the last N pairs of each folder (by name) are never trained on
    exclude: list[str] = field(default_factory=list)  # more pair names (stems) never trained on (k-fold)
    steps: int = 1500
    batch_size: int = 16
    crop: int = 128  # loss crop side; the look sees the thumbnail of the whole photo
    side: int = 256  # photos are shrunk to this long side
    lr: float = 2e-3
    pair_fraction: float = 0.5  # share of a batch from real pairs
    clean_fraction: float = 0.7  # share of synthetic samples left undamaged (chosen by 4-fold over FiveK)
    seed: int = 0


Pair = tuple[str, np.ndarray, np.ndarray]  # (name, before, after), float32, the same size


def load_pairs(folders: list[Path], side: int, exclude: set[str] = frozenset(), holdout: int = 0) -> list[list[Pair]]:
    """Each folder's pairs at ``side`` long side, but its last ``holdout`` (by name) and any
    named in ``exclude``: one list per folder, so a large set does not drown a small one."""
    groups = []
    for folder in folders:
        matched = match_pairs(*find_pair_dirs(folder))
        group = []
        for b, a in matched[:len(matched) - holdout]:
            if b.stem in exclude:
                continue
            before, after = shrink(load_rgb(b), side), shrink(load_rgb(a), side)
            if before.shape != after.shape:
                raise SrpieError(f"{b}: before and after differ in size after shrinking")
            group.append((b.stem, to_float(before), to_float(after)))
        if group:
            groups.append(group)
    return groups


def thumb(img: np.ndarray) -> torch.Tensor:
    """The look's view of a whole H x W x 3 float image: its 3 x 64 x 64 thumbnail."""
    return context_thumbnail(to_tensor(np.ascontiguousarray(img, dtype=np.float32)))[0]


def _crop(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = a.shape[:2]
    s = min(size, h, w)
    y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
    a, b = a[y:y + s, x:x + s], b[y:y + s, x:x + s]
    if s < size:
        a, b = (np.pad(v, ((0, size - s), (0, size - s), (0, 0)), mode="reflect") for v in (a, b))
    return a, b


def retouch_damage(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """What a retoucher's pass undoes, drawn one-sided where the correction is one-sided:
    exposure mostly too dark (-1.5 to +0.7 EV, in linear light), a warm/cool or green/magenta
    cast (R and B gains up to 25%), washed-out colour (saturation 0.4 to 1, never more:
    damage that over-saturates would teach the look to grey a colourful photo), flat contrast
    (0.6 to 1) and lifted blacks (up to 12% veil). Each with some probability."""
    ops: list[Callable[[np.ndarray], np.ndarray]] = []
    if rng.random() < 0.8:
        ops.append(lambda im, ev=float(rng.uniform(-1.5, 0.7)): exposure(im, ev))
    if rng.random() < 0.6:
        gains = (float(np.exp(rng.uniform(-0.25, 0.25))), 1.0, float(np.exp(rng.uniform(-0.25, 0.25))))
        ops.append(lambda im, g=gains: white_balance(im, g))
    if rng.random() < 0.6:
        ops.append(lambda im, v=float(rng.uniform(0.4, 1.0)): saturation(im, v))
    if rng.random() < 0.6:
        ops.append(lambda im, v=float(rng.uniform(0.6, 1.0)): contrast(im, v))
    if rng.random() < 0.4:
        ops.append(lambda im, v=float(rng.uniform(0.0, 0.12)): haze(im, v))

    def apply(img: np.ndarray) -> np.ndarray:
        for op in ops:
            img = op(img)
        return np.clip(img, 0, 1)

    return apply


def sample(rng: np.random.Generator, photos: list[np.ndarray], pairs: list, cfg: LookConfig):
    """One (input crop, thumbnail of the whole input, target crop)."""
    if pairs and (not photos or rng.random() < cfg.pair_fraction):
        group = pairs[rng.integers(len(pairs))]
        _, before, after = group[rng.integers(len(group))]
    else:
        after = photos[rng.integers(len(photos))]
        before = after if rng.random() < cfg.clean_fraction else retouch_damage(rng)(after)
    if rng.random() < 0.5:
        before, after = before[:, ::-1], after[:, ::-1]
    t = thumb(before.astype(np.float32))
    x, y = _crop(rng, before, after, cfg.crop)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), t, torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def train_look(cfg: LookConfig, log: Callable[[str], None] = print, look: GlobalLook | None = None) -> GlobalLook:
    """Train a GlobalLook (from ``look`` or from the identity) and return it in eval mode."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    photos = [to_float(shrink(load_rgb(p), cfg.side)) for f in cfg.photos for p in list_images(f)]
    pairs = load_pairs(cfg.pairs, cfg.side, set(cfg.exclude), cfg.holdout)
    if not photos and not pairs:
        raise SrpieError("nothing to train the look on: give photos and/or pairs")
    look = look or GlobalLook()
    look.train()
    opt = torch.optim.Adam(look.parameters(), lr=cfg.lr)
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        xs, ts, ys = zip(*(sample(rng, photos, pairs, cfg) for _ in range(cfg.batch_size)))
        x = torch.stack(xs).permute(0, 3, 1, 2)
        y = torch.stack(ys).permute(0, 3, 1, 2)
        out = look(x, torch.stack(ts))
        loss = F.l1_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            log(f"look step {step + 1}/{cfg.steps} loss {loss.item():.4f}")
    return look.eval()


@torch.no_grad()
def apply_look(look: GlobalLook, img: np.ndarray) -> np.ndarray:
    x = to_tensor(np.ascontiguousarray(img, dtype=np.float32))
    return to_pixels(look(x, context_thumbnail(x)))


def attach(upscaler: DeepSRPIE, look: GlobalLook) -> DeepSRPIE:
    """``upscaler`` with ``look`` in front: a joint model whose strength 0 is the upscaler."""
    model = DeepSRPIE(replace(upscaler.cfg, global_look=True))
    state = upscaler.state_dict()
    state.update({"global_look." + k: v for k, v in look.state_dict().items()})
    model.load_state_dict(state)
    return model.eval()


def config_dict(cfg: LookConfig) -> dict:
    return {k: ([str(p) for p in v] if isinstance(v, list) else v) for k, v in asdict(cfg).items()} | {
        "srpie_version": __version__}


def score(model: DeepSRPIE, cfg: LookConfig, sr_sets: list[Path]) -> dict:
    """The scores a weights file carries: each SR set (Y) and each pair folder's held-out
    pairs (RGB), as ``srpie eval`` computes them."""
    from srpie_cli.data import PairSet
    from srpie_cli.evaluate import evaluate_pairs, evaluate_sr, mean_score

    scores = {}
    for folder in sr_sets:
        scores[f"{folder.name} (Y)"] = mean_score(evaluate_sr(model, folder))
    for folder in cfg.pairs:
        if cfg.holdout:
            _, held = PairSet.from_folders([folder], model.scale, cfg.holdout)
            scores[f"{folder.name} held-out (RGB)"] = mean_score(evaluate_pairs(model, held))
    return scores


def make_model(cfg: LookConfig, init: str, out: Path, command: str, sr_sets: list[Path],
               log: Callable[[str], None] = print) -> dict:
    """Train the look, put it in front of ``init``'s upscaler, score it and write ``out``."""
    import time

    from srpie_cli.weights import load_model, save_weights

    upscaler, up_meta = load_model(init)
    if up_meta.get("untrained"):
        raise SrpieError(f"{init}: no trained weights to put the look in front of")
    t = time.time()
    look = train_look(cfg, log)
    model = attach(upscaler, look)
    seconds = time.time() - t
    scores = score(model, cfg, sr_sets)
    meta = {"srpie_version": __version__, "command": command, "look_config": config_dict(cfg),
            "upscaler": {"name": up_meta.get("name", init), "command": up_meta.get("command")},
            "steps": cfg.steps, "train_seconds": round(seconds, 1), "scores": scores}
    save_weights(out, model, meta)
    log(f"wrote {out}")
    return meta

