"""The model folder: ``model_index.json`` naming encoders, experts (with σ intervals) and
super-resolution stages, each network in its own diffusers-style folder of safetensors.

```
model_index.json
t5/            Hugging Face T5 encoder + tokenizer (or "path": a Hub id)
clip/          open_clip config + safetensors (or "path": a Hub id)
base/<expert>/ config.json + diffusion_pytorch_model.safetensors
sr64/<expert>/ ...
```
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

INDEX = "model_index.json"
FORMAT = "ediff-i"


@dataclass
class ExpertEntry:
    name: str
    path: str
    sigma_min: float
    sigma_max: float  # math.inf for the top interval (written as null)
    guidance: float | None = None


@dataclass
class StageEntry:
    """One resolution of the cascade: the base model or a super-resolution stage."""

    name: str
    resolution: int
    experts: list[ExpertEntry]
    aug_sigma: float = 0.0  # SR only: noise-conditioning augmentation level at inference


@dataclass
class ModelIndex:
    name: str
    encoders: dict[str, str]  # {"t5": path-or-hub-id, "clip": path-or-hub-id}
    base: StageEntry
    super_resolution: list[StageEntry] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)  # steps, sr_steps, guidance, sampler
    card: dict = field(default_factory=dict)  # free-form facts: trained steps, data...

    def to_json(self) -> dict:
        def stage(s: StageEntry) -> dict:
            return {
                "name": s.name,
                "resolution": s.resolution,
                "aug_sigma": s.aug_sigma,
                "experts": [
                    {"name": e.name, "path": e.path, "sigma_min": e.sigma_min, "sigma_max": None if math.isinf(e.sigma_max) else e.sigma_max, "guidance": e.guidance}
                    for e in s.experts
                ],
            }

        return {
            "format": FORMAT,
            "format_version": 1,
            "name": self.name,
            "encoders": {k: {"path": v} for k, v in self.encoders.items()},
            "base": stage(self.base),
            "super_resolution": [stage(s) for s in self.super_resolution],
            "defaults": self.defaults,
            "card": self.card,
        }

    @staticmethod
    def from_json(d: dict, where: str) -> "ModelIndex":
        def need(obj: dict, key: str, ctx: str):
            if key not in obj:
                raise ValueError(f"{where}: {ctx} has no '{key}'")
            return obj[key]

        def stage(s: dict, ctx: str) -> StageEntry:
            experts = [
                ExpertEntry(
                    name=need(e, "name", ctx),
                    path=need(e, "path", ctx),
                    sigma_min=float(need(e, "sigma_min", ctx)),
                    sigma_max=math.inf if e.get("sigma_max") is None else float(e["sigma_max"]),
                    guidance=e.get("guidance"),
                )
                for e in need(s, "experts", ctx)
            ]
            if not experts:
                raise ValueError(f"{where}: {ctx} lists no experts")
            return StageEntry(need(s, "name", ctx), int(need(s, "resolution", ctx)), experts, float(s.get("aug_sigma", 0.0)))

        if d.get("format") != FORMAT:
            raise ValueError(f"{where}: 'format' must be {FORMAT!r}; got {d.get('format')!r}")
        enc = need(d, "encoders", "the index")
        for k in ("t5", "clip"):
            if k not in enc:
                raise ValueError(f"{where}: encoders has no '{k}' entry (a model needs both T5 and CLIP)")
        return ModelIndex(
            name=d.get("name", "unnamed"),
            encoders={k: v["path"] for k, v in enc.items()},
            base=stage(need(d, "base", "the index"), "base"),
            super_resolution=[stage(s, f"super_resolution[{i}]") for i, s in enumerate(d.get("super_resolution", []))],
            defaults=d.get("defaults", {}),
            card=d.get("card", {}),
        )


def default_model_path() -> Path:
    """The embedded default, ``checkpoints/ediff-mini`` (overridable with $EDIFF_MODEL)."""
    env = os.environ.get("EDIFF_MODEL")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "checkpoints" / "ediff-mini"


def resolve_folder(path_or_repo: str | Path) -> Path:
    """A local model folder, or a Hub repository id fetched with huggingface_hub when online."""
    p = Path(path_or_repo)
    if p.is_dir():
        if not (p / INDEX).exists():
            raise FileNotFoundError(f"{p} has no {INDEX}; a model folder needs an index naming its encoders, experts and stages")
        return p
    s = str(path_or_repo)
    if p.exists():
        raise NotADirectoryError(f"--model must be a model folder or a Hub id; {s} is a file")
    if s.count("/") != 1 or s.startswith((".", "/")):
        raise FileNotFoundError(f"model folder {s} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=s))
    except Exception as e:  # offline, no such repo, no access
        raise FileNotFoundError(f"model {s!r} is not a local folder and could not be fetched from the Hub ({type(e).__name__}: {e})") from None


def read_index(folder: Path) -> ModelIndex:
    try:
        d = json.loads((folder / INDEX).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / INDEX} is not valid JSON: {e}") from None
    index = ModelIndex.from_json(d, str(folder / INDEX))
    for stage in [index.base, *index.super_resolution]:
        for e in stage.experts:
            w = folder / e.path
            if not (w / "config.json").exists() or not any(w.glob("*.safetensors")):
                raise FileNotFoundError(f"{folder}: expert '{e.name}' of stage '{stage.name}' needs config.json and safetensors weights in {w}")
    return index


def write_index(folder: Path, index: ModelIndex) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).write_text(json.dumps(index.to_json(), indent=2) + "\n")
