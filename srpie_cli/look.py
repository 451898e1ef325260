"""The global look: training the thumbnail network that sets one colour mapping per photo.

A retoucher's pass is mostly one smooth colour mapping per photo (``model.GlobalLook``), so
the look is trained on its own, at low resolution and without the upscaler: a step costs
milliseconds, a whole run a minute on two CPU cores, and recipes can be compared by k-fold
over a handful of real pairs instead of by one held-out trio. ``attach`` then puts the look
in front of a trained upscaler: the joint model's output is the upscaler's on the looked-at
photo, and ``--strength`` scales the mapping towards the identity.

The data: good photos under synthetic damage (exposure, casts, flat contrast, washed-out
colour, lifted blacks; some left undamaged, so a photo that needs nothing is left alone) and
real before/after pairs (FiveK's flat renders and expert C's retouch).

Then, with tone pairs (LOL's dark frames and their well-exposed versions), the tone stage:
an exposure lift, noise reduction and a colour correction for frames taken in near
darkness (``model.tone``), trained in front of the finished look (``train_tone``), which it
leaves as it was; dark, noisy frames made from the good photos (``tone_damage``) join them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from srpie_cli import SrpieError, __version__, defaults
from srpie_cli.data import find_pair_dirs, list_images, load_rgb, match_pairs, shrink
from srpie_cli.degrade import contrast, dark_frame, exposure, haze, saturation, white_balance
from srpie_cli.images import to_float
from srpie_cli.model import DeepSRPIE, GlobalLook, context_thumbnail
from srpie_cli.tiling import to_pixels, to_tensor


@dataclass
class LookConfig:
    photos: list[Path] = field(default_factory=list)  # good photos (synthetic pairs)
    pairs: list[Path] = field(default_factory=list)  # real pairs, before/ and after/
    holdout: int = 3  # the last N pairs of each folder (by name) are never trained on
    exclude: list[str] = field(default_factory=list)  # more pair names (stems) never trained on (k-fold)
    steps: int = defaults.LOOK_STEPS
    batch_size: int = 16
    crop: int = 128  # loss crop side; the look sees the thumbnail of the whole photo
    side: int = 256  # photos are shrunk to this long side
    lr: float = defaults.LOOK_LR  # peak (cosine-decayed) learning rate of the look and of its tone stage
    pair_fraction: float = defaults.LOOK_PAIR_FRACTION  # share of a batch from real pairs
    clean_fraction: float = defaults.LOOK_CLEAN_FRACTION  # share of synthetic samples left undamaged
    cast: float = defaults.LOOK_CAST  # strongest synthetic colour cast: log of the red/blue gain
    chroma: float = defaults.LOOK_CHROMA  # weight of the chroma term (``losses.chroma_gap``) beside L1
    tone_pairs: list[Path] = field(default_factory=list)  # dark frames and their good versions: the tone stage
    tone_steps: int = defaults.LOOK_TONE_STEPS  # the tone stage's steps, after the look's
    dark: float = defaults.LOOK_DARK  # share of the tone stage's photos damaged (``tone_damage``)
    tone_cast: float = defaults.LOOK_TONE_CAST  # strongest cast on the tone stage's synthetic dark frames
    tone_side: int = defaults.LOOK_TONE_SIDE  # the tone stage's photos' long side: noise is pixel-sized
    denoise_steps: int = 0  # the tone stage's denoiser's steps, after the tone stage's (0: no denoiser)
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


def cast_gains(rng: np.random.Generator, cast: float) -> tuple[float, float, float]:
    """RGB gains of a colour cast: warm/cool (red against blue) up to ``cast`` in log gain,
    and a green/magenta tint of half that."""
    t, u = rng.uniform(-cast, cast), rng.uniform(-cast / 2, cast / 2)
    return float(np.exp(t)), float(np.exp(u)), float(np.exp(-t))


def retouch_damage(rng: np.random.Generator, cast: float = defaults.LOOK_CAST) -> Callable[[np.ndarray], np.ndarray]:
    """What a retoucher's pass undoes, drawn one-sided where the correction is one-sided:
    exposure mostly too dark (-1.5 to +0.7 EV, in linear light), a colour cast (a warm/cool
    shift of red against blue up to ``cast`` in log gain, and a green/magenta tint of half
    that), washed-out colour (saturation 0.4 to 1, never more: damage that over-saturates
    would teach the look to grey a colourful photo), flat contrast (0.6 to 1) and lifted
    blacks (up to 12% veil). Each with some probability."""
    ops: list[Callable[[np.ndarray], np.ndarray]] = []
    if rng.random() < 0.8:
        ops.append(lambda im, ev=float(rng.uniform(-1.5, 0.7)): exposure(im, ev))
    if rng.random() < 0.6:
        ops.append(lambda im, g=cast_gains(rng, cast): white_balance(im, g))
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


def tone_damage(rng: np.random.Generator, cast: float) -> Callable[[np.ndarray], np.ndarray]:
    """What the tone stage undoes: a frame taken in near darkness (-2 to -6 EV, with its
    sensor noise: ``degrade.dark_frame``), most often under a colour cast as well (as
    ``retouch_damage``'s, up to ``cast``)."""
    ev, noise = float(rng.uniform(-6, -2)), float(np.exp(rng.uniform(np.log(3e-4), np.log(3e-3))))
    seed = int(rng.integers(1 << 31))
    gains = cast_gains(rng, cast) if rng.random() < 0.6 else (1.0, 1.0, 1.0)
    return lambda im: np.clip(dark_frame(white_balance(im, gains), ev, noise, np.random.default_rng(seed)), 0, 1)


def sample(rng: np.random.Generator, photos: list[np.ndarray], pairs: list, cfg: LookConfig,
           damage: Callable[[np.random.Generator], Callable[[np.ndarray], np.ndarray]]):
    """One (input crop, thumbnail of the whole input, target crop): a real pair (a share
    ``cfg.pair_fraction``, each folder as likely), else a good photo, left as it is (a share
    ``cfg.clean_fraction``) or under ``damage(rng)``."""
    if pairs and (not photos or rng.random() < cfg.pair_fraction):
        group = pairs[rng.integers(len(pairs))]
        _, before, after = group[rng.integers(len(group))]
    else:
        after = photos[rng.integers(len(photos))]
        before = after if rng.random() < cfg.clean_fraction else damage(rng)(after)
    if rng.random() < 0.5:
        before, after = before[:, ::-1], after[:, ::-1]
    t = thumb(before.astype(np.float32))
    x, y = _crop(rng, before, after, cfg.crop)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), t, torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def l1_ssim(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L1 plus ``defaults.LOOK_DENOISE_SSIM`` times (1 - MS-SSIM over 3 scales): the structure
    a denoiser keeps or smears, which L1 alone weighs little (Zhao et al. 2017 mix the two)."""
    from srpie_cli.losses import ms_ssim

    return F.l1_loss(out, gt) + defaults.LOOK_DENOISE_SSIM * (1 - ms_ssim(out.clamp(0, 1), gt, max_scales=3))


def look_loss(chroma: float) -> Callable:
    """The colour mapping's loss: L1, plus ``chroma`` times the chroma gap (``losses.chroma_gap``)."""
    if not chroma:
        return F.l1_loss
    from srpie_cli.losses import chroma_gap

    return lambda out, gt: F.l1_loss(out, gt) + chroma * chroma_gap(out, gt)


def fit(look: GlobalLook, params: list, steps: int, draw: Callable[[], tuple], lr: float, log: Callable[[str], None],
        what: str, loss_fn: Callable = F.l1_loss, every: Callable[[int], None] | None = None) -> None:
    """``steps`` of Adam (cosine-decayed ``lr``) on ``loss_fn`` (L1) of ``look`` over batches
    from ``draw``; ``every(step)`` is called every 250 steps, in eval mode (a checkpoint)."""
    look.train()
    opt = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        xs, ts, ys = draw()
        loss = loss_fn(look(torch.stack(xs).permute(0, 3, 1, 2), torch.stack(ts)), torch.stack(ys).permute(0, 3, 1, 2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            log(f"{what} step {step + 1}/{steps} loss {loss.item():.4f}")
            if every is not None:
                look.eval()
                every(step + 1)
                look.train()
    look.eval()


def load_photos(folders: list[Path], side: int) -> list[np.ndarray]:
    return [to_float(shrink(load_rgb(p), side)) for f in folders for p in list_images(f)]


def train_look(cfg: LookConfig, log: Callable[[str], None] = print, look: GlobalLook | None = None,
               every: Callable[[GlobalLook, int], None] | None = None) -> GlobalLook:
    """Train a GlobalLook and return it in eval mode: its colour mapping from the identity
    on ``cfg.pairs`` and ``cfg.photos`` (``retouch_damage``), unless ``look`` is given (kept
    as it is); then, with ``cfg.tone_pairs``, its tone stage (``train_tone``; with
    ``cfg.tone_steps`` 0 ``look``'s own is kept) and, with ``cfg.denoise_steps``, the tone
    stage's denoiser (``train_denoiser``; ``every(look, step)``: its checkpoints)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    photos = load_photos(cfg.photos, cfg.side)
    if look is None:
        pairs = load_pairs(cfg.pairs, cfg.side, set(cfg.exclude), cfg.holdout)
        if not photos and not pairs:
            raise SrpieError("nothing to train the look on: give photos and/or pairs")
        look = GlobalLook()
        fit(look, list(look.parameters()), cfg.steps,
            lambda: zip(*(sample(rng, photos, pairs, cfg, lambda r: retouch_damage(r, cfg.cast))
                          for _ in range(cfg.batch_size))), cfg.lr, log, "look", loss_fn=look_loss(cfg.chroma))
    if cfg.tone_pairs:
        if cfg.tone_side != cfg.side:
            photos = load_photos(cfg.photos, cfg.tone_side)
        if cfg.tone_steps:
            look = train_tone(cfg, look, photos, rng, log)
        if cfg.denoise_steps:
            look = train_denoiser(cfg, look, photos, rng, log, every)
    return look.eval()


def train_tone(cfg: LookConfig, look: GlobalLook, photos: list[np.ndarray], rng: np.random.Generator,
               log: Callable[[str], None]) -> GlobalLook:
    """``look`` with a tone stage trained in front of its colour mapping, which stays as it
    was: on ``cfg.tone_pairs`` (dark frames and their good versions), on the look's own pairs
    and on the good photos, left alone or (a share ``cfg.dark``) under ``tone_damage``. Trained apart, the two
    cannot trade: the dark frames' large errors never pull the colour mapping away from the
    pass it learnt on flat photos, and the stage learns to do nothing where nothing is dark."""
    # the look's own pairs too: a flat, dim photo the look already fixes must not be lifted twice
    pairs = load_pairs(cfg.tone_pairs + cfg.pairs, cfg.tone_side, set(cfg.exclude), cfg.holdout)
    toned = GlobalLook(tone=True)
    toned.load_state_dict(look.state_dict(), strict=False)  # the colour mapping; the tone head starts at 0
    for p in toned.parameters():
        p.requires_grad_(False)
    params = list(toned.tone_head.parameters())
    for p in params:
        p.requires_grad_(True)
    tone_cfg = replace(cfg, clean_fraction=1 - cfg.dark)
    fit(toned, params, cfg.tone_steps,
        lambda: zip(*(sample(rng, photos, pairs, tone_cfg, lambda r: tone_damage(r, cfg.tone_cast))
                      for _ in range(cfg.batch_size))), cfg.lr, log, "tone")
    for p in toned.parameters():
        p.requires_grad_(True)
    return toned


def train_denoiser(cfg: LookConfig, look: GlobalLook, photos: list[np.ndarray], rng: np.random.Generator,
                   log: Callable[[str], None], every: Callable[[GlobalLook, int], None] | None = None) -> GlobalLook:
    """``look`` (with a trained tone stage) with its denoiser (``model.DarkDenoiser``) trained
    in front of everything else, which stays as it was: on dark frames only (the denoiser's
    residual is gated off elsewhere), ``cfg.tone_pairs`` at their own size and at half of it
    (noise a 2x downscale has averaged, as a smaller camera file has), and a share
    ``cfg.dark`` of the good photos under ``tone_damage``; loss ``l1_ssim``."""
    if not look.tone:
        raise SrpieError("the denoiser is trained on a tone stage: train the tone stage first (--tone-steps)")
    full = load_pairs(cfg.tone_pairs, 10**6, set(cfg.exclude), cfg.holdout)
    half = [[(n, shrink_float(b), shrink_float(a)) for n, b, a in group] for group in full]
    pairs = [g for g in full + half if g]
    if not pairs:
        raise SrpieError("no tone pairs to train the denoiser on")
    noisy = GlobalLook(tone=True, denoise=True)
    noisy.load_state_dict(look.state_dict(), strict=False)  # all but the denoiser, which starts silent
    for p in noisy.parameters():
        p.requires_grad_(False)
    params = list(noisy.denoiser.parameters())
    for p in params:
        p.requires_grad_(True)
    dn_cfg = replace(cfg, pair_fraction=1 - cfg.dark, clean_fraction=0.0)
    fit(noisy, params, cfg.denoise_steps,
        lambda: zip(*(sample(rng, photos, pairs, dn_cfg, lambda r: tone_damage(r, cfg.tone_cast))
                      for _ in range(cfg.batch_size))), defaults.LOOK_DENOISE_LR, log, "denoise", loss_fn=l1_ssim,
        every=None if every is None else lambda step: every(noisy, step))
    for p in noisy.parameters():
        p.requires_grad_(True)
    return noisy


def shrink_float(img: np.ndarray) -> np.ndarray:
    """A float image at half its size (antialiased), as the benchmarks shrink their inputs."""
    from PIL import Image

    h, w = img.shape[:2]
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F")
                        .resize((w // 2, h // 2), Image.Resampling.BICUBIC, reducing_gap=None)) for c in range(3)]
    return np.clip(np.stack(chans, axis=-1), 0, 1)


@torch.no_grad()
def apply_look(look: GlobalLook, img: np.ndarray) -> np.ndarray:
    x = to_tensor(np.ascontiguousarray(img, dtype=np.float32))
    return to_pixels(look(x, context_thumbnail(x)))


def attach(upscaler: DeepSRPIE, look: GlobalLook) -> DeepSRPIE:
    """``upscaler`` with ``look`` in front (instead of any it had): a joint model whose strength 0
    is the upscaler."""
    model = DeepSRPIE(replace(upscaler.cfg, global_look=True, look_tone=look.tone, look_denoise=look.denoiser is not None))
    state = {k: v for k, v in upscaler.state_dict().items() if not k.startswith("global_look.")}  # a look it had goes
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
    for folder in cfg.pairs + cfg.tone_pairs:
        if cfg.holdout:
            _, held = PairSet.from_folders([folder], model.scale, cfg.holdout)
            scores[f"{folder.name} held-out (RGB)"] = mean_score(evaluate_pairs(model, held))
    return scores


def make_model(cfg: LookConfig, init: str, out: Path, command: str, sr_sets: list[Path],
               log: Callable[[str], None] = print, look_from: str | None = None) -> dict:
    """Train the look, put it in front of ``init``'s upscaler, score it and write ``out``.
    Where ``init`` has a look already, that look is kept and only its tone stage trained (or,
    with ``cfg.tone_steps`` 0, its tone stage kept too and only the denoiser trained). With
    ``look_from`` (a model with a global look) nothing is trained: that look, as it is, goes
    in front of ``init``'s upscaler (the look trains without the upscaler, so one look serves
    every upscaler)."""
    import time

    from srpie_cli.weights import load_model, save_weights

    upscaler, up_meta = load_model(init)
    if up_meta.get("untrained"):
        raise SrpieError(f"{init}: no trained weights to put the look in front of")
    t = time.time()
    if look_from is not None:
        source, source_meta = load_model(look_from)
        if source.global_look is None:
            raise SrpieError(f"{look_from}: has no global look to take")
        model = attach(upscaler, source.global_look)
        meta = {"srpie_version": __version__, "command": command,
                "look_from": {k: source_meta.get(k) for k in ("name", "command", "look_config", "train_seconds")},
                "upscaler": {"name": up_meta.get("name", init), "command": up_meta.get("command")},
                "scores": score(model, cfg, sr_sets)}
        save_weights(out, model, meta)
        log(f"wrote {out}")
        return meta
    kept = upscaler.global_look
    if kept is not None and not cfg.tone_pairs:
        raise SrpieError(f"{init} has a look already: give tone pairs to train its tone stage, or start from its upscaler")
    if kept is not None and not cfg.tone_steps and not kept.tone:
        raise SrpieError(f"{init}'s look has no tone stage to keep: give --tone-steps")
    look = train_look(cfg, log, look=kept)
    model = attach(upscaler, look)
    seconds = time.time() - t
    scores = score(model, cfg, sr_sets)
    meta = {"srpie_version": __version__, "command": command, "look_config": config_dict(cfg),
            "upscaler": {"name": up_meta.get("name", init), "command": up_meta.get("command")},
            "steps": cfg.steps, "train_seconds": round(seconds, 1), "scores": scores}
    save_weights(out, model, meta)
    log(f"wrote {out}")
    return meta

