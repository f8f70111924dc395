"""Quality and alignment metrics for the paper suite (eDiff-I Table 1 and Fig. 7): FID and KID on
mini-CLIP image features, CLIP score, and bootstrap spreads.

FID follows clean-fid's conventions (Parmar et al. 2022): images stay lossless (PIL in memory,
never JPEG), are resized with Lanczos (PIL) to the feature encoder's input size, and the Fréchet
distance is computed with ``scipy.linalg.sqrtm``, dropping numerically imaginary parts. The
features are the mini-CLIP image embedding instead of Inception-v3: no Inception weights exist
offline and Shapes World is far from ImageNet. Numbers are therefore comparable only under the
same encoder weights, so reference statistics are cached under the weights' hash.

With a few dozen generated images FID is strongly biased (a 128-d covariance from 24 samples)
and KID (Bińkowski et al. 2018, unbiased) is the better small-sample check; both come with
bootstrap spreads over the generated images.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from ediff_core.data.shapes_world import (
    BACKGROUNDS, COLORS, DOT_COLOR, HALFTONE_COLOR, HELD_OUT, SHADOW_COLOR, STAR_DOT_COLOR, STRIPE_COLOR, Scene, render, sample_scene, split_seed,
)

REFERENCE_START = 900_000  # test-split index of the first reference scene (disjoint from eval_prompts)
KID_REFERENCE = 500  # reference features kept (float16) for KID


# ---- features ----------------------------------------------------------------------------------
def encoder_input(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """(N, 3, size, size) floats in [0, 1]; images of another size are resized with Lanczos."""
    arr = [np.asarray(im.convert("RGB") if im.size == (size, size) else im.convert("RGB").resize((size, size), Image.LANCZOS)) for im in images]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def image_features(encoder, images: Sequence[Image.Image], batch_size: int = 256) -> np.ndarray:
    """Mini-CLIP image embeddings (N, D) float64 of PIL images, L2-normalised and scaled by √D.

    CLIP embeddings live on a sphere (only their direction is trained); the √D scale makes x·y/D
    the cosine, so KID's kernel is (cos + 1)³ and FID has Inception-like magnitudes.
    """
    if not images:
        raise ValueError("image_features needs at least one image")
    out = np.concatenate([encoder.encode_image(encoder_input(images[i : i + batch_size], encoder.image_size)).double().cpu().numpy() for i in range(0, len(images), batch_size)])
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12) * np.sqrt(out.shape[1])


@torch.no_grad()
def text_features(text_encoder, prompts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Pooled CLIP text embeddings (N, D) float64 (``TextEncoder.encode(...).pooled``)."""
    out = [text_encoder.encode(list(prompts[i : i + batch_size])).pooled.double().cpu().numpy() for i in range(0, len(prompts), batch_size)]
    return np.concatenate(out)


def clip_scores(image_feats: np.ndarray, text_feats: np.ndarray) -> np.ndarray:
    """Per-pair CLIP score 100·max(cos(image, text), 0) (Hessel et al. 2021 without the 2.5 weight)."""
    a = image_feats / np.linalg.norm(image_feats, axis=1, keepdims=True).clip(1e-12)  # any scale
    b = text_feats / np.linalg.norm(text_feats, axis=1, keepdims=True).clip(1e-12)
    return 100 * np.clip((a * b).sum(1), 0, None)


# Every colour a Shapes World image is drawn with (SHAPES_WORLD.md: palette, backgrounds, patterns).
_KNOWN_COLOURS = np.array([*COLORS.values(), *BACKGROUNDS.values(), STRIPE_COLOR, DOT_COLOR, HALFTONE_COLOR, SHADOW_COLOR, STAR_DOT_COLOR], np.float64)
CLEAN_DISTANCE = 30.0  # RGB Euclidean; paper grain (σ ≈ 6 per channel) stays well inside


def clean_pixel_share(image: Image.Image) -> float:
    """Share of pixels within CLEAN_DISTANCE of a colour Shapes World draws with: a pixel-level
    fidelity measure that, unlike mini-CLIP features, sees blur, noise and colour drift (real
    renders lose only their anti-aliased edges)."""
    rgb = np.asarray(image.convert("RGB"), np.float64)
    return float((np.linalg.norm(rgb[:, :, None, :] - _KNOWN_COLOURS, axis=-1).min(-1) <= CLEAN_DISTANCE).mean())


