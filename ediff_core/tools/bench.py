"""``python -m ediff_core bench``: speed and memory figures of the cascade (docs/performance.md).

Every figure is a median over repeats after warm-up runs (which also trigger compilation).
The ratios are measured inside one run, interleaving the runs they compare, so that load
from other processes affects both sides alike:

- ``sampler_overhead`` = denoising time of every stage ÷ the time spent inside the U-Net calls
  of those same runs (forward hooks on each expert's U-Net), i.e. ÷ (NFE × U-Net time); ≥ 1.
- ``ensemble_vs_single`` = base-stage time with the expert ensemble ÷ with its first expert
  owning all of σ (the same network, architecture and NFE: the cost of routing alone).
- ``batch_speedup`` = images/s of one request for 8 images ÷ images/s of a request for 1.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..core.experts import ExpertEnsemble, ExpertSpec, Interval
from ..core.images import png_info
from ..core.networks import denoiser
from ..pipeline import EDiffPipeline, GenerationResult, Stage
from ..core.request import GenerationRequest
from ..core.samplers import nfe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure; ``QUICK`` for smoke runs (``--quick``)."""

    warmup: int = 1  # untimed full generations first (compile, allocator, caches)
    repeats: int = 5  # timed generations per figure; the figure is the median
    unet_repeats: int = 20  # timed U-Net calls per expert
    batch: int = 8  # images in the batched request of batch_speedup
    matmul_n: int = 2048  # side of the square fp32 matmul that measures the machine's peak
    prompt: str = "a red circle above a blue square"


QUICK = BenchConfig(warmup=1, repeats=2, unet_repeats=5, matmul_n=1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's practical peak: best GFLOP/s of an n×n @ n×n matmul (2n³ FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------- U-Net calls


def _experts(pipe: EDiffPipeline) -> Iterator[tuple[str, Stage, ExpertSpec, torch.nn.Module]]:
    """("stage/expert", stage, spec, D) for every network: D is its preconditioned denoiser."""
    for stage, spec, net in pipe.networks():
        yield f"{stage.name}/{spec.name}", stage, spec, denoiser(net)


def _sigma_in(iv: Interval) -> float:
    """A σ the expert owns (the routing does not change the cost; this keeps calls realistic)."""
    if math.isinf(iv.hi):
        return max(2 * iv.lo, 1.0)
    return math.sqrt(iv.lo * iv.hi) if iv.lo > 0 else iv.hi / 2


def _call_inputs(pipe: EDiffPipeline, stage: Stage, spec: ExpertSpec, batch: int, prompt: str) -> tuple[Tensor, Tensor, object]:
    """(x, σ, cond) of one expert call at ``batch``; SR stages get a low-res input."""
    cond = pipe.encoders.encode([prompt] * batch, None, pipe.device)
    if stage.is_sr:
        lowres = torch.zeros(batch, 3, stage.resolution, stage.resolution, device=pipe.device)
        cond = replace(cond, lowres=lowres, aug_sigma=torch.full((batch,), stage.aug_sigma, device=pipe.device))
    x = torch.randn(batch, 3, stage.resolution, stage.resolution, device=pipe.device)
    return x, torch.full((batch,), _sigma_in(spec.interval), device=pipe.device), cond


def unet_ms(pipe: EDiffPipeline, repeats: int, prompt: str, batch: int = 1) -> dict[str, float]:
    """Median ms per call of each expert network (preconditioning included) at ``batch``."""
    out = {}
    with torch.inference_mode():
        for name, stage, spec, expert in _experts(pipe):
            x, sigma, cond = _call_inputs(pipe, stage, spec, batch, prompt)
            out[name] = 1e3 * _median_time(lambda: expert(x, sigma, cond), repeats, pipe.device)
    return out


def unet_flops(pipe: EDiffPipeline, prompt: str) -> dict[str, int]:
    """FLOPs of one batch-1 call of each expert (``FlopCounterMode``: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    with torch.inference_mode():
        for name, stage, spec, expert in _experts(pipe):
            x, sigma, cond = _call_inputs(pipe, stage, spec, 1, prompt)
            counter = FlopCounterMode(display=False)
            with counter:
                expert(x, sigma, cond)
            out[name] = int(counter.get_total_flops())
    return out


def thread_timings(pipe: EDiffPipeline, repeats: int, prompt: str, batch: int = 2) -> dict[int, float]:
    """Median ms of the first base expert at ``batch`` (2 = one image with CFG) for 1 thread, the
    current count and every core; the current count is restored. On a shared CPU one thread can
    win by a wide margin (OpenMP workers wait on preempted peers)."""
    current = torch.get_num_threads()
    name, stage, spec, expert = next(_experts(pipe))
    x, sigma, cond = _call_inputs(pipe, stage, spec, batch, prompt)
    out = {}
    try:
        with torch.inference_mode():
            for n in sorted({1, current, os.cpu_count() or 1}):
                torch.set_num_threads(n)
                out[n] = 1e3 * _median_time(lambda: expert(x, sigma, cond), repeats, pipe.device)
    finally:
        torch.set_num_threads(current)
    return out


@contextmanager
def timed_unets(pipe: EDiffPipeline) -> Iterator[dict[str, list[float]]]:
    """Records, per stage, the duration of every U-Net call made inside the block (seconds)."""
    spent: dict[str, list[float]] = {s.name: [] for s in pipe.stages}
    handles, start = [], {}
    for stage, _, net in pipe.networks():

        def pre(module, args, key=id(net)):
            _sync(pipe.device)
            start[key] = time.perf_counter()

        def post(module, args, output, key=id(net), name=stage.name):
            _sync(pipe.device)
            spent[name].append(time.perf_counter() - start[key])

        handles += [net.register_forward_pre_hook(pre), net.register_forward_hook(post)]
    try:
        yield spent
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- generations


def _generate(pipe: EDiffPipeline, req: GenerationRequest) -> tuple[GenerationResult, float]:
    """One generation and the time to encode its first image as PNG (with its metadata)."""
    result = pipe(req)
    t0 = time.perf_counter()
    result.images[0].save(io.BytesIO(), format="PNG", pnginfo=png_info(result.metadata[0]))
    return result, time.perf_counter() - t0


def _base_only(pipe: EDiffPipeline, stage: Stage) -> EDiffPipeline:
    return EDiffPipeline(pipe.encoders, stage, [], pipe.name, pipe.defaults, pipe.device)


def single_expert_stage(stage: Stage) -> Stage:
    """The stage with its first expert owning all of σ: same network and NFE, no routing."""
    single = ExpertEnsemble([stage.ensemble.experts[0]], [ExpertSpec("single", Interval(0.0, math.inf))]).eval()
    return replace(stage, ensemble=single)


def run(pipe: EDiffPipeline, mode: str = "none", cfg: BenchConfig = BenchConfig()) -> dict:
    """Measures everything ``bench --json`` prints (see the module docstring)."""
    from .accel import compile_pipeline, tune_cpu_allocator

    device = pipe.device
    out: dict = {"model": pipe.name, "device": str(device), "threads": torch.get_num_threads(), "load_avg_start": round(os.getloadavg()[0], 2)}
    reps = 3 if cfg is QUICK else 5
    out["peak_matmul_gflops"] = round(peak_matmul_gflops(device, cfg.matmul_n, reps), 2)
    if device.type == "cuda":  # TensorRT runs fp16: its peak is the fp16 one
        out["peak_matmul_gflops_fp16"] = round(peak_matmul_gflops(device, cfg.matmul_n, reps, torch.half), 2)
    out["unet_gflop"] = {k: round(v / 1e9, 4) for k, v in unet_flops(pipe, cfg.prompt).items()}  # eager, batch 1
    if device.type == "cpu":
        out["allocator"] = tune_cpu_allocator()  # the CLI entry point has set it; this reports it
        out["unet_ms_by_threads"] = {str(k): round(v, 3) for k, v in thread_timings(pipe, cfg.unet_repeats, cfg.prompt).items()}
    eager_ms = unet_ms(pipe, cfg.unet_repeats, cfg.prompt) if mode != "none" else None

    report = compile_pipeline(pipe, mode)
    out.update(backend=report.backend, backend_reason=report.reason, unavailable=report.unavailable, compile_s=report.seconds)

    req = GenerationRequest(prompt=cfg.prompt, seed=0)
    resolved = pipe.resolve(req)
    out["settings"] = {k: getattr(resolved, k) for k in ("steps", "sr_steps", "sampler", "guidance", "sr_guidance")}
    by_stage = {s.name: nfe(resolved.sampler, resolved.steps if not s.is_sr else resolved.sr_steps) for s in pipe.stages}
    out["nfe"], out["nfe_by_stage"] = sum(by_stage.values()), by_stage

    t0 = time.perf_counter()
    for _ in range(cfg.warmup):
        _generate(pipe, req)
    out["warmup_s"] = round(time.perf_counter() - t0, 2)

    # U-Net calls, batch 1 (after the warm-up, so compiled graphs exist).
    out["unet_ms"] = {k: round(v, 3) for k, v in unet_ms(pipe, cfg.unet_repeats, cfg.prompt).items()}
    if eager_ms is not None:
        out["unet_ms_eager"] = {k: round(v, 3) for k, v in eager_ms.items()}
        out["speedup_vs_eager"] = {k: round(eager_ms[k] / out["unet_ms"][k], 3) for k in eager_ms}
    peak = out["peak_matmul_gflops_fp16" if report.backend == "tensorrt" else "peak_matmul_gflops"]
    out["unet_gflops_achieved"] = {k: round(out["unet_gflop"][k] / (ms / 1e3), 2) for k, ms in out["unet_ms"].items()}
    out["unet_peak_fraction"] = {k: round(v / peak, 4) for k, v in out["unet_gflops_achieved"].items()}

    # Latency, time split and sampler overhead: the full cascade, one image.
    latency, splits, overhead, calls = [], [], [], {}
    for _ in range(cfg.repeats):
        with timed_unets(pipe) as spent:
            t0 = time.perf_counter()
            result, png_s = _generate(pipe, req)
            latency.append(time.perf_counter() - t0)
        denoise = sum(result.timings[s.name] for s in pipe.stages)
        overhead.append(denoise / sum(sum(v) for v in spent.values()))
        splits.append({**{k: v for k, v in result.timings.items() if k != "total"}, "png": png_s})
        calls = {k: len(v) for k, v in spent.items()}
    out["latency_s"] = round(statistics.median(latency), 4)
    out["time_split_s"] = {k: round(statistics.median(s[k] for s in splits), 4) for k in splits[0]}
    out["sampler_overhead"] = round(statistics.median(overhead), 4)
    out["unet_calls_by_stage"] = calls  # one expert call per denoiser evaluation: equals nfe_by_stage

    # Ensemble vs one expert everywhere, base stage only, runs interleaved.
    ens, single = _base_only(pipe, pipe.base), _base_only(pipe, single_expert_stage(pipe.base))
    t_ens, t_single = [], []
    for _ in range(cfg.repeats):
        t_ens.append(ens(req).timings[pipe.base.name])
        t_single.append(single(req).timings[pipe.base.name])
    out["ensemble_vs_single"] = round(statistics.median(t_ens) / statistics.median(t_single), 4)

    # Throughput of one request for `batch` images vs one image (full cascade, no PNG).
    batched = replace(req, num_images=cfg.batch)
    pipe(batched)  # warm-up: new batch sizes may compile
    t1, tb = [], []
    for _ in range(cfg.repeats):
        t1.append(pipe(req).timings["total"])
        tb.append(pipe(batched).timings["total"])
    ips1, ipsb = 1 / statistics.median(t1), cfg.batch / statistics.median(tb)
    out["images_per_s"] = {"1": round(ips1, 4), str(cfg.batch): round(ipsb, 4)}
    out["batch_speedup"] = round(ipsb / ips1, 4)

    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    out["load_avg_end"] = round(os.getloadavg()[0], 2)
    out["repeats"] = cfg.repeats
    return out


def _print_table(r: dict) -> None:
    print(f"model {r['model']} on {r['device']} ({r['threads']} threads); backend {r['backend_reason']}")
    print(f"settings {r['settings']}  NFE {r['nfe']} {r['nfe_by_stage']}")
    for k, ms in r["unet_ms"].items():
        extra = f"  ({r['speedup_vs_eager'][k]}× eager)" if "speedup_vs_eager" in r else ""
        print(f"  U-Net {k:>28}: {ms:9.2f} ms/call  {r['unet_gflop'][k]:.3f} GFLOP  {r['unet_gflops_achieved'][k]:.1f} GFLOP/s = {100 * r['unet_peak_fraction'][k]:.1f}% of peak{extra}")
    print(f"peak fp32 matmul {r['peak_matmul_gflops']} GFLOP/s")
    if "unet_ms_by_threads" in r:
        print(f"first base expert, batch 2, ms by thread count: {r['unet_ms_by_threads']}")
    print(f"latency {r['latency_s']} s  split {r['time_split_s']}")
    print(f"sampler_overhead {r['sampler_overhead']}  ensemble_vs_single {r['ensemble_vs_single']}  batch_speedup {r['batch_speedup']}  images/s {r['images_per_s']}")
    print(f"peak RSS {r['peak_rss_mb']} MiB  load average {r['load_avg_start']} → {r['load_avg_end']}")


def main(args: argparse.Namespace) -> int:
    """CLI entry: ``python -m ediff_core bench [--quick] [--json] [--compile MODE] [--model PATH]``."""
    from ..core.request import pick_device

    if not args.json:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    pipe = EDiffPipeline.from_pretrained(args.model, device=pick_device(args.device))
    result = run(pipe, args.compile, QUICK if args.quick else BenchConfig())
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result)
    return 0
