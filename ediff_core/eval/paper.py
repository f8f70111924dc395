"""The paper's findings measured on our model: ``python -m ediff_core eval --suite paper``.

``paper_suite.run_paper_suite`` runs six findings (``paper_findings``), each comparing the paper's
claim with our numbers, and writes ``results.json``, plots and ``results.md`` (``paper_report``):

1. ``ensemble_vs_baseline`` (Fig. 7): FID / KID vs CLIP score and alignment over a guidance sweep,
   the three-expert ensemble against the single model trained on as many samples, same NFE.
2. ``encoder_ablation`` (§5.2, Figs. 8, 18): CLIP only, T5 only, both; short and long captions.
3. ``prompt_switch`` (Fig. 4): how much the image changes when the prompt switches mid-sampling.
4. ``attention_dynamics`` (Fig. 3): cross-attention share on text tokens vs the null token over σ.
5. ``heldout_compositions``: zero-shot colour–shape pairs never seen in training (Shapes World).
6. ``sr_ablation``: super-resolution with and without noise-conditioning augmentation.

This module, the lowest of the four, holds what they share: the sizes (``PaperConfig``), loading the baseline
(``load_variant``), and the ``Suite`` that generates with memoised settings and measures images.
Settings compared with each other use the same prompts and seeds, so differences are paired; a
difference counts when it exceeds twice its paired bootstrap spread (``metrics.compare``).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image

from ediff_core.data.captions import captions
from ediff_core.data.shapes_world import Scene, render
from ediff_core.eval import metrics as M
from ediff_core.eval.alignment import check_detections, detect_objects, parse_prompt
from ediff_core.experts import ExpertEnsemble, ExpertSpec, Interval
from ediff_core.request import GenerationRequest

if TYPE_CHECKING:
    from ediff_core.pipeline import EDiffPipeline, Stage

TRAIN_BASELINE = "python -m ediff_core train --preset mini --stage experts --out checkpoints/ediff-mini --resume"
POOL_START = 950_000  # test-split index of the first prompt scene (the FID reference starts at 900,000)
FINDINGS = ("ensemble_vs_baseline", "encoder_ablation", "prompt_switch", "attention_dynamics", "heldout_compositions", "sr_ablation")


@dataclass
class PaperConfig:
    """Sizes of the suite (``--n`` scales them). The full preset generates 264 images for ediff-mini
    (216 with guidance, 48 without): about 5–13 min at 1–3 s per 64² image, plus ~1 min of metrics."""

    n_sweep: int = 24  # images per (model, guidance) in the Fig. 7 sweep: the FID/KID sample size
    guidances: tuple[float, ...] = (1.0, 3.0, 6.0)  # the model's default guidance is always added
    n_ablation: int = 12  # scenes per caption length and encoder mode
    n_switch_pairs: int = 3  # prompt pairs A→B
    switch_fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 0.93)  # share of steps run with A
    n_attention: int = 4  # prompts with recorded cross-attention, per model
    n_heldout: int = 16
    n_sr: int = 12
    n_reference: int = 5000  # real renders behind the FID statistics
    bootstrap: int = 200
    seed: int = 0  # image i of a setting uses seed + i
    steps: int | None = None  # base sampler steps (None: the model's default); same for every model
    sr_steps: int | None = None
    threads: int | None = None  # torch threads during the suite (None: leave as is); 1 for tiny models

    def scaled(self, n: int) -> "PaperConfig":
        """``--n``: ``n_sweep = n`` and the other per-setting counts scaled alike (at least 2)."""
        f = n / self.n_sweep
        s = lambda k: max(2, round(k * f))  # noqa: E731
        return replace(self, n_sweep=max(2, n), n_ablation=s(self.n_ablation), n_heldout=s(self.n_heldout), n_sr=s(self.n_sr))


PRESETS = {
    "full": PaperConfig(),
    "quick": PaperConfig(n_sweep=3, guidances=(1.0,), n_ablation=2, n_switch_pairs=1, switch_fractions=(0.25, 0.5, 0.75),
                         n_attention=1, n_heldout=2, n_sr=2, n_reference=200, bootstrap=20, threads=1),
}


# ---- models -----------------------------------------------------------------------------------
def load_variant(pipe: "EDiffPipeline", folder: str | Path, name: str) -> "Stage":
    """A base ``Stage`` whose ensemble is the single network ``<folder>/<base>/<name>`` on [0, ∞)."""
    from ediff_core.networks import EDiffUNet, denoiser
    from ediff_core.pipeline import Stage

    path = Path(folder) / pipe.base.name / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: '{name}' is not trained (for the baseline: {TRAIN_BASELINE})")
    net = EDiffUNet.from_pretrained(path, low_cpu_mem_usage=False).float().eval().requires_grad_(False).to(pipe.device)
    return Stage(pipe.base.name, pipe.base.resolution, ExpertEnsemble([denoiser(net)], [ExpertSpec(name, Interval(0.0, math.inf))]).eval())


def locate_model_folder(pipe: "EDiffPipeline", folder: str | Path | None) -> Path | None:
    """``folder`` if given; else ``pipe.folder`` or the default model when its index matches ``pipe``."""
    if folder is not None:
        return Path(folder)
    from ediff_core.model_folder import INDEX, default_model_path

    for cand in (getattr(pipe, "folder", None), default_model_path()):
        if cand is None or not (Path(cand) / INDEX).exists():
            continue
        index = json.loads((Path(cand) / INDEX).read_text())
        names = [e["name"] for e in index.get("base", {}).get("experts", [])]
        if index.get("name") == pipe.name and names == [s.name for s in pipe.base.ensemble.specs]:
            return Path(cand)
    return None


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (reports carry no home paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def baseline_folder(pipe: "EDiffPipeline", folder: Path | None) -> Path | None:
    """Where ``base/baseline`` lives: the model folder itself, or its sibling ``<folder>-train``.

    The shipped ediff-mini keeps the Fig. 7 baseline (and the shared model the experts branched from) in
    ``checkpoints/ediff-mini-train`` so that
    the default model folder stays within its 40 MB budget.
    """
    if folder is None:
        return None
    for cand in (folder, folder.parent / f"{folder.name}-train"):
        if (cand / pipe.base.name / "baseline" / "config.json").exists():
            return cand
    return None


@contextmanager
def using(pipe: "EDiffPipeline", base: "Stage | None" = None, aug_sigma: float | None = None) -> Iterator[None]:
    """Temporarily swaps the base stage and/or sets every SR stage's augmentation σ."""
    old_base, old_aug = pipe.base, [s.aug_sigma for s in pipe.sr]
    if base is not None:
        pipe.base = base
    if aug_sigma is not None:
        for s in pipe.sr:
            s.aug_sigma = aug_sigma
    try:
        yield
    finally:
        pipe.base = old_base
        for s, a in zip(pipe.sr, old_aug):
            s.aug_sigma = a


# ---- the suite --------------------------------------------------------------------------------
@dataclass
class Measured:
    """Per-image measurements of one setting (all arrays aligned with the prompts)."""

    images: list[Image.Image]
    feats: np.ndarray  # (N, D) mini-CLIP image features
    clip: np.ndarray  # (N,) CLIP score
    aligned: np.ndarray  # (N,) 0/1
    counts_ok: np.ndarray
    shapes_ok: np.ndarray
    object_score: np.ndarray  # (N,) mean template fit of the detected objects (NaN: none)
    clean: np.ndarray  # (N,) share of pixels in Shapes World colours (metrics.clean_pixel_share)


@dataclass
class Suite:
    """What the findings share: the pipeline, sizes, reference features and memoised images."""

    pipe: "EDiffPipeline"
    cfg: PaperConfig
    out: Path
    ref: M.Reference
    variants: dict[str, "Stage"]  # name -> base stage ("ensemble" is the pipeline's own)
    log: Callable[[str], None]
    folder: Path | None = None  # the model folder, where ``base/baseline`` was looked up (None: unknown)
    made: int = 0
    started: float = field(default_factory=time.perf_counter)
    cache: dict = field(default_factory=dict)  # generation settings -> (final, base-stage) image
    reals: dict = field(default_factory=dict)  # n -> summary of n real renders

    @property
    def guidance(self) -> float:
        return float(self.pipe.defaults["guidance"])

    def request(self, prompt: str, seed: int, **kw) -> GenerationRequest:
        return GenerationRequest(prompt, seed=seed, steps=self.cfg.steps, sr_steps=self.cfg.sr_steps, **kw)

    def generate(self, prompt: str, seed: int, variant: str = "ensemble", guidance: float | None = None,
                 encoders: str = "both", aug: float | None = None) -> tuple[Image.Image, Image.Image]:
        """(final image, base-stage image) of one setting; memoised, so findings share images.

        variant: a key of ``variants``; guidance: None = the model's default; aug: SR
        augmentation σ, None = the model's own.
        """
        g = self.guidance if guidance is None else float(guidance)
        a = self.pipe.sr[0].aug_sigma if aug is None and self.pipe.sr else aug
        key = (prompt, seed, variant, g, encoders, a)
        if key not in self.cache:
            with using(self.pipe, None if variant == "ensemble" else self.variants[variant], a):
                r = self.pipe(self.request(prompt, seed, guidance=g, encoders=encoders))
            self.cache[key] = (r.images[0], r.stage_images[self.pipe.base.name][0])
            self.tick()
        return self.cache[key]

    def tick(self, k: int = 1) -> None:
        self.made += k
        if self.made % 10 == 0:
            dt = time.perf_counter() - self.started
            self.log(f"  {self.made} images, {dt:.0f} s ({dt / self.made:.2f} s per image)")

    def measure(self, images: list[Image.Image], prompts: list[str], specs: list) -> Measured:
        """Features, CLIP scores, alignment checks and clean pixels of images of ``prompts``."""
        feats = M.image_features(self.pipe.encoders.clip_image, images)
        clip = M.clip_scores(feats, M.text_features(self.pipe.encoders.clip_text, prompts))
        res, score = [], []
        for img, spec in zip(images, specs):
            dets = detect_objects(img)
            res.append(check_detections(dets, spec))
            score.append(float(np.mean([d.score for d in dets])) if dets else float("nan"))
        arr = lambda f: np.array([float(getattr(r, f)) for r in res])  # noqa: E731
        clean = np.array([M.clean_pixel_share(im) for im in images])
        return Measured(images, feats, clip, arr("aligned"), arr("counts_ok"), arr("shapes_ok"), np.array(score), clean)

    def summary(self, m: Measured) -> dict:
        """Quality (FID, KID, clean pixels) and alignment (CLIP score, aligned) with spreads."""
        return {**self.quality(m.feats), "clean": self.ms(m.clean), "clip": self.ms(m.clip), "aligned": self.ms(m.aligned)}

    def real(self, n: int) -> dict:
        """``summary`` of the real renders of the first ``n`` prompt scenes: what a perfect model
        scores at this sample size (FID's small-sample floor, the detector's and CLIP's ceilings)."""
        if n not in self.reals:
            items = pool(n)
            prompts = [c["short"] for _, c in items]
            images = [render(sc, self.pipe.stages[-1].resolution) for sc, _ in items]
            self.reals[n] = self.summary(self.measure(images, prompts, [parse_prompt(p) for p in prompts]))
        return self.reals[n]

    def __post_init__(self) -> None:
        self.fast_fid = M.FastFID(self.ref.stats)
        self.fast_kid = M.FastKID(self.ref.kid_feats)

    def kid(self, feats: np.ndarray) -> float:
        """KID×10³ against the reference."""
        return 1e3 * self.fast_kid(feats)

    def quality(self, feats: np.ndarray, seed: int = 0) -> dict:
        """FID (scipy sqrtm) and KID×10³ against the reference, each with its bootstrap spread."""
        n, B = len(feats), self.cfg.bootstrap
        return {
            "fid": M.fid(feats, self.ref.stats),
            "fid_std": float(M.bootstrap(lambda i: self.fast_fid(feats[i]), n, B, seed).std()),
            "kid": self.kid(feats),
            "kid_std": float(M.bootstrap(lambda i: self.kid(feats[i]), n, B, seed).std()),
        }

    def paired(self, a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray], float] = np.nanmean) -> tuple[float, float]:
        """stat(a) − stat(b) and its paired bootstrap spread (rows of a and b belong together)."""
        d = float(stat(a) - stat(b))
        return d, float(M.bootstrap(lambda i: stat(a[i]) - stat(b[i]), len(a), self.cfg.bootstrap, 1).std())

    def ms(self, v: np.ndarray) -> tuple[float, float]:
        """Mean of the non-NaN values and its bootstrap spread."""
        return M.mean_and_spread(v[~np.isnan(v)], self.cfg.bootstrap)


def pool(n: int) -> list[tuple[Scene, dict[str, str]]]:
    """``n`` test-split scenes (1–4 objects, no held-out pair) from POOL_START, with their captions."""
    scenes, _ = M.reference_scenes(n, POOL_START)
    return [(s, captions(s)) for s in scenes]


def pm(mean: float, std: float, digits: int = 2) -> str:
    """'mean ± std' ('n/a' for a missing mean)."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{round(mean, digits) + 0.0:.{digits}f} ± {std:.{digits}f}"  # + 0.0: no '-0.00'


def verdict_of(cmp: str, good: str = "better") -> str:
    """'yes' when a comparison went the claimed way beyond noise, 'no' when the opposite way."""
    bad = {"better": "worse", "worse": "better"}[good]
    return "yes" if cmp == good else "no" if cmp == bad else "inconclusive"


def trained_steps(pipe: "EDiffPipeline") -> str:
    """'base/shared 1000, base/E3_0 150, ...' from the model card ('' when it has none)."""
    steps = {k: v.get("step") for k, v in (getattr(pipe, "card", {}) or {}).get("trained_steps", {}).items()}
    return ", ".join(f"{k} {v}" for k, v in steps.items())
