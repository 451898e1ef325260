"""Training: ``TrainConfig`` and ``train(cfg)``, read top to bottom (nanoGPT's shape).

Setup (data, model, optimiser, resume) -> batch function -> learning-rate schedule -> one
loop with periodic validation and checkpoints. The checkpoint (``RUN_DIR/last.pt``) holds
the optimiser, the step, the generator state and the weight average, so ``resume=True``
continues exactly where a run stopped, in this session or a later one. The best model by
validation is written to ``out`` as a plain weights file that carries its config, the
command, the data it saw and its scores.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from srpie_cli import SrpieError, __version__
from srpie_cli.data import PairSet, PhotoSet, batch
from srpie_cli.evaluate import evaluate_pairs, evaluate_sr, mean_score
from srpie_cli.losses import HybridLoss, LossWeights
from srpie_cli.model import LOOK_PARTS, DeepSRPIE, config_for, graft_look, widen, with_context, without_rrelu
from srpie_cli.weights import build, read_weights, save_weights


@dataclass
class TrainConfig:
    out: Path  # the weights file written (best by validation)
    run_dir: Path  # checkpoints and the log (never committed)
    photos: list[Path] = field(default_factory=list)  # folders of good photos (synthetic pairs)
    pairs: list[Path] = field(default_factory=list)  # folders of real (before, after) pairs
    enhance: bool = True  # synthetic pairs get exposure/colour/noise damage (False: pure SR)
    preset: str = "paper"
    global_skip: bool = True  # off only to measure what it is worth
    du_features: bool = False  # DUNet sees MBFNet's features (model.py); widens an --init model without them
    global_context: bool = False  # PENet sees a thumbnail of the whole photo (model.py); adds it to an --init model
    rrelu: bool = True  # False: RReLU fixed at its inference slope (model.py), also for an --init model
    look_only: bool = False  # train PENet and the context only; the upscaler stays as it is (see frozen_parts)
    look_from: str | None = None  # start the look (PENet, the context) from this model's: model.graft_look
    init: str | None = None  # weights to start from (fine-tuning)
    steps: int = 2000
    minutes: float | None = None  # total wall-time budget (earlier runs of a resume count); the schedule spans it
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    workers: int = 0  # background processes making batches; 0: in this process (exact resume on a CPU)
    batch_size: int = 16
    patch: int = 48  # low-resolution patch side
    lr: float = 1e-3
    lr_min_ratio: float = 0.02
    warmup: int = 100
    ema: float = 0.0  # decay of the weight average that is validated and written (WeightAverage); 0: off
    loss: str = "l1"  # l1 | hybrid
    vgg: Path | None = None  # local VGG-19 weights for the content loss
    pair_fraction: float = 0.5  # share of each batch from real pairs when both kinds are given
    clean_fraction: float = 0.3  # synthetic pairs left undamaged: a good photo must stay as it is
    holdout: int = 3  # pairs per folder kept out of training (the last ones): validated on, unless val_pairs
    val_pairs: int = 0  # pairs per folder before the held-out ones, also kept out: validation and model
    # selection use these, so the held-out pairs stay unseen by every choice the run makes
    val: Path | None = None  # HR folder scored with the SR protocol
    val_every: int = 250
    ckpt_every: int = 100
    threads: int = 0  # 0: torch's default
    seed: int = 0
    resume: bool = False
    command: str = ""

    @staticmethod
    def recipe(name: str) -> dict:
        """``paper``: Adam lr 1e-4, 64 px patches, batch 16 (the paper's first phase; its
        second, 88 px at 1e-5, is a fine-tune run). ``cpu``: lr 1e-3 with warm-up and cosine
        decay, 48 px patches: what 2 CPU cores can afford."""
        if name == "paper":
            return dict(lr=1e-4, patch=64, batch_size=16, warmup=0, lr_min_ratio=1.0)
        if name == "cpu":
            return dict(lr=1e-3, patch=48, batch_size=16, warmup=100, lr_min_ratio=0.02)
        raise ValueError(f"unknown recipe {name!r}: paper or cpu")


def frozen_parts(model: DeepSRPIE) -> list[torch.nn.Module]:
    """What ``look_only`` leaves untouched: the shallow feature, MBFNet and the upsampler,
    everything but the look (``model.LOOK_PARTS``: PENet, its own shallow feature when it has
    one, the global context). They run in eval mode (MBFNet's RReLU at its inference slope)
    with no gradients, which also skips MBFNet's backward pass, the larger part of a step."""
    return [getattr(model, name) for name, _ in model.named_children() if name not in LOOK_PARTS]


def set_mode(model: DeepSRPIE, cfg: TrainConfig) -> None:
    """Training mode, except the frozen parts under ``look_only``."""
    model.train()
    if cfg.look_only:
        for part in frozen_parts(model):
            part.eval()


def trainable(model: DeepSRPIE, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """Freeze what ``cfg`` leaves untouched, set the training mode, and return the parameters
    the optimiser moves."""
    if cfg.look_only:
        for part in frozen_parts(model):
            part.requires_grad_(False)
    set_mode(model, cfg)
    return [p for p in model.parameters() if p.requires_grad]


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging, as BasicSR's
    ``net_g_ema`` and timm's ``ModelEmaV3``): after every optimiser step each trained tensor
    of the average moves ``1 - d`` of the way to the model's. The average is what a run
    validates and writes; it smooths the last steps' noise, which a small batch on a few
    pairs makes large. ``d = min(decay, 1 - 1 / (n + 1))`` at the n-th update: the plain mean
    of the starting weights and every step since, until ``1 / (1 - decay)`` steps have
    passed, then an exponential window of about that many steps, so the decay given is the
    decay used from then on. Only what the optimiser moves is averaged (``--look-only``
    leaves the upscaler as it is)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise SrpieError(f"--ema {decay}: the decay must lie between 0 and 1 (say 0.999)")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # paired once: loading a checkpoint copies into these same tensors
        trained = [(p, q) for p, q in zip(model.parameters(), self.model.parameters()) if p.requires_grad]
        self._source, self._average = [p for p, _ in trained], [q for _, q in trained]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's weights; call after each optimiser step."""
        self.updates += 1
        d = min(self.decay, 1 - 1 / (self.updates + 1))
        torch._foreach_lerp_(self._average, self._source, 1 - d)

    def state(self) -> dict:
        return {"ema_state": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                "ema_updates": self.updates}

    def load(self, blob: dict) -> bool:
        """Take the average from a checkpoint; False when it has none (the run had no --ema)."""
        if "ema_state" not in blob:
            return False
        self.model.load_state_dict(blob["ema_state"])
        self.updates = int(blob["ema_updates"])
        return True


def progress(step: int, seconds: float, cfg: TrainConfig) -> float:
    """How far through the run: steps or wall time, whichever budget ends first."""
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.minutes:
        t = max(t, seconds / (60 * cfg.minutes))
    return min(1.0, max(0.0, t))


def lr_at(step: int, cfg: TrainConfig, seconds: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``lr * lr_min_ratio`` at the end of the budget
    (``cfg.steps``, or ``cfg.minutes`` when that ends first)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = progress(step, seconds, cfg)
    lo = cfg.lr * cfg.lr_min_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def _jsonable(cfg: TrainConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, list) else v)
            for k, v in asdict(cfg).items()}


def sample_batch(rng: np.random.Generator, photos: PhotoSet | None, pairs: PairSet | None, cfg: TrainConfig,
                 scale: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch (lr, hr, context): real pairs (a binomial share when both kinds
    are given) and synthetic pairs, ``cfg.clean_fraction`` of them undamaged."""
    n_pairs = 0
    if pairs is not None and len(pairs):
        n_pairs = cfg.batch_size if photos is None else int(rng.binomial(cfg.batch_size, cfg.pair_fraction))
    items = [pairs.sample(rng, cfg.patch, scale) for _ in range(n_pairs)]
    items += [photos.sample(rng, cfg.patch, scale, cfg.enhance and rng.random() >= cfg.clean_fraction)
              for _ in range(cfg.batch_size - n_pairs)]
    return batch(items)


class BatchStream(torch.utils.data.IterableDataset):
    """Endless batches made in background worker processes (``cfg.workers``), each with its
    own generator seeded by (seed, first step, worker): a GPU is not kept waiting for the
    CPU-side damage and JPEG round trips. Not bit-exact across a resume, unlike the
    in-process path."""

    def __init__(self, photos, pairs, cfg: TrainConfig, scale: int, first_step: int):
        self.photos, self.pairs, self.cfg, self.scale, self.first_step = photos, pairs, cfg, scale, first_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.cfg.seed, self.first_step, info.id if info else 0])
        while True:
            yield sample_batch(rng, self.photos, self.pairs, self.cfg, self.scale)


def check_config(cfg: TrainConfig) -> None:
    """What can be refused before anything is loaded or any folder made (SrpieError: the
    command line calls it a usage error): nothing to train on, --look-only without a model,
    an unknown device or model name."""
    from srpie_cli.tiling import pick_device
    from srpie_cli.weights import resolve

    if not cfg.photos and not cfg.pairs:
        raise SrpieError("nothing to train on: give --photos and/or --pairs folders")
    if cfg.look_only and not cfg.init:
        raise SrpieError("--look-only fine-tunes the look of a trained model: give --init")
    pick_device(cfg.device)
    for model in (cfg.init, cfg.look_from):
        if model is not None:
            resolve(model)


def build_model(cfg: TrainConfig) -> DeepSRPIE:
    """A new network of ``cfg.preset``, or the ``--init`` model widened, grafted or given a
    context as ``cfg`` asks (each change keeps its output until trained: ``model.py``)."""
    if not cfg.init:
        return DeepSRPIE(config_for(cfg.preset, global_skip=cfg.global_skip, du_features=cfg.du_features,
                                    global_context=cfg.global_context, rrelu=cfg.rrelu))
    from srpie_cli.weights import load_model

    model, _ = load_model(cfg.init)
    if cfg.du_features and not model.cfg.du_features:
        if not model.cfg.dunet:
            raise SrpieError(f"{cfg.init}: --du-features needs a model with DUNet (this one has the PixelShuffle head)")
        model = widen(model)
    if not cfg.rrelu and model.cfg.rrelu:
        model = without_rrelu(model)
    if cfg.look_from:
        model = graft_look(model, load_model(cfg.look_from)[0])
    if cfg.global_context and not model.cfg.global_context:
        model = with_context(model)
    return model


@dataclass
class Data:
    """What a run learns from and is judged on."""

    photos: PhotoSet | None  # good photos for synthetic pairs
    pairs: PairSet | None  # real pairs trained on
    held: PairSet | None  # held out: scored by no choice of the run when val_pairs is given
    val_set: PairSet | None  # what the best file is chosen on

    def summary(self, cfg: TrainConfig) -> dict:
        return {"photos": [str(p) for p in cfg.photos], "photo_count": len(self.photos.images) if self.photos else 0,
                "pairs": [str(p) for p in cfg.pairs], "pair_count": len(self.pairs) if self.pairs else 0,
                "held_out_pairs": self.held.names if self.held else [],
                "validation_pairs": self.val_set.names if self.val_set is not None and cfg.val_pairs else []}


def load_data(cfg: TrainConfig, scale: int) -> Data:
    photos = PhotoSet.from_folders(cfg.photos) if cfg.photos else None
    pairs, held, val_set = None, None, None
    if cfg.pairs:
        pairs, held = PairSet.from_folders(cfg.pairs, scale, cfg.holdout + cfg.val_pairs)
        val_set, held = held.split(cfg.holdout) if cfg.val_pairs else (held, held)
    return Data(photos, pairs, held, val_set)


def batch_source(cfg: TrainConfig, data: Data, rng: np.random.Generator, scale: int, first_step: int,
                 device: torch.device) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A function returning the next batch on ``device``: made here from ``rng`` (exact on
    resume), or by ``cfg.workers`` background processes (started before CUDA is touched, so
    they fork CPU-only)."""
    stream = None
    if cfg.workers:
        loader = torch.utils.data.DataLoader(BatchStream(data.photos, data.pairs, cfg, scale, first_step),
                                             batch_size=None, num_workers=cfg.workers, prefetch_factor=4,
                                             pin_memory=device.type == "cuda")
        stream = iter(loader)

    def next_batch():
        lr_t, hr_t, ctx_t = next(stream) if stream is not None else sample_batch(rng, data.photos, data.pairs, cfg,
                                                                                scale)
        return (lr_t.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                hr_t.to(device, non_blocking=True), ctx_t.to(device, non_blocking=True))

    return next_batch


def prepare_device(device: torch.device) -> None:
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)  # pinned copies and validation use it too, not GPU 0
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: autotune once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def selection_key(res: dict) -> float:
    """What "better" means: the PSNR gain over bicubic, summed over the validation sets (so a
    model that fixes bad photos but wrecks good ones does not win)."""
    gains = [v["psnr"] - v["bicubic_psnr"] for v in res.values()]
    return sum(gains) if gains else -math.inf


def hardware(device: torch.device, cfg: TrainConfig) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({cfg.workers} data workers)"
    return f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip()


class Run:
    """The resumable state of a run: the model, its optimiser and weight average, the step,
    the best score so far, the validation history, the time spent and the batch generator.
    ``checkpoint()`` writes all of it to ``RUN_DIR/last.pt``; ``Run(..., resume=True)``
    continues from there exactly (bit for bit on a CPU without workers)."""

    def __init__(self, cfg: TrainConfig, model: DeepSRPIE, data: Data, device: torch.device,
                 log: Callable[[str], None]):
        self.cfg, self.data, self.device, self.log = cfg, data, device, log
        self.ckpt = cfg.run_dir / "last.pt"
        self.rng = np.random.default_rng(cfg.seed)
        self.step, self.best, self.history, self.seconds = 0, -math.inf, [], 0.0
        self.last_scores: dict = {}
        blob = read_weights(self.ckpt) if cfg.resume and self.ckpt.is_file() else None
        if blob is not None:
            model = build(blob, str(self.ckpt))
            self.step, self.best, self.history, self.seconds = (blob["step"], blob["best"], list(blob["history"]),
                                                                blob["seconds"])
            self.rng.bit_generator.state = _rng_state_from(blob["rng"])
            if "torch_rng" in blob:  # RReLU draws its slopes from it
                torch.set_rng_state(blob["torch_rng"])
            log(f"resumed {self.ckpt} at step {self.step} (best {self.best:.3f})")
        self.next_batch = batch_source(cfg, data, self.rng, model.scale, self.step, device)
        prepare_device(device)
        params = trainable(model, cfg)
        # channels-last: ~15% faster steps on CPU, and the layout cuDNN's tensor-core kernels want
        self.model = model.to(device, memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        self.average = WeightAverage(model, cfg.ema) if cfg.ema else None
        if blob is not None:
            self._resume_optimiser(blob)
        self.net = self.average.model if self.average is not None else model  # validated and written

    def _resume_optimiser(self, blob: dict) -> None:
        self.opt.load_state_dict(blob["optimizer"])  # after the move: the state follows the parameters
        if self.average is not None and not self.average.load(blob):
            self.log("the checkpoint has no weight average: it starts from the resumed weights")
        if self.average is None and "ema_state" in blob:
            self.log("the run had a weight average (--ema) and this resume has none: from here the trained "
                     "weights are validated and written")

    def summary(self, scores: dict) -> dict:
        """The meta of a weights file: what made it and how it scores."""
        cfg = self.cfg
        return {"srpie_version": __version__, "command": cfg.command, "train_config": _jsonable(cfg),
                "data": self.data.summary(cfg), "steps": self.step, "train_seconds": round(self.seconds, 1),
                "hardware": hardware(self.device, cfg), "scores": scores}

    def checkpoint(self) -> None:
        extra = {"optimizer": self.opt.state_dict(), "step": self.step, "best": self.best, "history": self.history,
                 "seconds": self.seconds, "rng": _rng_state_to(self.rng.bit_generator.state),
                 "torch_rng": torch.get_rng_state()}
        if self.average is not None:
            extra.update(self.average.state())
        save_weights(self.ckpt, self.model, self.summary({}), extra=extra)

    def validate(self, m: DeepSRPIE) -> dict:
        m.eval()
        res = {}
        if self.cfg.val:
            res["val_sr"] = mean_score(evaluate_sr(m, self.cfg.val))
        if self.data.val_set is not None and len(self.data.val_set):
            res["val_pairs"] = mean_score(evaluate_pairs(m, self.data.val_set))
        set_mode(self.model, self.cfg)
        return res

    def validate_and_keep_best(self) -> None:
        """Score the weights written (the average, with --ema), log the trained weights'
        score beside it, and write ``cfg.out`` when the score is the best so far."""
        self.last_scores = res = self.validate(self.net)
        entry = {"step": self.step, **res}
        if self.average is not None and res:  # the trained weights too: what the average is worth, measured
            entry["without_average"] = self.validate(self.model)
            self.log(f"step {self.step} without the weight average: key {selection_key(entry['without_average']):.3f}")
        self.history.append(entry)
        self.log(f"step {self.step} validation {res}")
        if selection_key(res) > self.best:
            self.best = selection_key(res)
            save_weights(self.cfg.out, self.net, self.summary(res))
            self.log(f"step {self.step}: best so far, wrote {self.cfg.out}")

    def finish(self) -> dict:
        if self.cfg.minutes is not None and self.step < self.cfg.steps and self.step % self.cfg.val_every:
            self.validate_and_keep_best()  # stopped by the clock: score the end
        self.checkpoint()  # after the last validation, so a resume knows its best
        if not self.cfg.out.exists():  # no validation ran: write what we have
            self.last_scores = self.validate(self.net)
            save_weights(self.cfg.out, self.net, self.summary(self.last_scores))
        return self.summary(self.last_scores)


def finite(loss: torch.Tensor, step: int) -> float:
    """The loss as a number (this waits for the device, so it is read only when needed: every
    20 steps and before anything is validated or saved); a non-finite loss stops the run
    before it can overwrite a good checkpoint."""
    v = loss.item()
    if not math.isfinite(v):
        raise SrpieError(f"loss is not finite at step {step}; lower the learning rate")
    return v


def train(cfg: TrainConfig, log: Callable[[str], None] = print,
          on_step: Callable[[int, float, float], None] | None = None) -> dict:
    """Train; returns the summary stored in the weights file's meta."""
    from srpie_cli.tiling import pick_device

    # ---- setup: the model, the data, the run state (resumed when asked)
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg)
    data = load_data(cfg, model.scale)
    loss_fn = HybridLoss(LossWeights.preset(cfg.loss), cfg.vgg)
    if cfg.loss == "hybrid" and not loss_fn.uses_content:
        log("content (VGG-19) loss off: no local VGG-19 weights file given (--vgg)")
    run = Run(cfg, model, data, device, log)
    loss_fn.to(device)

    # ---- the loop
    start, seconds0, step0 = time.time(), run.seconds, run.step
    value, loss = math.nan, None
    while run.step < cfg.steps:
        if cfg.minutes is not None and run.seconds >= 60 * cfg.minutes:
            log(f"time budget of {cfg.minutes} min reached at step {run.step}")
            break
        lr = lr_at(run.step, cfg, run.seconds)
        for g in run.opt.param_groups:
            g["lr"] = lr
        lr_t, hr_t, ctx_t = run.next_batch()
        loss, _ = loss_fn(run.model(lr_t, ctx_t), hr_t)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if run.average is not None:
            run.average.update()
        run.step += 1
        run.seconds = seconds0 + time.time() - start
        step = run.step
        validating = step % cfg.val_every == 0 or step == cfg.steps
        saving = step % cfg.ckpt_every == 0 or step == cfg.steps
        if step % 20 == 0 or step == 1 or validating or saving:
            value = finite(loss, step)
        if step % 20 == 0:
            log_progress(log, cfg, step, step0, run.seconds, seconds0, value, lr)
        if validating:
            run.validate_and_keep_best()
        if saving:
            run.checkpoint()
        if on_step:
            on_step(step, value, lr)  # the last loss read, not this step's (no device sync)
    if loss is not None:
        finite(loss, run.step)  # before the checkpoint below
    return run.finish()


def log_progress(log, cfg: TrainConfig, step: int, step0: int, seconds: float, seconds0: float, value: float,
                 lr: float) -> None:
    rate = (step - step0) / max(1e-9, seconds - seconds0)
    left = (cfg.steps - step) / rate
    if cfg.minutes is not None:
        left = min(left, 60 * cfg.minutes - seconds)
    log(f"step {step}/{cfg.steps} loss {value:.5f} lr {lr:.2e} {seconds / 60:.1f} min, "
        f"{rate:.1f} steps/s, ETA {max(0.0, left) / 60:.0f} min")


def _rng_state_to(state: dict) -> dict:
    """numpy's PCG64 state holds 128-bit ints, which weights_only loading cannot carry: store
    them as strings."""
    s = state["state"]
    return {"bit_generator": state["bit_generator"], "state": str(s["state"]), "inc": str(s["inc"]),
            "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _rng_state_from(d: dict) -> dict:
    return {"bit_generator": d["bit_generator"], "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}
