"""Faster U-Net calls: TensorRT on NVIDIA GPUs, ``torch.compile`` elsewhere, eager as the floor.

``compile_pipeline(pipe, mode)`` replaces the ``forward`` of every diffusers U-Net inside the
pipeline (each base expert, each super-resolution stage) with an accelerated one. Only the
diffusers core is accelerated: its inputs are plain tensors (sample, c_noise, tokens, global
vector, key mask), while the condition projector, the EDM preconditioning, the expert routing
and classifier-free guidance stay eager (they are a few small ops per step).

Calls that need Python inside attention — paint-with-words token maps (§4.3) or a recording
hook for the attention maps (Fig. 3) — and calls outside the compiled shapes run the original
eager forward, so every feature keeps working after compilation.

Modes: ``auto`` walks tensorrt → torch.compile → eager and takes the first available; an
explicit ``tensorrt`` or ``torch`` uses that backend or, when it cannot run here, eager (never
a different compiler behind the user's back); ``none`` is eager.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..core.attention import needs_python_attention

log = logging.getLogger(__name__)

MODES = ("auto", "tensorrt", "torch", "none")
MAX_BATCH = 32  # largest U-Net batch a TensorRT engine takes: the server's 16 running requests × 2 CFG branches


@dataclass
class CompileReport:
    """What ``compile_pipeline`` did. ``str(report)`` is the backend name."""

    requested: str  # the mode asked for: auto | tensorrt | torch | none
    backend: str  # what runs: "tensorrt" | "torch.compile" | "eager"
    reason: str  # one line: what was chosen and why
    unavailable: dict[str, str] = field(default_factory=dict)  # backend -> why it cannot run here
    networks: list[str] = field(default_factory=list)  # "stage/expert" U-Nets now accelerated
    seconds: float = 0.0  # compile time spent now (torch.compile compiles lazily, per batch size, on first use)
    cache: dict[str, str] = field(default_factory=dict)  # TensorRT engine per network: "hit" | "built" | "not saved"

    def __str__(self) -> str:
        return self.backend

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- availability


# glibc serves blocks over its mmap threshold with fresh mmap/munmap: every large activation of
# a batched U-Net call is then a new zero-filled mapping (page faults). Fixing the thresholds
# keeps freed buffers in the heap for reuse; per-image time of the mini U-Nets at U-Net batch 16
# drops ~15-20 % on this 2-core CPU, batch 2 unchanged (docs/performance.md).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


@functools.cache
def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> str:
    """Sets glibc's ``M_MMAP_THRESHOLD`` / ``M_TRIM_THRESHOLD`` for this process (CPU path).

    Runs once per process; ``EDIFF_MALLOC_TUNING=0`` opts out. Returns what was done, for logs and
    ``bench``: ``"glibc mmap_threshold=… trim_threshold=…"``, or why nothing was. The cost: freed
    activations stay in the heap, so RSS stays at its peak instead of shrinking between calls.
    """
    import ctypes
    import platform

    if os.environ.get("EDIFF_MALLOC_TUNING", "1") == "0":
        return "default (EDIFF_MALLOC_TUNING=0)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"default (not glibc: {platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    what = f"glibc mmap_threshold={mmap_threshold} trim_threshold={trim_threshold}" if ok else "default (mallopt refused)"
    log.info("CPU allocator: %s", what)
    return what


def tensorrt_unavailable(device: torch.device | str) -> str | None:
    """Why TensorRT cannot run for a pipeline on ``device`` (None when it can)."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if torch.device(device).type != "cuda":
        return f"the pipeline is on {device}; load it with --device cuda"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed (pip install -r requirements-cuda.txt)"
    return None


