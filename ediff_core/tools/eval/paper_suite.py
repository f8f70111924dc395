"""``python -m ediff_core eval --suite paper``: runs the findings (``paper_findings``) on the kit
of ``paper`` and writes ``results.json``, plots and the markdown report (``paper_report``).
The top of the paper-suite modules: ``paper`` <- ``paper_findings`` <- ``paper_report`` <- here.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ediff_core.tools.eval import metrics as M
from ediff_core.tools.eval import paper_report
from ediff_core.tools.eval.paper import FINDINGS, _display_path, baseline_folder, load_variant, locate_model_folder, training_objective
from ediff_core.tools.eval.suite import PRESETS, PaperConfig, Suite
from ediff_core.tools.eval.paper_findings import CLAIMS, RUNNERS, TITLES

if TYPE_CHECKING:
    from ediff_core.pipeline import EDiffPipeline, Stage


def run_paper_suite(pipe: "EDiffPipeline", out_dir: Path, quick: bool = False, n: int | None = None, model_folder: str | Path | None = None,
                    markdown: Path | None = None, only: tuple[str, ...] = FINDINGS, log: Callable[[str], None] | None = None) -> dict:
    """Runs the findings, writing ``out_dir/results.json``, PNG plots beside it and ``markdown``
    (default ``<out_dir>.md``, i.e. ``docs/results.md`` for ``docs/results``); returns the results.

    ``model_folder`` is where ``base/baseline`` is looked up (default: ``pipe.folder`` or the default
    model when its index matches ``pipe``). A finding that raises is recorded as failed and the
    rest still run; results.json is rewritten after every finding.
    """
    import torch

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = Path(markdown) if markdown is not None else out_dir.parent / f"{out_dir.name}.md"
    cfg = PRESETS["quick" if quick else "full"]
    cfg = cfg.scaled(n) if n else cfg
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(pipe, cfg, out_dir, markdown, quick, n, model_folder, only, log)
    finally:
        torch.set_num_threads(threads)


def _run(pipe: "EDiffPipeline", cfg: PaperConfig, out_dir: Path, markdown: Path, quick: bool, n: int | None, model_folder: str | Path | None,
         only: tuple[str, ...], log: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    folder = locate_model_folder(pipe, model_folder)
    variants: dict[str, Stage] = {"ensemble": pipe.base}
    if (where := baseline_folder(pipe, folder)) is not None:
        variants["baseline"] = load_variant(pipe, where, "baseline")
    enc = pipe.encoders.clip_image
    ref = M.reference(enc, cfg.n_reference, pipe.stages[-1].resolution, out_dir, log=log)
    suite = Suite(pipe, cfg, out_dir, ref, variants, log, folder)
    req = pipe.resolve(suite.request("x", 0))
    argv = sys.argv[1:] if sys.argv[1:2] == ["eval"] else ["eval", "--suite", "paper", "--out", str(out_dir), *(["--quick"] if quick else []), *(["--n", str(n)] if n else [])]
    results = {
        "suite": "paper", "model": pipe.name, "model_folder": None if folder is None else _display_path(folder),
        "training_objective": training_objective(folder), "card": getattr(pipe, "card", {}),
        "command": "python -m ediff_core " + " ".join(argv), "quick": quick, "config": asdict(cfg),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(pipe.device), "torch_threads": torch_threads(),
        "sampling": {"sampler": req.sampler, "steps": req.steps, "sr_steps": req.sr_steps, "default_guidance": req.guidance, "same_nfe_for_every_model": True},
        "fid": {
            "features": f"mini-CLIP image embedding ({ref.stats.mu.size}-d, L2-normalised ×√D), Lanczos to {enc.image_size} px, lossless",
            "reference": {"images": ref.stats.n, "size": ref.size, "split": "test", "indices": list(ref.indices), "excludes": "held-out pairs excluded",
                          "encoder_hash": ref.encoder_hash, "cache": None if ref.path is None else ref.path.name, "kid_reference_images": len(ref.kid_feats)},
            "real_renders": _jsonable({"n": cfg.n_sweep, **suite.real(cfg.n_sweep)}),
        },
        "findings": {},
    }
    for key in only:
        log(f"[{key}]")
        t = time.perf_counter()
        try:
            rec = RUNNERS[key](suite)
        except Exception as e:  # keep the other findings of a long run
            rec = {"status": f"failed: {type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            log(rec["traceback"])
        grids = rec.pop("_grid", None)
        figure, source, quote = CLAIMS[key]
        rec = {"title": TITLES[key], "figure": figure, "source": source, "paper": quote, "status": rec.pop("status", "ok"), "reproduces": rec.pop("reproduces", None), **rec}
        rec["seconds"] = round(time.perf_counter() - t, 1)
        if rec["status"] == "ok":
            try:
                rec["plots"] = paper_report.plot(key, rec, grids, out_dir)
            except Exception as e:  # the numbers stand without their plot
                rec["plots"], rec["plot_error"] = [], f"{type(e).__name__}: {e}"
                log(traceback.format_exc())
        results["findings"][key] = _jsonable(rec)
        results["images_generated"] = suite.made
        results["wall_clock_s"] = round(time.perf_counter() - t0, 1)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    paper_report.write_markdown(results, markdown, out_dir)
    log(f"wrote {out_dir / 'results.json'} and {markdown} in {results['wall_clock_s']:.0f} s ({suite.made} images)")
    return results


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _jsonable(x):
    """Tuples to lists, numpy scalars to floats, NaN to None; drops keys starting with '_'."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x
