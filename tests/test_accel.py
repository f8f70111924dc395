"""Acceleration (``ediff_core.tools.accel``) and the ``bench`` figures.

torch.compile is checked against eager on the tiny U-Net; TensorRT, which needs CUDA and
torch_tensorrt (requirements-cuda.txt), is checked behind the ``gpu`` marker and, everywhere
else, for its fallback.
"""

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from ediff_core.tools import accel
from ediff_core.core.conditioning import Cond
from ediff_core.core.networks import build_unet, denoiser
from ediff_core.core.request import GenerationRequest
from ediff_core.core.samplers import nfe

DIMS = {"clip_dim": 8, "clip_pooled_dim": 8, "t5_dim": 8, "image_dim": 8}
T5_LEN = 6


def _cond(B: int, seed: int = 0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    return Cond(
        clip_tokens=torch.randn(B, 77, 8, generator=g),
        clip_mask=torch.arange(77).expand(B, -1) < 5,
        clip_pooled=torch.randn(B, 8, generator=g),
        t5_tokens=torch.randn(B, T5_LEN, 8, generator=g),
        t5_mask=torch.ones(B, T5_LEN, dtype=torch.bool),
        image_embed=torch.zeros(B, 8),
        keep=torch.tensor([[True, True, False]]).expand(B, -1).clone(),
    )


def _tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    return build_unet("tiny", 16, DIMS).eval().requires_grad_(False)


def test_torch_compile_matches_eager():
    why = accel.torch_compile_unavailable("cpu")
    if why:
        pytest.skip(f"torch.compile cannot run here: {why}")
    net = _tiny_net()
    D = denoiser(net)
    x, sigma, cond = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 20.0]), _cond(2)
    keys = list(net.state_dict())
    with torch.inference_mode():
        ref = D(x, sigma, cond)
        accel.accelerate(net, "torch.compile")
        out = D(x, sigma, cond)
    assert isinstance(net.unet.forward, accel.FastForward)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert list(net.state_dict()) == keys  # the compiled core is not registered as a submodule
    accel.restore(net)
    assert "forward" not in net.unet.__dict__


def test_feature_calls_run_eager():
    """Paint-with-words maps and attention-recording hooks bypass the compiled core."""
    from dataclasses import replace

    from ediff_core.core.attention import attention_hook

    net = _tiny_net()
    ff = accel.FastForward(net.unet, lambda *inputs: torch.zeros_like(inputs[0]), "torch.compile")
    eager = ff.eager
    path = []
    ff.fast = lambda *inputs: path.append("fast") or torch.zeros_like(inputs[0])
    ff.eager = lambda *a, **kw: path.append("eager") or eager(*a, **kw)
    net.unet.forward = ff
    D = denoiser(net)
    x, sigma, cond = torch.randn(1, 3, 16, 16), torch.tensor([1.0]), _cond(1)
    with torch.inference_mode():
        D(x, sigma, cond)
        D(x, sigma, replace(cond, token_maps=torch.zeros(1, 85, 4, 4), pww_weight=torch.ones(1)))
        with attention_hook(lambda probs, sigma: None):
            D(x, sigma, cond)
    assert path == ["fast", "eager", "eager"]
    accel.restore(net)


def test_tensorrt_falls_back_here_and_still_generates(tiny_pipe, caplog):
    if accel.tensorrt_unavailable(tiny_pipe.device) is None:
        pytest.skip("TensorRT is available here; see test_tensorrt_engine_matches_eager")
    with caplog.at_level(logging.WARNING, logger="ediff_core.tools.accel"):
        report = accel.compile_pipeline(tiny_pipe, "tensorrt")
    assert report.backend == str(report) == "eager"
    assert "tensorrt" in report.unavailable and report.unavailable["tensorrt"] in report.reason
    assert "falls back to eager" in report.reason and report.networks == []
    assert any("tensorrt" in r.getMessage() for r in caplog.records)
    result = tiny_pipe(GenerationRequest(prompt="a red circle", seed=3, steps=2, sr_steps=1))
    assert result.images[0].size == (32, 32)


