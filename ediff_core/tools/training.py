"""Training: the shared base model, σ-tree branching into experts (§3.2, Fig. 2; §4.1, App. B), super-resolution.

Every run is a list of *jobs*; a job trains one network on one σ interval from an initial state,
checkpoints every ``save_every`` steps under ``OUT/_train/JOB/`` (fp32 weights, EMA and AdamW
state in safetensors) and exports its EMA weights in fp16 to the model folder ``OUT``. Jobs run on
the CPU or on a CUDA device (``device``); what they save is on the CPU, so a run started on one
resumes on the other. Which experts branch from the shared model is data: ``TrainConfig.layout``
(a list of ``Branch``; default the paper's three-expert tree), read by every job and the index.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..core.conditioning import DROPOUT_RATES, Cond
from ..data.transforms import degrade as _degrade
from ..data.transforms import to_tensor as _to_tensor
from .distributed import Ranks
from ..core.embed import EncoderSet
from ..core.experts import ExpertSpec, Interval, check_tiling, three_expert_specs
from .feed import EncodingCollate, Feed, encodes_in_workers
from .precision import check_precision, precision_context
from ..core.loss import EDMLoss
from ..core.networks import EDiffUNet, build_unet, denoiser
from ..core.request import pick_device

if TYPE_CHECKING:
    from ..data.spec import DataSpec

CAPTION_MIX = {"short": 0.4, "medium": 0.3, "long": 0.3}


@dataclass
class TrainConfig:
    """Hyperparameters of one preset; saved with every job so a run can be reproduced."""

    base_unet: str = "mini"
    sr_unet: str = "mini_sr"
    base_resolution: int = 32  # the base model's side (Shapes World: Lanczos 64 -> 32)
    sr_resolution: int = 64  # the super-resolution stage's output side
    sr_crop: int = 32  # SR trains on random crops (as eDiff-I's SR1024 does on 256 crops)
    batch_size: int = 32
    lr: float = 3e-4  # paper: 1e-4 at batch 2048; higher here because the budget is ~10^3 steps
    warmup: int = 100  # linear learning-rate warm-up, steps
    weight_decay: float = 0.01  # AdamW, as the paper
    ema_decay: float = 0.999  # capped by (1 + step) / (10 + step) early on
    base_steps: int = 2000  # the shared model on all of p(σ)
    expert_steps: int = 400  # each expert's fine-tuning on its interval
    sr_steps: int = 600
    high_level: int = 5  # the high-noise leaf E^high_(2^high − 1) of the default layout; the paper uses 9
    low_level: int = 3  # the low-noise leaf E^low_0 of the default layout, as the paper
    # the experts, as data (``Branch.from_json`` entries, in training order); None: paper_layout(high_level, low_level)
    layout: list[dict] | None = None
    dropout: dict[str, float] = field(default_factory=lambda: dict(DROPOUT_RATES))
    sr_aug_max: float = 0.4  # noise-conditioning augmentation σ ~ U(0, sr_aug_max) on the low-res input
    save_every: int = 100
    seed: int = 0
    threads: int = 2
    data_workers: int = 1
    encode_in_workers: bool = False  # on the CPU, the data workers also run the frozen encoders (feed.EncodingCollate); slower on 2 cores (model card)
    toy_encoders: bool = False  # tests: 2-step encoders on 64 scenes instead of the real mini-T5 and mini-CLIP
    precision: str = "fp32"  # "bf16": forward and backward under bf16 autocast; weights, AdamW and EMA stay fp32
    grounding: float = 0.0  # W of the token-grounding loss on the base model's cross-attention (ediff_core.tools.grounding); 0 = the paper's training


PRESETS: dict[str, TrainConfig] = {
    "mini": TrainConfig(),
    # the base U-Net with attention at 32² as well; warm-starts from a "mini" run's exported weights
    "mini_attn32": TrainConfig(base_unet="mini_attn32"),
    # the base U-Net twice as wide (trains from scratch; the same encoders and SR stage as "mini")
    "mini_wide": TrainConfig(base_unet="mini_wide"),
    "tiny": TrainConfig(base_unet="tiny", sr_unet="tiny", batch_size=4, base_steps=3, expert_steps=2, sr_steps=2, warmup=1, save_every=2, data_workers=0, toy_encoders=True),
}


# ---------------------------------------------------------------- the expert layout (§3.2, Fig. 2; App. B)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RESERVED = ("shared", "baseline")  # base/shared (the root) and base/baseline (Fig. 7's) are not experts


@dataclass(frozen=True)
class Branch:
    """One expert of the training layout: ``spec`` (name, σ interval, guidance) fine-tuned from the
    base network ``parent`` (``"shared"``, or an earlier branch whose interval holds this one) for
    ``steps`` steps (None: ``TrainConfig.expert_steps``). Its config form is a model-index expert
    entry (``model_folder.ExpertEntry``: name, sigma_min, sigma_max with null for ∞, guidance) with
    ``parent`` and ``steps`` instead of ``path``."""

    spec: ExpertSpec
    parent: str = "shared"
    steps: int | None = None

    @staticmethod
    def from_json(d: dict, where: str = "layout") -> "Branch":
        if not isinstance(d, dict) or not {"name", "sigma_min"} <= d.keys() or d.keys() - {"name", "sigma_min", "sigma_max", "guidance", "parent", "steps"}:
            raise ValueError(f"{where}: an expert is a mapping of name, sigma_min, sigma_max (null = ∞) and optional guidance, parent, steps; got {d!r}")
        hi = d.get("sigma_max")
        steps = d.get("steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"{where}: steps must be a positive integer (or null for expert_steps); got {steps!r}")
        guidance = d.get("guidance")
        return Branch(ExpertSpec(str(d["name"]), Interval(float(d["sigma_min"]), math.inf if hi is None else float(hi)),
                                 None if guidance is None else float(guidance)), str(d.get("parent", "shared")), steps)


def paper_layout(high_level: int = 5, low_level: int = 3) -> list[Branch]:
    """The default: the paper's base system (config D), E^high_(2^high−1), the complement model and
    E^low_0, each branched from the shared model; high-noise leaf first."""
    return [Branch(s) for s in reversed(three_expert_specs(high_level, low_level))]


def training_layout(cfg: TrainConfig) -> list[Branch]:
    """``cfg.layout`` (or the paper's tree), checked: unique folder-safe names, every parent trained
    before its children and holding their intervals, and the leaves' intervals tiling [0, ∞)."""
    if cfg.layout is None:
        return paper_layout(cfg.high_level, cfg.low_level)
    if not isinstance(cfg.layout, (list, tuple)) or not cfg.layout:
        raise ValueError(f"layout: a non-empty list of experts (or null for the paper's tree); got {cfg.layout!r}")
    layout = [Branch.from_json(d, f"layout[{i}]") for i, d in enumerate(cfg.layout)]
    intervals = {"shared": Interval(0.0, math.inf)}
    for b in layout:
        name, iv = b.spec.name, b.spec.interval
        if not _NAME.fullmatch(name) or name in _RESERVED or name in intervals:
            raise ValueError(f"layout: expert names must be unique folder names other than {', '.join(_RESERVED)}; got {name!r}")
        if not 0 <= iv.lo < iv.hi:
            raise ValueError(f"layout: {name}'s σ interval must have 0 <= sigma_min < sigma_max; got [{iv.lo}, {iv.hi})")
        parent = intervals.get(b.parent)
        if parent is None:
            raise ValueError(f"layout: {name}'s parent {b.parent!r} is neither 'shared' nor an expert listed before it")
        if not parent.lo <= iv.lo < iv.hi <= parent.hi:
            raise ValueError(f"layout: {name}'s σ interval [{iv.lo}, {iv.hi}) is outside its parent {b.parent}'s [{parent.lo}, {parent.hi})")
        intervals[name] = iv
    try:
        check_tiling(leaf_specs(layout))
    except ValueError as e:
        raise ValueError(f"layout: the leaf experts' {e}") from None
    return layout


def leaf_specs(layout: list[Branch]) -> list[ExpertSpec]:
    """The experts a trained model routes σ to (those no other branch starts from), in ascending σ."""
    parents = {b.parent for b in layout}
    return sorted((b.spec for b in layout if b.spec.name not in parents), key=lambda s: s.interval.lo)


# ---------------------------------------------------------------- data


class ShapesStream(IterableDataset):
    """Endless Shapes World training samples: 64-px image, base-resolution image, degraded low-res, a caption.

    Rank ``rank`` of ``world`` draws only scene ids ≡ rank (mod world): disjoint shards of the train split.
    """

    def __init__(self, cfg: TrainConfig, seed: int, rank: int = 0, world: int = 1):
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world

    def __iter__(self) -> Iterator[dict]:
        from ..data.captions import grounded_captions
        from ..data.shapes_world import SPLITS, render, sample_scene
        from .grounding import grounding_fields

        info = get_worker_info()
        wid = info.id if info is not None else 0
        rng = random.Random(self.seed * 7919 + wid + 104729 * self.rank)
        lo, hi = SPLITS["train"].start, SPLITS["train"].stop
        kinds, weights = list(CAPTION_MIX), list(CAPTION_MIX.values())
        while True:
            scene = sample_scene(lo + self.rank + self.world * rng.randrange((hi - lo - self.rank + self.world - 1) // self.world), "train")
            img = render(scene, self.cfg.sr_resolution)
            small = img.resize((self.cfg.base_resolution,) * 2, Image.LANCZOS)
            degraded = _to_tensor(_degrade(small, rng))  # draws from rng before the caption's kind, as ever
            caption = grounded_captions(scene)[rng.choices(kinds, weights)[0]]
            sample = {"image": _to_tensor(img), "base": _to_tensor(small), "degraded": degraded, "caption": caption.text}
            if self.cfg.grounding > 0:  # spans and masks of each named object group
                sample |= grounding_fields(scene, caption, self.cfg.base_resolution)
            yield sample


def batches(cfg: TrainConfig, seed: int, ranks: Ranks | None = None, enc: EncoderSet | None = None) -> Iterator[dict]:
    """This rank's Shapes World batches; with ``enc`` the data workers also encode each one (``"cond"``)."""
    ranks = ranks or Ranks()
    loader = DataLoader(ShapesStream(cfg, seed, ranks.rank, ranks.world), batch_size=ranks.per_rank(cfg.batch_size),
                        num_workers=cfg.data_workers, persistent_workers=cfg.data_workers > 0,
                        **({} if enc is None else {"collate_fn": EncodingCollate(enc)}))
    yield from loader


# ---------------------------------------------------------------- one job


@dataclass
class Job:
    """One network trained on one σ interval."""

    name: str  # folder name under the model folder, e.g. "base/E3_0"
    interval: Interval
    steps: int
    super_resolution: bool = False
    init: str | None = None  # another job whose final EMA weights initialise this one


@torch.no_grad()
def ema_step(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·net, over all parameters in one fused call."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)


def _lr(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then constant; ``step`` counts from the optimizer's start."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def _save_state(path: Path, net, ema, opt, step: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    names = {p: n for n, p in net.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{names[p]}.{k}"] = v.detach().cpu().contiguous()
    save_file(tensors, str(path / "state.safetensors.tmp"))
    (path / "state.safetensors.tmp").replace(path / "state.safetensors")
    (path / "state.json").write_text(json.dumps({"step": step}))


def _load_state(path: Path, net, ema, opt) -> int:
    t = load_file(str(path / "state.safetensors"))
    net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    for n, p in net.named_parameters():
        st = {k.rsplit(".", 1)[1]: v for k, v in t.items() if k.startswith(f"opt.{n}.") and k.count(".") == n.count(".") + 2}
        if st:  # moments go to the parameter's device; AdamW keeps its step count on the CPU
            opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in st.items()}
    return json.loads((path / "state.json").read_text())["step"]


def grow_into(net: EDiffUNet, state: dict[str, Tensor]) -> list[str]:
    """Loads ``state`` into ``net``, which may have attention blocks the source lacks; returns those blocks.

    Each new block's output projection is zeroed, so it adds nothing to its residual stream and the
    grown network computes exactly the source's function until training moves it (the zero-init
    residual branches of ADM and ControlNet). Any other mismatch is an error.
    """
    missing, unexpected = net.load_state_dict(state, strict=False)
    blocks = [re.match(r"(.*\.attentions\.\d+)\.", k) for k in missing]
    new_blocks = sorted({b.group(1) for b in blocks if b})
    stray = [k for k, b in zip(missing, blocks) if not b]
    if unexpected or stray:
        raise ValueError(f"weights do not fit this network: unexpected {unexpected[:5]}, missing outside new attention blocks {stray[:5]}")
    modules = dict(net.named_modules())
    for name in new_blocks:
        proj = modules[name].proj_out
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    return new_blocks


def _final_weights(out: Path, job_name: str) -> dict[str, Tensor]:
    """A finished job's EMA weights: fp32 from its training state if present, else the fp16 export."""
    state = out / "_train" / job_name / "state.safetensors"
    if state.exists():
        return {k[4:]: v for k, v in load_file(str(state)).items() if k.startswith("ema.")}
    return EDiffUNet.from_pretrained(out / job_name, low_cpu_mem_usage=False).state_dict()


def train_job(job: Job, out: Path, enc: EncoderSet, cfg: TrainConfig, resume: bool = True, log: Callable[[str], None] = print,
              device: torch.device | str = "cpu", deadline: float = math.inf, feed: Feed | None = None) -> EDiffUNet:
    """Trains (or resumes) one job on ``device`` (where ``enc`` runs too); returns its EMA network
    and exports it to ``out/job.name``. Past ``deadline`` (a ``time.time()``) it saves and exports
    the step it is at and stops early: ``--resume`` continues from there. ``feed``: the data, the
    conditioning and the ranks (default: Shapes World, encoded on the fly, one process); only
    rank 0 writes."""
    from tqdm import tqdm

    feed = feed or Feed()
    ranks = feed.ranks

    torch.manual_seed(cfg.seed)
    state_dir = out / "_train" / job.name
    export_dir = out / job.name
    res = cfg.sr_crop if job.super_resolution else cfg.base_resolution
    net = build_unet(cfg.sr_unet if job.super_resolution else cfg.base_unet, cfg.sr_resolution if job.super_resolution else res, enc.dims, job.super_resolution)
    step = 0
    warm_from = 0  # the step at which this optimizer started: a fresh AdamW warms up again from here
    if job.init is not None:
        net.load_state_dict(_final_weights(out, job.init))
    elif resume and not (state_dir / "state.json").exists() and (export_dir / "config.json").exists():
        grow_into(net, EDiffUNet.from_pretrained(export_dir, low_cpu_mem_usage=False).state_dict())
        step = json.loads((export_dir / "training.json").read_text()).get("step", 0) if (export_dir / "training.json").exists() else 0
        warm_from = step
        log(f"{job.name}: warm start from exported weights at step {step} (no optimizer state; lr warms up again)")
    net = net.float().to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume and (state_dir / "state.json").exists():
        step = _load_state(state_dir, net, ema, opt)
        log(f"{job.name}: resumed at step {step}")
    if step >= job.steps:
        log(f"{job.name}: already at step {step} >= {job.steps}")
        return ema
    loss_fn = EDMLoss(interval=job.interval.as_loss_interval())
    recorder = _grounding_recorder(net, job, cfg)  # before DDP wraps it
    D = denoiser(ranks.wrap(net))  # DDP all-reduces the gradients of the ranks' rows
    rows = ranks.rows(cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + step)  # the same on every rank: draws are for the global batch
    csv_path = state_dir / "loss.csv"
    f = writer = None
    if ranks.is_main:
        state_dir.mkdir(parents=True, exist_ok=True)
        new_csv = not csv_path.exists()
        f = open(csv_path, "a", newline="", buffering=1)  # line-buffered: a crash loses no logged step
        writer = csv.writer(f)
        if new_csv:
            writer.writerow(["step", "loss", "lr", "seconds"] + (["grounding"] if recorder else []))
    t0 = time.time()
    in_workers = enc if encodes_in_workers(cfg, device, feed.cache) else None
    data = batches(cfg, cfg.seed * 100003 + step, ranks, in_workers) if feed.source is None else feed.file_batches(cfg, step, in_workers)
    bar = tqdm(total=job.steps, initial=step, desc=job.name, mininterval=10, smoothing=0.05, disable=not ranks.is_main)
    running = None
    saved = [step]

    def save() -> None:
        record = feed.record()
        if ranks.is_main:
            f.flush()
            _save_state(state_dir, net, ema, opt, step)
            export(ema, export_dir, step, cfg, record)
        saved[0] = step

    def on_failure() -> str:
        if ranks.is_main and step > saved[0]:
            _save_state(state_dir, net, ema, opt, step)
            saved[0] = step
        return f"the last checkpoint is step {saved[0]} in {state_dir} (continue with --resume, on any number of ranks)"

    feed.rescue = on_failure  # run() calls it if a rank fails (distributed.Ranks.guard)
    for batch in data:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        cond = feed.conditioning(enc, batch, cfg, gen)
        x0 = batch["base"]
        if job.super_resolution:
            x0, cond = _sr_inputs(batch, cond, cfg, gen, rows)
        lr = _lr(cfg, step - warm_from)
        for g in opt.param_groups:
            g["lr"] = lr
        with precision_context(cfg.precision, device):
            if recorder is None:
                loss = loss_fn(D, x0, cond, gen, rows).mean()
            else:
                loss, ground = _grounded_loss(loss_fn, D, x0, cond, gen, rows, batch, enc, recorder)
        opt.zero_grad(set_to_none=True)
        (loss if recorder is None else loss + cfg.grounding * ground).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_step(ema, net, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        ranks.stop_if_signalled()  # torchrun's SIGTERM takes effect here, between steps
        value = ranks.mean(loss.item(), x0.device)  # the global batch's losses (collectives: every rank)
        grounding = [f"{ranks.mean(ground.item(), x0.device):.5f}"] if recorder else []
        running = value if running is None else 0.98 * running + 0.02 * value
        if writer is not None:
            writer.writerow([step, f"{value:.5f}", f"{lr:.2e}", f"{time.time() - t0:.1f}"] + grounding)
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        out_of_time = ranks.any(time.time() >= deadline, x0.device) if math.isfinite(deadline) else False
        if step % cfg.save_every == 0 or step >= job.steps or out_of_time:
            save()
        if step >= job.steps:
            break
        if out_of_time:
            log(f"{job.name}: time budget spent at step {step} of {job.steps}; saved (continue with --resume)")
            break
    bar.close()
    if f is not None:
        f.close()
    log(f"{job.name}: step {step}, smoothed loss {running:.4f}, {time.time() - t0:.0f} s")
    return ema


def _grounding_recorder(net: EDiffUNet, job: Job, cfg: TrainConfig):
    """With ``cfg.grounding`` > 0 on a base job: the grounding processors on ``net`` (the EMA copy
    and every exported network keep the fused ones) and their recorder; else None."""
    if cfg.grounding <= 0 or job.super_resolution:
        return None
    from .grounding_attention import install_grounding

    return install_grounding(net)


def _grounded_loss(loss_fn: EDMLoss, D, x0: Tensor, cond: Cond, gen: torch.Generator, rows: tuple[int, int] | None, batch: dict, enc: EncoderSet, recorder) -> tuple[Tensor, Tensor]:
    """The EDM loss and, from the same forward pass, the grounding loss (both scalars)."""
    from .grounding import batch_targets

    targets = batch_targets(enc, list(batch["caption"]), batch["ground_spans"], batch["ground_masks"], cond.keep, cond.t5_tokens.shape[1], cond.clip_tokens.shape[1])
    with recorder.recording(targets):
        loss = loss_fn(D, x0, cond, gen, rows).mean()
    return loss, recorder.loss()


def _sr_inputs(batch: dict, cond: Cond, cfg: TrainConfig, gen: torch.Generator, rows: tuple[int, int] | None = None) -> tuple[Tensor, Cond]:
    """Upsampled degraded low-res input with noise augmentation, and a shared random crop.
    ``rows``: (offset, global batch) under data parallelism: draws for the global batch, sliced."""
    hr = batch["image"]
    lr = torch.nn.functional.interpolate(batch["degraded"], size=hr.shape[-2:], mode="bilinear", align_corners=False)
    B = hr.shape[0]
    offset, total = rows or (0, B)
    mine = slice(offset, offset + B)
    aug = torch.rand(total, generator=gen) * cfg.sr_aug_max  # random draws on the CPU generator, then to the data's device
    aug = torch.where(torch.rand(total, generator=gen) < 0.2, torch.zeros_like(aug), aug)[mine].to(hr.device)
    lr = lr + aug.reshape(-1, 1, 1, 1) * torch.randn((total, *lr.shape[1:]), generator=gen)[mine].to(hr.device)
    c = cfg.sr_crop
    i, j = (int(v) for v in torch.randint(0, hr.shape[-1] - c + 1, (2,), generator=gen))
    return hr[..., i : i + c, j : j + c], replace(cond, lowres=lr[..., i : i + c, j : j + c], aug_sigma=aug)


def export(net: EDiffUNet, folder: Path, step: int, cfg: TrainConfig, data: dict | None = None) -> None:
    """Saves fp16 safetensors weights and the training record (step, hyperparameters, the device
    it trained on; ``data``: a dataset on disk, its counts and skipped samples) of one network."""
    device = next(net.parameters()).device
    half = copy.deepcopy(net).to("cpu", torch.float16)
    half.save_pretrained(folder, safe_serialization=True)
    record = {"step": step, "config": asdict(cfg), "device": _device_name(device)} | ({"data": data} if data else {})
    (folder / "training.json").write_text(json.dumps(record, indent=1))


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


# ---------------------------------------------------------------- stages


def base_jobs(cfg: TrainConfig) -> list[Job]:
    return [Job("base/shared", Interval(0.0, math.inf), cfg.base_steps)]


def expert_jobs(cfg: TrainConfig) -> tuple[list[ExpertSpec], list[Job]]:
    """The layout's leaf experts (ascending σ) and one job per branch, in the layout's order."""
    layout = training_layout(cfg)
    jobs = [Job(f"base/{b.spec.name}", b.spec.interval, b.steps or cfg.expert_steps, init=f"base/{b.parent}") for b in layout]
    return leaf_specs(layout), jobs


def baseline_job(cfg: TrainConfig) -> Job:
    """Fig. 7's baseline: the shared model trained on as many more samples as the experts saw."""
    return Job("base/baseline", Interval(0.0, math.inf), sum(j.steps for j in expert_jobs(cfg)[1]), init="base/shared")


def sr_jobs(cfg: TrainConfig) -> list[Job]:
    return [Job("sr64/single", Interval(0.0, math.inf), cfg.sr_steps, super_resolution=True)]


# ---------------------------------------------------------------- runs

STAGES = ("encoders", "base", "experts", "sr", "all")


def load_training_encoders(out: Path, device: torch.device | str = "cpu") -> EncoderSet:
    from ..core.embed import load_encoder_set

    if not (out / "t5").exists() or not (out / "clip").exists():
        raise FileNotFoundError(f"{out} has no trained encoders (t5/, clip/); run the 'encoders' stage first, or give --t5 and --clip")
    return load_encoder_set(str(out / "t5"), str(out / "clip"), device)


def write_model_index(out: Path, cfg: TrainConfig, name: str = "ediff-mini", encoders: dict[str, str] | None = None) -> None:
    """Indexes whatever the run has exported: the layout's leaf experts when all exist, else the
    shared model. ``encoders``: paths or Hub ids of encoders outside the run folder (default: its t5/ and clip/)."""
    from ..core.model_folder import ExpertEntry, ModelIndex, StageEntry, write_index

    specs, jobs = expert_jobs(cfg)
    if all((out / "base" / s.name / "config.json").exists() for s in specs):
        experts = [ExpertEntry(s.name, f"base/{s.name}", s.interval.lo, s.interval.hi, s.guidance) for s in specs]
    else:
        experts = [ExpertEntry("shared", "base/shared", 0.0, math.inf)]
    sr = []
    if (out / "sr64" / "single" / "config.json").exists():
        sr = [StageEntry("sr64", cfg.sr_resolution, [ExpertEntry("single", "sr64/single", 0.0, math.inf)], aug_sigma=0.1)]
    card = {}
    for job in ["base/shared", *[j.name for j in sorted(jobs, key=lambda j: j.interval.lo)], "base/baseline", "sr64/single"]:
        rec = out / job / "training.json"
        if rec.exists():
            card[job] = {"step": json.loads(rec.read_text())["step"]}
    index = ModelIndex(name, encoders or {"t5": "t5", "clip": "clip"}, StageEntry("base", cfg.base_resolution, experts), sr, {}, {"trained_steps": card, "batch_size": cfg.batch_size})
    write_index(out, index)


def run(preset: str, stage: str, out: Path, resume: bool = False, overrides: dict | None = None, log: Callable[[str], None] = print,
        device: str = "cpu", minutes: float | None = None, data: "DataSpec | str | None" = None, t5: str | None = None, clip: str | None = None,
        embeddings: str | None = None, ddp_timeout: float = 1800.0, settings: dict | None = None) -> None:
    """``python -m ediff_core train``: runs a stage (or all) of a preset into the model folder ``out``.

    ``device``: ``cpu``, ``cuda`` or ``auto`` for the base and super-resolution jobs (the mini
    encoders' own pretraining stays on the CPU: a few minutes). ``minutes``: a wall-clock budget
    for the network jobs together; the job running when it is spent saves and exports its step,
    and later jobs are left for a ``--resume`` (a session's or a lent GPU's time is bounded).
    ``data``: ``--data`` (default Shapes World; see ``data.spec``). ``t5``/``clip``: frozen encoders
    (folders or Hub ids) instead of training the mini ones into the run. ``embeddings``: a cache
    from ``embed`` read instead of running the encoders. Under torchrun the job is data-parallel
    (``distributed``), with process-group timeout ``ddp_timeout`` seconds. ``settings``: the
    resolved command line / config file, recorded in ``_train/run.json``.
    Every input is checked before anything is written to ``out``.
    """
    from ..data.spec import DataSpec, open_data
    from .embed_cache import CachedEncoders, EmbeddingCache
    from .run_config import run_record, write_run_record

    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes must be a positive time budget; got {minutes!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    cfg = replace(PRESETS[preset], **(overrides or {}))
    if not cfg.lr > 0:
        raise ValueError(f"lr must be a positive learning rate; got {cfg.lr!r}")
    check_precision(cfg.precision)
    training_layout(cfg)
    if not cfg.grounding >= 0:
        raise ValueError(f"grounding must be a loss weight >= 0 (0 = the paper's training); got {cfg.grounding!r}")
    data = DataSpec(data) if isinstance(data, str) else (data or DataSpec())
    source = open_data(data) if data.kind != "shapes" else None
    if (t5 is None) != (clip is None):
        raise ValueError("t5, clip: give both frozen encoders (folders or Hub ids), or neither (the run trains its mini encoders)")
    cache = EmbeddingCache(embeddings) if embeddings else None
    if cache is not None and source is None:
        raise ValueError("embeddings: a cache is made from a dataset on disk (--data DIR or shards); Shapes World is encoded on the fly")
    if cfg.grounding > 0 and source is not None:
        raise ValueError("grounding: the token-grounding loss needs each object's mask, which only Shapes World provides; leave --grounding at 0 with --data")
    dev = torch.device(pick_device(device))
    ranks = Ranks.from_env(dev.type, ddp_timeout)  # under torchrun: joins the process group (writes nothing)
    ranks.per_rank(cfg.batch_size)
    dev = ranks.device(dev)
    enc = _frozen_encoders(t5, clip, dev, cache, cfg) if t5 else None
    have_encoders = (out / "t5" / "config.json").exists() and (out / "clip" / "open_clip_config.json").exists()
    if cache is not None and enc is None:
        if not have_encoders or stage in ("encoders", "all") and not resume:
            raise ValueError("embeddings: a cache fits the encoders it was made with; this run would train new ones. "
                             "Give --t5 and --clip, or train the 'encoders' stage first and embed with them")
        from ..core.embed import encoder_fingerprint

        cache.check(encoder_fingerprint(out / "t5", out / "clip"), {"t5": str(out / "t5"), "clip": str(out / "clip")}, cfg.base_resolution, cfg.sr_resolution)
    if not ranks.is_main:
        log = _quiet
    torch.set_num_threads(cfg.threads)
    if dev.type == "cuda":  # TF32 matmuls and convolutions: fp32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "_train").mkdir(exist_ok=True)
        (out / "_train" / "preset.json").write_text(json.dumps({"preset": preset, **asdict(cfg)}, indent=1))
    if enc is None and (stage == "encoders" or (stage == "all" and not (resume and have_encoders))):
        if ranks.is_main:
            from ..encoders import train_mini

            small = {"steps": 2, "batch_size": 8, "n_scenes": 64} if cfg.toy_encoders else {}
            train_mini.train_mini_t5(out / "t5", seed=cfg.seed, log=log, **small)
            train_mini.train_mini_clip(out / "clip", seed=cfg.seed, log=log, **small)
        ranks.barrier()
    if stage == "encoders":
        return
    if enc is None:
        enc = CachedEncoders(cache, {"t5": "t5", "clip": "clip"}) if cache is not None else load_training_encoders(out, dev)
    feed = Feed(source, cache, ranks)
    log(f"training on {_device_name(dev)}" + (f", {ranks.world} ranks: global batch {cfg.batch_size} ({ranks.per_rank(cfg.batch_size)} per rank), lr {cfg.lr:g} (not rescaled)" if ranks.active else ""))
    encoders = _encoders_record(enc, cache, t5, clip)
    record = run_record(preset, stage, cfg, settings, data, encoders, ranks, _device_name(dev))
    start = feed.record()  # a collective: on every rank
    if ranks.is_main:
        write_run_record(out, record | {"data": start or record["data"]})
    deadline = time.time() + 60 * minutes if minutes is not None else math.inf
    jobs: list[Job] = []
    if stage in ("base", "all"):
        jobs += base_jobs(cfg)
    if stage in ("experts", "all"):
        jobs += expert_jobs(cfg)[1]
    if stage in ("sr", "all"):
        jobs += sr_jobs(cfg)
    if stage in ("experts", "all"):
        jobs.append(baseline_job(cfg))
    for k, job in enumerate(jobs):
        if ranks.any(time.time() >= deadline, dev):
            log(f"time budget spent; not started: {', '.join(j.name for j in jobs[k:])}")
            break
        with ranks.guard(lambda: feed.rescue()):
            train_job(job, out, enc, cfg, resume=resume, log=log, device=dev, deadline=deadline, feed=feed)
        if ranks.is_main:
            write_model_index(out, cfg, encoders={"t5": _index_path(t5), "clip": _index_path(clip)} if t5 else None)
    final = feed.record()
    if final is not None and final["skipped"]["count"]:
        log(f"skipped {final['skipped']['count']} bad samples of {data.spec}, e.g. " + "; ".join(f"{s['key']}: {s['reason']}" for s in final["skipped"]["first"][:3]))
    if ranks.is_main:
        write_run_record(out, record | {"data": final or record["data"]})
        if jobs:
            plot_losses(out)
    ranks.close()


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _frozen_encoders(t5: str, clip: str, device: torch.device, cache, cfg: TrainConfig):
    """``--t5``/``--clip``: loaded now (before anything is written); errors name the flag.
    With a cache only their fingerprint is needed, so the weights are not loaded."""
    from ..core.embed import encoder_fingerprint, encoder_folders, load_encoder_set
    from .embed_cache import CachedEncoders

    folders = encoder_folders(t5, clip)
    if cache is not None:
        cache.check(encoder_fingerprint(folders["t5"], folders["clip"]), {"t5": t5, "clip": clip}, cfg.base_resolution, cfg.sr_resolution)
        return CachedEncoders(cache, {"t5": _index_path(t5), "clip": _index_path(clip)})
    return load_encoder_set(t5, clip, device)


def _encoders_record(enc, cache, t5: str | None, clip: str | None) -> dict:
    """Which encoders a run conditions on, and their fingerprint; where the embeddings come from."""
    if cache is not None:
        rec = {"t5": t5 or cache.index["encoders"]["t5"], "clip": clip or cache.index["encoders"]["clip"], "fingerprint": cache.fingerprint}
        return rec | {"embeddings": str(cache.folder)}
    return {"t5": t5 or "t5", "clip": clip or "clip", "fingerprint": enc.fingerprint(), "embeddings": None}


def _index_path(value: str) -> str:
    """How a model index names an encoder outside the run folder: an absolute path, or the Hub id."""
    p = Path(value).expanduser()
    return str(p.resolve()) if p.is_dir() else value


def plot_losses(out: Path, dest: Path | None = None) -> Path:
    """One PNG with every job's loss curve (moving average over 25 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for path in sorted((out / "_train").glob("*/*/loss.csv")):
        rows = list(csv.DictReader(open(path)))
        if not rows:
            continue
        loss = np.array([float(r["loss"]) for r in rows])
        k = min(25, len(loss))
        ax.plot(np.arange(k, len(loss) + 1), np.convolve(loss, np.ones(k) / k, mode="valid"), label=str(path.parent.relative_to(out / "_train")))
    ax.set_xlabel("step of the job")
    ax.set_ylabel("EDM loss (λ-weighted)")
    ax.set_yscale("log")
    ax.legend()
    dest = dest or out / "loss_curves.png"
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest
