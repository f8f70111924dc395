"""What the evaluation suites share: their result types, the paper suite's sizes, and the ``Suite``.

Every suite (``eval --suite alignment | paint | style | paper``) reports success rates as
``ControlRate`` records or with ``pm`` / ``verdict_of``; the paper's findings (``paper_findings``)
run on one ``Suite`` that generates with memoised settings and measures images. Settings compared
with each other use the same prompts and seeds, so differences are paired; a difference counts
when it exceeds twice its paired bootstrap spread (``metrics.compare``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from ediff_core.core.request import GenerationRequest
from ediff_core.data.shapes_world import render
from ediff_core.tools.eval import metrics as M
from ediff_core.tools.eval.alignment import check_detections, detect_objects, parse_prompt
from ediff_core.tools.eval.paper import pool, using

if TYPE_CHECKING:
    from ediff_core.pipeline import EDiffPipeline, Stage


@dataclass
class ControlRate:
    """A success rate with one record per trial (prompt, seed, what was found)."""

    rate: float
    hits: int
    n: int
    details: list[dict] = field(default_factory=list)


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


def pm(mean: float, std: float, digits: int = 2) -> str:
    """'mean ± std' ('n/a' for a missing mean)."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{round(mean, digits) + 0.0:.{digits}f} ± {std:.{digits}f}"  # + 0.0: no '-0.00'


def verdict_of(cmp: str, good: str = "better") -> str:
    """'yes' when a comparison went the claimed way beyond noise, 'no' when the opposite way."""
    bad = {"better": "worse", "worse": "better"}[good]
    return "yes" if cmp == good else "no" if cmp == bad else "inconclusive"