def test_modes_report_and_restore(tiny_pipe):
    with pytest.raises(ValueError, match="compile mode must be one of"):
        accel.compile_pipeline(tiny_pipe, "fast")
    report = accel.compile_pipeline(tiny_pipe, "none")
    assert report.backend == "eager" and "--compile none" in report.reason
    if accel.torch_compile_unavailable(tiny_pipe.device) is None:
        report = accel.compile_pipeline(tiny_pipe, "auto")  # graphs compile lazily: cheap until called
        names = [f"{s.name}/{e.name}" for s in tiny_pipe.stages for e in s.ensemble.specs]
        assert report.backend == ("tensorrt" if not accel.tensorrt_unavailable(tiny_pipe.device) else "torch.compile")
        assert report.networks == names
        accel.restore_pipeline(tiny_pipe)
    assert all("forward" not in net.unet.__dict__ for _, _, net in tiny_pipe.networks())


def test_compiler_failure_runs_eager(tiny_pipe, monkeypatch):
    def broken(unet):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(accel, "_compile_torch", broken)
    monkeypatch.setattr(accel, "torch_compile_unavailable", lambda device: None)
    report = accel.compile_pipeline(tiny_pipe, "torch")
    assert report.backend == "eager" and report.networks == []
    assert "inductor exploded" in report.unavailable["torch.compile"] and "falls back to eager" in report.reason
    assert all("forward" not in net.unet.__dict__ for _, _, net in tiny_pipe.networks())


def test_cache_key_tracks_weights_shapes_and_versions():
    net = _tiny_net()
    shapes = accel.unet_shapes(net, 16, 77, T5_LEN)
    assert shapes.per_input() == [(3, 16, 16), (), (85, 32), (16,), (85,)]
    key = accel.cache_key(net.unet, shapes, "10.9", "NVIDIA H100")
    assert key == accel.cache_key(net.unet, shapes, "10.9", "NVIDIA H100")
    p = next(net.unet.parameters())
    with torch.no_grad():
        p.view(-1)[0] += 1e-3
    assert accel.cache_key(net.unet, shapes, "10.9", "NVIDIA H100") != key
    with torch.no_grad():
        p.view(-1)[0] -= 1e-3
    assert accel.cache_key(net.unet, shapes, "10.9", "NVIDIA H100") == key
    assert accel.cache_key(net.unet, accel.unet_shapes(net, 32, 77, T5_LEN), "10.9", "NVIDIA H100") != key
    assert accel.cache_key(net.unet, shapes, "10.10", "NVIDIA H100") != key
    assert accel.cache_key(net.unet, shapes, "10.9", "NVIDIA A100") != key


def test_tensorrt_export_takes_every_batch_size_here():
    """The CPU-checkable half of the TensorRT path: the exported graph its dynamo frontend compiles
    (one symbolic batch dimension, 1..max_batch) computes the eager U-Net at batch sizes other than
    the example's, with padded keys and real noise levels; fp16 traces too."""
    net = _tiny_net()
    shapes = accel.unet_shapes(net, 16, 77, T5_LEN)
    program, example, _ = accel.export_core(net.unet, shapes, 8, torch.float32, "cpu")
    assert example[0].shape[0] == 2
    exported = program.module()
    for B in (1, 3, 8):
        x, _, tokens, glob, _ = shapes.example(B, torch.float32, "cpu")
        c_noise = torch.linspace(-2, 1, B)
        mask = (torch.arange(tokens.shape[1]) < 9).expand(B, -1).float()  # keys past 9 padded out
        args = (x, c_noise, tokens, glob, mask)
        with torch.no_grad():
            torch.testing.assert_close(exported(*args), accel.UNetCore(net.unet)(*args), atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match=r"size\(\)\[0\] <= 8"):  # outside the engine's batch range
        exported(*shapes.example(9, torch.float32, "cpu"))
    half, _, _ = accel.export_core(net.unet, shapes, 8, torch.half, "cpu")
    inputs = [n.meta["val"] for n in half.graph.nodes if n.op == "placeholder" and n.name in half.graph_signature.user_inputs]
    assert len(inputs) == 5 and {t.dtype for t in inputs} == {torch.half}
    assert len({str(t.shape[0]) for t in inputs}) == 1 and not isinstance(inputs[0].shape[0], int)  # one symbolic batch


@pytest.mark.gpu
def test_tensorrt_engine_matches_eager(tiny_model, tmp_path):
    why = accel.tensorrt_unavailable("cuda")
    if why:
        pytest.skip(f"TensorRT cannot run here: {why}")
    from ediff_core.pipeline import EDiffPipeline

    pipe = EDiffPipeline.from_pretrained(tiny_model, device="cuda")
    stage, expert = pipe.base, pipe.base.ensemble.experts[0]
    cond = pipe.encoders.encode(["a red circle", "a blue square"], None, "cuda")
    x, sigma = torch.randn(2, 3, stage.resolution, stage.resolution, device="cuda"), torch.tensor([0.5, 5.0], device="cuda")
    with torch.inference_mode():
        ref = expert(x, sigma, cond)
        report = accel.compile_pipeline(pipe, "tensorrt", cache_dir=tmp_path)
        assert report.backend == "tensorrt" and set(report.cache.values()) <= {"built", "not saved"}
        out = expert(x, sigma, cond)
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)  # fp16 engine vs fp32 eager
    again = accel.compile_pipeline(pipe, "tensorrt", cache_dir=tmp_path)
    if "not saved" not in report.cache.values():
        assert set(again.cache.values()) == {"hit"}
    assert pipe(GenerationRequest(prompt="a red circle", steps=2, sr_steps=1)).images


def test_bench_quick_json(tiny_model, tiny_pipe, capsys):
    """Every INTERFACES field, with types and the ranges that are not timings."""
    from ediff_core.tools.cli import main

    assert main(["bench", "--quick", "--json", "--compile", "tensorrt", "--model", str(tiny_model), "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("unet_ms", "nfe", "latency_s", "sampler_overhead", "ensemble_vs_single", "batch_speedup", "peak_rss_mb", "backend"):
        assert k in r, k
    experts = [f"{s.name}/{e.name}" for s in tiny_pipe.stages for e in s.ensemble.specs]
    assert list(r["unet_ms"]) == experts and list(r["unet_ms_eager"]) == experts
    s = r["settings"]
    assert r["nfe"] == nfe(s["sampler"], s["steps"]) + nfe(s["sampler"], s["sr_steps"]) == sum(r["nfe_by_stage"].values())
    assert r["unet_calls_by_stage"] == r["nfe_by_stage"]  # one expert call per denoiser evaluation
    timings = [*r["unet_ms"].values(), r["latency_s"], r["sampler_overhead"], r["ensemble_vs_single"], r["batch_speedup"], r["peak_matmul_gflops"]]
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in timings)
    assert r["peak_rss_mb"] > 0
    assert r["backend"] == "eager" and "tensorrt" in r["unavailable"] and r["unavailable"]["tensorrt"] in r["backend_reason"]
    assert set(r["time_split_s"]) == {"encoders", *(st.name for st in tiny_pipe.stages), "png"}
    base = [r["unet_gflop"][n] for n in experts if n.startswith("base/")]
    assert base[0] > 0 and len(set(base)) == 1  # same architecture, same FLOPs
    assert set(r["unet_ms_by_threads"]) >= {"1"}


_MMAPPED_BYTES = r"""
import ctypes, json, sys, torch
from ediff_core.tools import accel

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
what = accel.tune_cpu_allocator()
before = libc.mallinfo2().hblkhd
x = torch.empty(4 << 20, dtype=torch.uint8)  # one 4 MiB activation-sized buffer
print(json.dumps({"what": what, "again": accel.tune_cpu_allocator(), "mmapped": libc.mallinfo2().hblkhd - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.parametrize("opt_out", [False, True])
def test_cpu_allocator_keeps_large_buffers_in_the_heap(opt_out):
    """After tuning, a 4 MiB tensor comes from the heap, not from its own mmap; opting out keeps glibc's default."""
    env = {**os.environ, "EDIFF_MALLOC_TUNING": "0" if opt_out else "1"}
    out = subprocess.run([sys.executable, "-c", _MMAPPED_BYTES], env=env, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["again"] == r["what"]
    if opt_out:
        assert r["what"].startswith("default (EDIFF_MALLOC_TUNING=0)")
        assert r["mmapped"] >= 4 << 20
    else:
        assert r["what"] == f"glibc mmap_threshold={32 << 20} trim_threshold={1 << 30}"
        assert r["mmapped"] == 0