# ---- Fréchet distance and KID ------------------------------------------------------------------
@dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of a feature set of ``n`` samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, feats: np.ndarray) -> "FeatureStats":
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"need an (N >= 2, D) feature array; got shape {feats.shape}")
        return cls(feats.mean(0), np.cov(feats, rowvar=False), len(feats))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) with scipy's sqrtm (pytorch-fid / clean-fid).

    A singular product gets ``eps``·I added to both covariances; the imaginary part sqrtm returns
    for nearly singular products is numerical noise and dropped.
    """
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product (fewer samples than dimensions) is expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), 0.0))


def fid(feats: np.ndarray, ref: FeatureStats) -> float:
    """FID of a feature set against reference statistics."""
    s = FeatureStats.of(feats)
    return frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)


class FastFID:
    """FID against fixed reference statistics via tr((Σ1Σ2)^½) = Σ √λ(S Σ2 S), S = Σ1^½ symmetric.

    The same number as ``frechet_distance`` (the eigenvalues of Σ1Σ2 and SΣ2S coincide) at a
    fraction of the cost: for bootstrap replicates.
    """

    def __init__(self, ref: FeatureStats):
        w, v = np.linalg.eigh(ref.sigma)
        self.ref = ref
        self.sqrt_ref = (v * np.sqrt(w.clip(0))) @ v.T

    def __call__(self, feats: np.ndarray) -> float:
        s = FeatureStats.of(feats)
        lam = np.linalg.eigvalsh(self.sqrt_ref @ s.sigma @ self.sqrt_ref).clip(0)
        diff = s.mu - self.ref.mu
        return float(max(diff @ diff + np.trace(s.sigma) + np.trace(self.ref.sigma) - 2 * np.sqrt(lam).sum(), 0.0))


def kid(feats: np.ndarray, ref_feats: np.ndarray) -> float:
    """Unbiased MMD² with the cubic kernel k(x, y) = (x·y/D + 1)³ (KID, Bińkowski et al. 2018)."""
    return FastKID(ref_feats)(feats)


class FastKID:
    """KID against fixed reference features, the reference–reference term computed once."""

    def __init__(self, ref_feats: np.ndarray):
        self.ref = ref_feats
        kyy = self._k(ref_feats, ref_feats)
        n = len(ref_feats)
        self.ref_term = float((kyy.sum() - np.trace(kyy)) / (n * (n - 1)))

    def _k(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / a.shape[1] + 1) ** 3

    def __call__(self, feats: np.ndarray) -> float:
        m = len(feats)
        if m < 2:
            raise ValueError("KID needs at least two samples")
        kxx = self._k(feats, feats)
        return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + self.ref_term - 2 * self._k(feats, self.ref).mean())


# ---- spreads and verdicts ----------------------------------------------------------------------
def bootstrap(stat: Callable[[np.ndarray], float], n: int, rounds: int, seed: int = 0) -> np.ndarray:
    """``stat(idx)`` over ``rounds`` resamples (with replacement) of ``range(n)``; paired when
    ``stat`` indexes several aligned arrays with the same ``idx``."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, n, n)) for _ in range(rounds)])


def mean_and_spread(values: Sequence[float], rounds: int, seed: int = 0) -> tuple[float, float]:
    """The mean and its bootstrap standard deviation."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(bootstrap(lambda i: v[i].mean(), len(v), rounds, seed).std())


def compare(delta: float, std: float, k: float = 2.0, tol: float = 0.0) -> str:
    """'better' when delta > k·std, 'worse' when delta < −k·std, else 'tie'; differences of at
    most ``tol`` (too small to matter) are ties whatever their spread."""
    if not np.isfinite(delta) or abs(delta) <= tol:
        return "tie"
    if delta > k * std and delta > 0:
        return "better"
    if delta < -k * std and delta < 0:
        return "worse"
    return "tie"


def overall(verdicts: Sequence[str]) -> str:
    """Combines sub-claim verdicts ('yes' / 'no' / 'inconclusive'): all yes → 'yes'; some yes →
    'partly'; no yes but some no → 'no'; otherwise 'inconclusive'."""
    if verdicts and all(v == "yes" for v in verdicts):
        return "yes"
    if any(v == "yes" for v in verdicts):
        return "partly"
    if any(v == "no" for v in verdicts):
        return "no"
    return "inconclusive"


# ---- reference statistics ----------------------------------------------------------------------
def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and values), hex."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Reference:
    """Real Shapes World renders of the test split as features: statistics plus a KID subset."""

    stats: FeatureStats
    kid_feats: np.ndarray
    size: int  # rendered side in pixels
    indices: tuple[int, int]  # test-split index range scanned
    encoder_hash: str
    path: Path | None


def reference_scenes(n: int, start: int = REFERENCE_START) -> tuple[list[Scene], int]:
    """The first ``n`` test-split scenes from index ``start`` without held-out pairs, and the end index."""
    scenes, i = [], start
    while len(scenes) < n:
        scene = sample_scene(split_seed("test", i))
        i += 1
        if not {(o.color, o.shape) for o in scene.objects} & HELD_OUT:
            scenes.append(scene)
    return scenes, i


def reference(encoder, n: int, size: int, cache_dir: Path | None, start: int = REFERENCE_START, log: Callable[[str], None] = print) -> Reference:
    """Features of ``n`` real renders at ``size`` px, cached as ``fid_ref_<hash12>_<size>px_<n>.npz``."""
    key = weights_hash(getattr(encoder, "model", encoder))
    path = None if cache_dir is None else Path(cache_dir) / f"fid_ref_{key[:12]}_{size}px_{n}.npz"
    if path is not None and path.exists():
        z = np.load(path)
        if str(z["encoder_hash"]) == key:
            stats = FeatureStats(z["mu"], z["sigma"].astype(np.float64), int(z["n"]))
            return Reference(stats, z["kid_feats"].astype(np.float64), size, tuple(int(v) for v in z["indices"]), key, path)
    log(f"reference statistics: rendering {n} test-split scenes at {size} px")
    scenes, stop = reference_scenes(n, start)
    feats = np.concatenate([image_features(encoder, [render(s, size) for s in scenes[i : i + 500]]) for i in range(0, n, 500)])
    stats = FeatureStats.of(feats)
    stats.sigma = stats.sigma.astype(np.float32).astype(np.float64)  # as cached, so a fresh and a cached run agree
    keep = feats[np.random.default_rng(0).permutation(n)[:KID_REFERENCE]]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, mu=stats.mu, sigma=stats.sigma.astype(np.float32), n=n, kid_feats=keep.astype(np.float16), indices=np.array([start, stop]), encoder_hash=key)
    return Reference(stats, keep.astype(np.float16).astype(np.float64), size, (start, stop), key, path)
