"""The one generation function (shared by the CLI, the model server and the UI) and the cascade.

prompt → encoders (T5, CLIP text, CLIP image) → base expert ensemble at 32² (or 64²)
→ super-resolution stages → images with metadata (§4.2, Fig. 2 of the paper).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Generator, Iterator

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from .core.attention import install as install_attention
from .core.conditioning import Cond, Denoiser, select_encoders
from .core.embed import EncoderSet
from .core.experts import ExpertEnsemble, ExpertSpec, Interval
from .core.feature import Feature
from .core.guidance import CFGDenoiser, GuidedCond, ThresholdedDenoiser
from .core.images import png_info, to_pil
from .core.model_folder import ExpertEntry, ModelIndex, StageEntry, default_model_path, read_index, resolve_folder, write_index
from .core.networks import EDiffUNet, denoiser
from .core.request import GenerationRequest
from .core.samplers import initial_noise, karras_sigmas, nfe, sample_steps
from .features import FEATURES
from .features.paint_with_words import PaintBias

DEFAULTS = {"steps": 25, "sr_steps": 10, "guidance": 3.0, "sr_guidance": 1.0, "sampler": "dpmpp_2m"}


@dataclass
class Stage:
    """One resolution of the cascade with its expert ensemble."""

    name: str
    resolution: int
    ensemble: ExpertEnsemble
    aug_sigma: float = 0.0  # SR: noise-conditioning augmentation level of the low-res input
    is_sr: bool = False

    def __post_init__(self) -> None:
        # Installed once, at load: stock attention unless a call paints or records (§4.3, Fig. 3).
        for _, net in self.networks():
            install_attention(net, PaintBias())

    def networks(self) -> Iterator[tuple[ExpertSpec, EDiffUNet]]:
        """Each expert's spec and raw U-Net, in the ensemble's order."""
        for spec, expert in zip(self.ensemble.specs, self.ensemble.experts):
            yield spec, expert.net


@dataclass
class _Count:
    """Denoiser evaluations over the whole cascade: planned and done so far."""

    total: int
    done: int = 0


@dataclass
class Progress:
    """Emitted after every denoiser evaluation."""

    stage: str
    step: int  # 0-based step of this stage's schedule
    steps: int
    sigma: float
    expert: str
    done: int  # evaluations done over the whole cascade
    total: int


@dataclass
class GenerationResult:
    images: list[Image.Image]  # final resolution
    stage_images: dict[str, list[Image.Image]]  # every stage's output, by stage name
    metadata: list[dict]  # one per image: seed, settings, experts per step, timings (not put in PNGs)
    timings: dict[str, float]
    attention: dict | None = None  # cross-attention statistics when requested

    def png_info(self, k: int) -> PngInfo:
        return png_info(self.metadata[k])


# A hook through which every denoiser evaluation goes: (stage, D, x, σ, cond) -> D(x, σ, cond).
Evaluate = Callable[[Stage, Denoiser, Tensor, Tensor, GuidedCond], Tensor]


def _direct(stage: Stage, D: Denoiser, x: Tensor, sigma: Tensor, gc: GuidedCond) -> Tensor:
    return D(x, sigma, gc)


class EDiffPipeline:
    """Encoders + base ensemble + super-resolution stages, loaded once.

    Args:
        encoders: the three frozen encoders.
        base: the base stage; ``sr``: super-resolution stages in order.
        name: shown in metadata. ``defaults``: sampler settings the model was tuned for.
    """

    features: tuple[type[Feature], ...] = FEATURES  # §4's controls, consulted in this order (core.feature)

    def __init__(self, encoders: EncoderSet, base: Stage, sr: list[Stage], name: str = "ediff", defaults: dict | None = None, device: str | torch.device = "cpu"):
        self.encoders, self.base, self.sr, self.name = encoders, base, list(sr), name
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.device = torch.device(device)
        self.card: dict = {}

    @property
    def stages(self) -> list[Stage]:
        return [self.base, *self.sr]

    def networks(self) -> Iterator[tuple[Stage, ExpertSpec, EDiffUNet]]:
        """Every raw U-Net of the cascade with its stage and expert spec (base first)."""
        for stage in self.stages:
            for spec, net in stage.networks():
                yield stage, spec, net

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "EDiffPipeline":
        """Loads a model folder (``model_index.json``), a Hub id when online, or the embedded default."""
        from .core.embed import load_encoder_set

        folder = resolve_folder(path if path is not None else default_model_path())
        index = read_index(folder)

        def enc_path(p: str) -> str:
            return str(folder / p) if (folder / p).exists() else p

        encoders = load_encoder_set(enc_path(index.encoders["t5"]), enc_path(index.encoders["clip"]), device)
        stages = [_load_stage(folder, s, is_sr=i > 0, device=device) for i, s in enumerate([index.base, *index.super_resolution])]
        pipe = cls(encoders, stages[0], stages[1:], index.name, index.defaults, device)
        pipe.card = index.card
        return pipe

    def save_index(self, folder: Path, encoder_paths: dict[str, str]) -> None:
        """Writes ``model_index.json`` for networks already saved under ``folder/<stage>/<expert>``."""

        def entry(stage: Stage) -> StageEntry:
            return StageEntry(
                stage.name,
                stage.resolution,
                [ExpertEntry(s.name, f"{stage.name}/{s.name}", s.interval.lo, s.interval.hi, s.guidance) for s in stage.ensemble.specs],
                stage.aug_sigma,
            )

        write_index(folder, ModelIndex(self.name, encoder_paths, entry(self.base), [entry(s) for s in self.sr], self.defaults, self.card))

    def save_pretrained(self, folder: str | Path, encoder_paths: dict[str, str]) -> None:
        """Saves every network as fp16 safetensors and the index (encoders are saved by their own code)."""
        folder = Path(folder)
        for stage, spec, net in self.networks():
            net.half().save_pretrained(folder / stage.name / spec.name, safe_serialization=True)
            net.float()
        self.save_index(folder, encoder_paths)

    # ------------------------------------------------------------ description

    def info(self) -> dict:
        """Encoders, resolutions, each expert with its σ interval, parameter counts."""

        def params(m: torch.nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        stages = []
        for st in self.stages:
            stages.append(
                {
                    "name": st.name,
                    "resolution": st.resolution,
                    "aug_sigma": st.aug_sigma if st.is_sr else None,
                    "experts": [
                        {"name": s.name, "sigma_min": s.interval.lo, "sigma_max": None if s.interval.hi == float("inf") else s.interval.hi, "guidance": s.guidance, "parameters": params(e)}
                        for s, e in st.networks()
                    ],
                }
            )
        enc = self.encoders
        encoders = {
            "t5": {"dim": enc.t5.dim, "max_length": enc.t5.max_length, "parameters": _count(enc.t5)},
            "clip_text": {"dim": enc.clip_text.dim, "pooled_dim": enc.clip_text.pooled_dim, "max_length": enc.clip_text.max_length, "parameters": _count(enc.clip_text)},
            "clip_image": {"dim": enc.clip_image.dim, "image_size": enc.clip_image.image_size, "parameters": _count(enc.clip_image)},
        }
        return {
            "name": self.name,
            "device": str(self.device),
            "resolutions": [st.resolution for st in self.stages],
            "encoders": encoders,
            "experts": stages[0]["experts"],
            "stages": stages,
            "defaults": self.defaults,
            "parameters": sum(e["parameters"] for s in stages for e in s["experts"]),
            "card": self.card,
        }

    # ------------------------------------------------------------ generation

    def resolve(self, req: GenerationRequest) -> GenerationRequest:
        """Validates and fills the model's defaults."""
        req.validate()
        return replace(req, **{k: getattr(req, k) if getattr(req, k) is not None else self.defaults[k] for k in DEFAULTS})

    def conditioning(self, req: GenerationRequest, features: list[Feature]) -> tuple[dict[str, GuidedCond], dict]:
        """Each prompt field's guided conditioning (``prompt``, and ``switch_prompt`` when set), every
        feature's ``condition`` applied in order, and notes (e.g. truncation, paint warnings)."""
        n = req.num_images
        notes: dict = {}
        for enc in (self.encoders.t5, self.encoders.clip_text):
            if enc.truncated(req.prompt):
                notes.setdefault("truncated", []).append(f"{enc.name}: prompt longer than {enc.max_length} tokens was truncated")
        conds: dict[str, Cond] = {}
        for field in ("prompt", "switch_prompt"):
            if getattr(req, field) is not None:
                cond = select_encoders(self.encoders.encode([getattr(req, field)] * n, None, self.device), req.encoders)
                for feature in features:
                    cond = feature.condition(self, req, field, cond, notes)
                conds[field] = cond
        if req.negative_prompt:
            uncond = select_encoders(self.encoders.encode([req.negative_prompt] * n, None, self.device), req.encoders)
        else:
            uncond = conds["prompt"].unconditional()
        scale = torch.full((n,), float(req.guidance))
        return {field: GuidedCond(cond, uncond, scale) for field, cond in conds.items()}, notes

    def generate(self, req: GenerationRequest, evaluate: Evaluate = _direct) -> Iterator[Progress | GenerationResult]:
        """Yields ``Progress`` after every denoiser evaluation, then one ``GenerationResult``."""
        # 1. Resolve: validate the request, fill in the model's defaults, and take the features it uses.
        req = self.resolve(req)
        features = [f for f in (F.for_request(self, req) for F in self.features) if f is not None]
        for feature in features:
            evaluate = feature.wrap(evaluate)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        seeds = [req.seed + k for k in range(req.num_images)]
        with torch.inference_mode():
            # 2. Condition: the encoders once per prompt field, then each feature (paint maps, style).
            prompts, notes = self.conditioning(req, features)
            timings["encoders"] = time.perf_counter() - t_start
            count = _Count(nfe(req.sampler, req.steps) + sum(nfe(req.sampler, req.sr_steps) for _ in self.sr))
            trace: dict[str, list[dict]] = {}
            stage_images: dict[str, list[Image.Image]] = {}
            x = None
            # 3. Each stage of the cascade: base (32²) then super-resolution, sampled from noise.
            for si, stage in enumerate(self.stages):
                t0 = time.perf_counter()
                noise_seeds = [s + 7919 * si for s in seeds]
                # an SR stage conditions on what the features leave of the base stage's last conditioning
                stage_prompts = prompts if si == 0 else {"prompt": self._sr_conditioning(stage, x, features, req, prompts, noise_seeds)}
                x = yield from self._sample_stage(stage, lambda sigma: self._at_sigma(features, req, sigma, stage_prompts), req, noise_seeds, evaluate, trace, count)
                timings[stage.name] = time.perf_counter() - t0
                # 4. Decode: [-1, 1] tensors to images, every stage's kept.
                stage_images[stage.name] = to_pil(x)
        timings["total"] = time.perf_counter() - t_start
        images = stage_images[self.stages[-1].name]
        settings = req.settings()
        metadata = [
            {
                "model": self.name,
                **settings,
                "seed": s,
                "size": f"{images[0].width}x{images[0].height}",
                "experts": trace,
                "timings": {k: round(v, 4) for k, v in timings.items()},
                **notes,
            }
            for s in seeds
        ]
        extra = {k: v for feature in features for k, v in feature.result().items()}
        yield GenerationResult(images, stage_images, metadata, timings, **extra)

    def _sr_conditioning(self, stage: Stage, x: Tensor, features: list[Feature], req: GenerationRequest, prompts: dict[str, GuidedCond],
                         noise_seeds: list[int]) -> GuidedCond:
        """A super-resolution stage's conditioning: what the features leave of the base stage's last
        (``for_sr``), plus the previous output upsampled with augmentation noise."""
        lowres = torch.nn.functional.interpolate(x.clamp(-1, 1), size=(stage.resolution,) * 2, mode="bilinear", align_corners=False)
        aug = initial_noise([s + 104729 for s in noise_seeds], tuple(lowres.shape[1:]), stage.aug_sigma, self.device)
        n = len(noise_seeds)
        lr_cond = {"lowres": lowres + aug, "aug_sigma": torch.full((n,), stage.aug_sigma, device=self.device)}
        gc = prompts["prompt"]
        for feature in features:
            gc = feature.for_sr(req, gc, prompts)
        return GuidedCond(replace(gc.cond, **lr_cond), replace(gc.uncond, **lr_cond), torch.full((n,), float(req.sr_guidance)))

    def _sample_stage(self, stage: Stage, at_sigma: Callable[[float], GuidedCond], req: GenerationRequest, noise_seeds: list[int],
                      evaluate: Evaluate, trace: dict, count: "_Count") -> Generator[Progress, None, Tensor]:
        """Drives the sampler over one stage through ``samplers.sample_steps``; yields ``Progress``, returns x."""
        steps = req.steps if not stage.is_sr else req.sr_steps
        sigmas = karras_sigmas(steps, req.sigma_min, req.sigma_max)
        D = CFGDenoiser(stage.ensemble)
        if req.dynamic_threshold:
            D = ThresholdedDenoiser(D)
        x = initial_noise(noise_seeds, (3, stage.resolution, stage.resolution), float(sigmas[0]), self.device)
        run = sample_steps(req.sampler, lambda x, sigma, gc: evaluate(stage, D, x, sigma, gc), x, sigmas, at_sigma)
        trace[stage.name] = []
        try:
            while True:
                step, _ = next(run)
                expert = stage.ensemble.specs[int(stage.ensemble.expert_index(torch.tensor([step.sigma], dtype=torch.float32, device=self.device))[0])].name
                trace[stage.name].append({"step": step.index, "sigma": round(step.sigma, 6), "expert": expert})
                count.done += 1
                yield Progress(stage.name, step.index, steps, step.sigma, expert, count.done, count.total)
        except StopIteration as finished:
            return finished.value

    def _at_sigma(self, features: list[Feature], req: GenerationRequest, sigma: float, prompts: dict[str, GuidedCond]) -> GuidedCond:
        """A stage's conditioning in force at σ: its prompt's, then each feature's ``at_sigma`` (``prompts``:
        the stage's conditioning per prompt field; an SR stage has only ``prompt``)."""
        gc = prompts["prompt"]
        for feature in features:
            gc = feature.at_sigma(req, sigma, gc, prompts)
        return gc

    def __call__(self, req: GenerationRequest, evaluate: Evaluate = _direct) -> GenerationResult:
        """Runs ``generate`` to the end and returns its result."""
        for event in self.generate(req, evaluate):
            if isinstance(event, GenerationResult):
                return event
        raise RuntimeError("generation ended without a result")


def _count(m) -> int:
    mods = [v for v in vars(m).values() if isinstance(v, torch.nn.Module)]
    return sum(p.numel() for mod in mods for p in mod.parameters())


def _load_stage(folder: Path, entry: StageEntry, is_sr: bool, device) -> Stage:
    experts, specs = [], []
    for e in entry.experts:
        net = EDiffUNet.from_pretrained(folder / e.path, low_cpu_mem_usage=False).float().eval().requires_grad_(False).to(device)
        experts.append(denoiser(net))
        specs.append(ExpertSpec(e.name, Interval(e.sigma_min, e.sigma_max), e.guidance))
    return Stage(entry.name, entry.resolution, ExpertEnsemble(experts, specs).eval(), entry.aug_sigma, is_sr)
