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

This module, the lowest of them, holds the model variants they compare: loading the Fig. 7 baseline
(``load_variant``), finding it (``baseline_folder``), swapping a stage in (``using``), and the
prompt pool. The sizes and the ``Suite`` that generates and measures are in ``suite.py``.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ediff_core.core.experts import ExpertEnsemble, ExpertSpec, Interval
from ediff_core.data.captions import captions
from ediff_core.data.shapes_world import Scene
from ediff_core.tools.eval import metrics as M

if TYPE_CHECKING:
    from ediff_core.pipeline import EDiffPipeline, Stage

TRAIN_BASELINE = "python -m ediff_core train --preset mini --stage experts --out checkpoints/ediff-mini --resume"
POOL_START = 950_000  # test-split index of the first prompt scene (the FID reference starts at 900,000)
FINDINGS = ("ensemble_vs_baseline", "encoder_ablation", "prompt_switch", "attention_dynamics", "heldout_compositions", "sr_ablation")


# ---- models -----------------------------------------------------------------------------------
def load_variant(pipe: "EDiffPipeline", folder: str | Path, name: str) -> "Stage":
    """A base ``Stage`` whose ensemble is the single network ``<folder>/<base>/<name>`` on [0, ∞)."""
    from ediff_core.core.networks import EDiffUNet, denoiser
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
    from ediff_core.core.model_folder import INDEX, default_model_path

    for cand in (getattr(pipe, "folder", None), default_model_path()):
        if cand is None or not (Path(cand) / INDEX).exists():
            continue
        index = json.loads((Path(cand) / INDEX).read_text())
        names = [e["name"] for e in index.get("base", {}).get("experts", [])]
        if index.get("name") == pipe.name and names == [s.name for s in pipe.base.ensemble.specs]:
            return Path(cand)
    return None


def training_objective(folder: Path | None) -> dict | None:
    """Which objective the base experts in ``folder`` were trained with: the token-grounding weight W
    of each (``train --grounding``, beyond the paper; 0 or absent = the paper's EDM loss alone)."""
    if folder is None:
        return None
    from ediff_core.core.model_folder import INDEX

    experts = json.loads((folder / INDEX).read_text()).get("base", {}).get("experts", [])
    weights = {}
    for e in experts:
        record = folder / e.get("path", "") / "training.json"
        config = json.loads(record.read_text()).get("config", {}) if record.exists() else {}
        weights[e["name"]] = float(config.get("grounding", 0.0))
    return {"grounding": weights, "paper_faithful": all(w == 0 for w in weights.values())}


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


def pool(n: int) -> list[tuple[Scene, dict[str, str]]]:
    """``n`` test-split scenes (1–4 objects, no held-out pair) from POOL_START, with their captions."""
    scenes, _ = M.reference_scenes(n, POOL_START)
    return [(s, captions(s)) for s in scenes]


def trained_steps(pipe: "EDiffPipeline") -> str:
    """'base/shared 1000, base/E3_0 150, ...' from the model card ('' when it has none)."""
    steps = {k: v.get("step") for k, v in (getattr(pipe, "card", {}) or {}).get("trained_steps", {}).items()}
    return ", ".join(f"{k} {v}" for k, v in steps.items())
