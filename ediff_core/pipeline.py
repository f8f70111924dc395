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
from .features.attention_maps import AttentionRecorder
from .core.conditioning import Denoiser, select_encoders
from .core.embed import EncoderSet
from .core.experts import ExpertEnsemble, ExpertSpec, Interval
from .core.guidance import CFGDenoiser, GuidedCond, ThresholdedDenoiser
from .core.images import png_info, to_pil
from .core.model_folder import ExpertEntry, ModelIndex, StageEntry, default_model_path, read_index, resolve_folder, write_index
from .core.networks import EDiffUNet, denoiser
from .features.paint_with_words import PaintBias, token_maps
from .core.request import GenerationRequest
from .core.samplers import initial_noise, karras_sigmas, nfe, sample_steps
from .features.style import reference_tensor, style_active

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

    def conditioning(self, req: GenerationRequest) -> tuple[GuidedCond, GuidedCond | None, dict]:
        """The base stage's guided conditioning, the switched prompt's, and notes (e.g. truncation)."""
        n = req.num_images
        notes: dict = {}
        for enc in (self.encoders.t5, self.encoders.clip_text):
            if enc.truncated(req.prompt):
                notes.setdefault("truncated", []).append(f"{enc.name}: prompt longer than {enc.max_length} tokens was truncated")
        images = None
        if req.style_image is not None and req.style_strength > 0:
            images = reference_tensor(req.style_image).expand(n, -1, -1, -1)
        cond = select_encoders(self.encoders.encode([req.prompt] * n, images, self.device), req.encoders)
        if images is not None:
            cond = replace(cond, image_embed=cond.image_embed * req.style_strength)
        if req.paint is not None:
            cond = token_maps(self, req, cond, notes)
        if req.negative_prompt:
            uncond = select_encoders(self.encoders.encode([req.negative_prompt] * n, None, self.device), req.encoders)
        else:
            uncond = cond.unconditional()
        scale = torch.full((n,), float(req.guidance))
        gc = GuidedCond(cond, uncond, scale)
        switched = None
        if req.switch_prompt is not None:
            c2 = select_encoders(self.encoders.encode([req.switch_prompt] * n, images, self.device), req.encoders)
            if images is not None:
                c2 = replace(c2, image_embed=c2.image_embed * req.style_strength)
            switched = GuidedCond(c2, uncond, scale)
        return gc, switched, notes

    def generate(self, req: GenerationRequest, evaluate: Evaluate = _direct) -> Iterator[Progress | GenerationResult]:
        """Yields ``Progress`` after every denoiser evaluation, then one ``GenerationResult``."""
        # 1. Resolve: validate the request and fill in the model's defaults.
        req = self.resolve(req)
        recorder = None
        if req.attention_maps:  # Fig. 3: per-token cross-attention of the base stage
            recorder = AttentionRecorder.for_request(self, req)
            evaluate = recorder.wrap(evaluate)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        seeds = [req.seed + k for k in range(req.num_images)]
        with torch.inference_mode():
            # 2. Condition: the encoders once; paint maps, style scale and the switched prompt.
            gc, switched, notes = self.conditioning(req)
            timings["encoders"] = time.perf_counter() - t_start
            count = _Count(nfe(req.sampler, req.steps) + sum(nfe(req.sampler, req.sr_steps) for _ in self.sr))
            trace: dict[str, list[dict]] = {}
            stage_images: dict[str, list[Image.Image]] = {}
            x = None
            # 3. Each stage of the cascade: base (32²) then super-resolution, sampled from noise.
            for si, stage in enumerate(self.stages):
                t0 = time.perf_counter()
                noise_seeds = [s + 7919 * si for s in seeds]
                stage_gc = gc if si == 0 else self._sr_conditioning(stage, x, gc, switched, req, noise_seeds)
                x = yield from self._sample_stage(stage, stage_gc, switched if si == 0 else None, req, noise_seeds, evaluate, trace, count)
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
        yield GenerationResult(images, stage_images, metadata, timings, None if recorder is None else recorder.summary())

    def _sr_conditioning(self, stage: Stage, x: Tensor, gc: GuidedCond, switched: GuidedCond | None, req: GenerationRequest, noise_seeds: list[int]) -> GuidedCond:
        """A super-resolution stage's conditioning: the previous output upsampled plus augmentation noise."""
        lowres = torch.nn.functional.interpolate(x.clamp(-1, 1), size=(stage.resolution,) * 2, mode="bilinear", align_corners=False)
        aug = initial_noise([s + 104729 for s in noise_seeds], tuple(lowres.shape[1:]), stage.aug_sigma, self.device)
        n = len(noise_seeds)
        lr_cond = {"lowres": lowres + aug, "aug_sigma": torch.full((n,), stage.aug_sigma, device=self.device)}
        sr_scale = torch.full((n,), float(req.sr_guidance))
        # SR follows the prompt in force at the end of the base stage (Fig. 4's switch).
        last = switched if switched is not None and req.switch_sigma > req.sigma_min else gc
        plain = replace(last.cond, token_maps=None, pww_weight=None)
        return GuidedCond(replace(plain, **lr_cond), replace(gc.uncond, **lr_cond), sr_scale)

    def _sample_stage(self, stage: Stage, stage_gc: GuidedCond, switched: GuidedCond | None, req: GenerationRequest, noise_seeds: list[int],
                      evaluate: Evaluate, trace: dict, count: "_Count") -> Generator[Progress, None, Tensor]:
        """Drives the sampler over one stage through ``samplers.sample_steps``; yields ``Progress``, returns x."""
        steps = req.steps if not stage.is_sr else req.sr_steps
        sigmas = karras_sigmas(steps, req.sigma_min, req.sigma_max)
        D = CFGDenoiser(stage.ensemble)
        if req.dynamic_threshold:
            D = ThresholdedDenoiser(D)
        x = initial_noise(noise_seeds, (3, stage.resolution, stage.resolution), float(sigmas[0]), self.device)
        run = sample_steps(req.sampler, lambda x, sigma, gc: evaluate(stage, D, x, sigma, gc), x, sigmas,
                           lambda sigma: self._at_sigma(stage_gc, switched, req, sigma))
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

    def _at_sigma(self, gc: GuidedCond, switched: GuidedCond | None, req: GenerationRequest, sigma: float) -> GuidedCond:
        """The conditioning in force at σ: prompt switching (Fig. 4) and the style σ window."""
        if switched is not None and sigma < req.switch_sigma:
            gc = switched
        if not style_active(sigma, req.style_sigma):
            keep = torch.ones_like(gc.cond.keep)
            keep[:, 2] = False
            gc = GuidedCond(gc.cond.with_keep(keep), gc.uncond, gc.scale)
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