def torch_compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` (None when it can)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton is not installed (inductor needs it on CUDA)"
    from torch._inductor import config

    cxx = [c for c in config.cpp.cxx if c] or ["g++"]
    if not any(shutil.which(c) for c in cxx):
        return f"no C++ compiler found ({', '.join(cxx)}); inductor needs one on CPU"
    return None


# ---------------------------------------------------------------- the compiled core


class UNetCore(nn.Module):
    """The diffusers U-Net with plain tensor inputs and one tensor output (what compilers trace).

    Calls the class's ``forward`` directly, so it stays the eager network even after
    ``compile_pipeline`` has replaced the instance's ``forward``.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, class_labels: Tensor, encoder_attention_mask: Tensor) -> Tensor:
        # sample (B, C, H, W); timestep = c_noise (B,); tokens (B, S, W); global vector (B, G); key mask (B, S)
        return type(self.unet).forward(
            self.unet, sample, timestep, encoder_hidden_states, class_labels=class_labels, encoder_attention_mask=encoder_attention_mask, return_dict=False
        )[0]


@dataclass(frozen=True)
class UNetShapes:
    """Per-sample input shapes of one U-Net (the batch dimension is left out)."""

    sample: tuple[int, int, int]  # (C_in, H, W)
    tokens: tuple[int, int]  # (S, width): cross-attention keys
    global_dim: int  # class-label (global conditioning) vector width

    def per_input(self) -> list[tuple[int, ...]]:
        """Shapes of (sample, timestep, tokens, global vector, mask) without the batch dimension."""
        return [self.sample, (), self.tokens, (self.global_dim,), (self.tokens[0],)]

    def example(self, batch: int, dtype: torch.dtype, device: torch.device | str) -> tuple[Tensor, ...]:
        """Random inputs of batch ``batch`` (the mask all True, as ``dtype`` when not bool)."""
        x, t, e, c, m = ((batch, *s) for s in self.per_input())
        return (
            torch.randn(x, dtype=dtype, device=device),
            torch.zeros(t, dtype=dtype, device=device),
            torch.randn(e, dtype=dtype, device=device),
            torch.randn(c, dtype=dtype, device=device),
            torch.ones(m, dtype=dtype, device=device),
        )


def unet_shapes(net: nn.Module, resolution: int, clip_length: int, t5_length: int) -> UNetShapes:
    """Shapes of an ``EDiffUNet``'s core at ``resolution`` for the given encoder lengths."""
    cfg = net.config
    S = 1 + clip_length + t5_length + 1  # [null | CLIP text | T5 | CLIP image], conditioning.key_layout
    return UNetShapes((3 + cfg.lowres_channels, resolution, resolution), (S, cfg.width), net.projector.global_dim)


def cache_key(module: nn.Module, shapes: object, trt_version: str, gpu: str) -> str:
    """SHA-256 of the weights (names, dtypes, shapes, bytes), the input shapes, the TensorRT
    version and the GPU name: an engine is only reused for exactly what it was built from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(repr(shapes).encode())
    h.update(f"|{trt_version}|{gpu}".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$EDIFF_CACHE/tensorrt``, else ``$XDG_CACHE_HOME/ediff/tensorrt`` (``~/.cache`` by default)."""
    if os.environ.get("EDIFF_CACHE"):
        return Path(os.environ["EDIFF_CACHE"]) / "tensorrt"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ediff" / "tensorrt"


def _compile_torch(unet: nn.Module) -> Callable[..., Tensor]:
    # dynamic=False: one graph per batch size (the sampler uses 1-3 sizes), each fully specialised.
    return torch.compile(UNetCore(unet), dynamic=False)


def export_core(unet: nn.Module, shapes: UNetShapes, max_batch: int, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.export.ExportedProgram, tuple[Tensor, ...], tuple[dict, ...]]:
    """``torch.export`` of a copy of the U-Net core in ``dtype``, batch 1..max_batch shared by all
    five inputs: the graph TensorRT's dynamo frontend compiles. Returns (program, example inputs,
    dynamic shapes), the last two as ``torch_tensorrt.save`` wants them."""
    core = UNetCore(copy.deepcopy(unet)).to(dtype).eval()
    example = shapes.example(2, dtype, device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = tuple({0: batch} for _ in example)  # one shared batch dimension for all five inputs
    with torch.no_grad():
        return torch.export.export(core, example, dynamic_shapes=dynamic, strict=False), example, dynamic


def _compile_tensorrt(unet: nn.Module, shapes: UNetShapes, cache_dir: Path, max_batch: int) -> tuple[Callable[..., Tensor], str]:
    """An fp16 TensorRT engine for batch 1..max_batch, from the on-disk cache when it has it."""
    import tensorrt
    import torch_tensorrt

    device = next(unet.parameters()).device
    key = cache_key(unet, (shapes, max_batch, "fp16"), f"{torch_tensorrt.__version__}/{tensorrt.__version__}", torch.cuda.get_device_name(device))
    path = cache_dir / f"{key}.ep"
    if path.exists():
        try:
            return torch_tensorrt.load(str(path)).module(), "hit"
        except Exception as e:  # a stale or truncated file: rebuild it
            log.warning("engine cache %s unreadable (%s); rebuilding", path, e)
    # fp16 by casting the module and the inputs (the dynamo path dropped enabled_precisions).
    program, example, dynamic = export_core(unet, shapes, max_batch, torch.half, device)
    with torch.no_grad():
        inputs = [
            torch_tensorrt.Input(min_shape=(1, *s), opt_shape=(2, *s), max_shape=(max_batch, *s), dtype=torch.half)
            for s in shapes.per_input()
        ]
        engine = torch_tensorrt.dynamo.compile(program, arg_inputs=inputs, min_block_size=1)
    status = "built"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch_tensorrt.save(engine, str(path), arg_inputs=list(example), dynamic_shapes=dynamic)
    except Exception as e:
        log.warning("could not cache the TensorRT engine at %s: %s", path, e)
        status = "not saved"
    return engine, status


# ---------------------------------------------------------------- the replacement forward


def _needs_eager(cross_attention_kwargs: dict | None) -> bool:
    """Keyword arguments the compiled core does not take, or a call that needs the Python attention processors."""
    kw = cross_attention_kwargs or {}
    return bool(set(kw) - {"cond", "sigma"}) or needs_python_attention(kw.get("cond"))


class FastForward:
    """Installed as a U-Net's ``forward``: the compiled core where it applies, else the original.

    Deliberately not an ``nn.Module``, so that assigning it adds nothing to the network's
    parameters or ``state_dict``.
    """

    def __init__(self, unet: nn.Module, fast: Callable[..., Tensor], backend: str, shapes: UNetShapes | None = None, max_batch: int = MAX_BATCH):
        self.eager = unet.forward  # the bound class method
        self.fast, self.backend, self.shapes, self.max_batch = fast, backend, shapes, max_batch

    def accepts(self, sample: Tensor) -> bool:
        """TensorRT engines have a fixed sample shape and a batch range; torch.compile takes anything."""
        if self.backend != "tensorrt":
            return True
        return tuple(sample.shape[1:]) == self.shapes.sample and 1 <= sample.shape[0] <= self.max_batch and not torch.is_grad_enabled()

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, class_labels: Tensor | None = None, *args,
                 encoder_attention_mask: Tensor | None = None, cross_attention_kwargs: dict | None = None, return_dict: bool = True, **kwargs):
        other = args or any(v is not None for v in kwargs.values()) or not torch.is_tensor(timestep)
        if other or class_labels is None or encoder_attention_mask is None or _needs_eager(cross_attention_kwargs) or not self.accepts(sample):
            return self.eager(sample, timestep, encoder_hidden_states, class_labels, *args, encoder_attention_mask=encoder_attention_mask,
                              cross_attention_kwargs=cross_attention_kwargs, return_dict=return_dict, **kwargs)
        inputs = (sample, timestep.reshape(-1).expand(sample.shape[0]), encoder_hidden_states, class_labels, encoder_attention_mask)
        if self.backend == "tensorrt":
            inputs = tuple(t.to(torch.half).contiguous() for t in inputs)
        out = self.fast(*inputs)
        out = (out[0] if isinstance(out, (tuple, list)) else out).to(sample.dtype)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)


def accelerate(net: nn.Module, backend: str, shapes: UNetShapes | None = None, cache_dir: Path | None = None, max_batch: int = MAX_BATCH) -> str:
    """Replaces one ``EDiffUNet``'s diffusers forward. ``backend``: "torch.compile" or "tensorrt"
    (which needs ``shapes``). Returns the engine-cache status ("" for torch.compile)."""
    restore(net)
    unet = net.unet
    if backend == "tensorrt":
        if shapes is None:
            raise ValueError("the tensorrt backend needs the U-Net's input shapes (unet_shapes)")
        fast, status = _compile_tensorrt(unet, shapes, cache_dir or default_cache_dir(), max_batch)
    elif backend == "torch.compile":
        fast, status = _compile_torch(unet), ""
    else:
        raise ValueError(f"backend must be 'tensorrt' or 'torch.compile'; got {backend!r}")
    unet.forward = FastForward(unet, fast, backend, shapes, max_batch)
    return status


def restore(net: nn.Module) -> None:
    """Puts back the eager forward of one ``EDiffUNet`` (no-op when it was not accelerated)."""
    if isinstance(net.unet.__dict__.get("forward"), FastForward):
        del net.unet.forward


def _networks(pipe) -> Iterator[tuple[str, nn.Module, int]]:
    """("stage/expert", EDiffUNet, resolution) for every network of the cascade."""
    for stage, spec, net in pipe.networks():
        yield f"{stage.name}/{spec.name}", net, stage.resolution


def restore_pipeline(pipe) -> None:
    """Undoes ``compile_pipeline``: every U-Net runs eager again."""
    for _, net, _ in _networks(pipe):
        restore(net)


def compile_pipeline(pipe, mode: str = "auto", cache_dir: str | Path | None = None, max_batch: int = MAX_BATCH) -> CompileReport:
    """Accelerates every U-Net of ``pipe`` in place and says what runs.

    Args:
        pipe: a loaded ``EDiffPipeline``.
        mode: ``auto`` (tensorrt → torch.compile → eager, first available), ``tensorrt`` or
            ``torch`` (that backend, or eager with the reason when it cannot run here), ``none``.
        cache_dir: where TensorRT engines are kept (None: ``default_cache_dir()``).
        max_batch: largest U-Net batch TensorRT engines accept (larger calls run eager).
    """
    if mode not in MODES:
        raise ValueError(f"compile mode must be one of {', '.join(MODES)}; got {mode!r}")
    restore_pipeline(pipe)
    unavailable: dict[str, str] = {}
    if mode in ("auto", "tensorrt") and (why := tensorrt_unavailable(pipe.device)):
        unavailable["tensorrt"] = why
    if mode in ("auto", "torch") and (why := torch_compile_unavailable(pipe.device)):
        unavailable["torch.compile"] = why
    wanted = {"auto": ["tensorrt", "torch.compile"], "tensorrt": ["tensorrt"], "torch": ["torch.compile"], "none": []}[mode]
    report = CompileReport(mode, "eager", "", unavailable)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    t0 = time.perf_counter()
    for backend in [b for b in wanted if b not in unavailable]:
        try:
            for name, net, res in _networks(pipe):
                shapes = unet_shapes(net, res, pipe.encoders.clip_text.max_length, pipe.encoders.t5.max_length)
                status = accelerate(net, backend, shapes, cache, max_batch)
                report.networks.append(name)
                if status:
                    report.cache[name] = status
            report.backend = backend
            break
        except Exception as e:  # a compiler failure must not take the model down: next in line
            restore_pipeline(pipe)
            log.exception("%s failed", backend)
            unavailable[backend] = f"failed: {type(e).__name__}: {e}"
            report.networks, report.cache = [], {}
    report.seconds = round(time.perf_counter() - t0, 2)

    skipped = "; ".join(f"{b} unavailable ({why})" for b, why in report.unavailable.items())
    if report.backend == "tensorrt":
        hits = sum(v == "hit" for v in report.cache.values())
        report.reason = f"tensorrt: fp16 engines for batch 1-{max_batch} on {torch.cuda.get_device_name()}, {hits}/{len(report.cache)} from the cache in {cache}"
    elif report.backend == "torch.compile":
        report.reason = f"torch.compile (inductor, {torch.device(pipe.device).type}): graphs compile on first use, one per batch size"
    elif mode == "none":
        report.reason = "eager: no compilation asked for (--compile none)"
    else:
        report.reason = "eager"
    if skipped:
        report.reason += ("; " if report.backend != "eager" or mode == "none" else ": ") + skipped
    fell_back = mode in ("tensorrt", "torch") and report.backend == "eager"
    if fell_back:
        report.reason += f"; --compile {mode} falls back to eager here (--compile auto takes the best backend available)"
    (log.warning if fell_back else log.info)("--compile %s → %s", mode, report.reason)
    return report

