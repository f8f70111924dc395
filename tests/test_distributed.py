"""Data-parallel training on this CPU through the real torchrun (gloo, 2 ranks, tiny preset):
the same weights as one process with the same global batch and seed; disjoint samples per rank;
a 2-rank checkpoint resumes on 1 rank; a rank that dies ends the job with a clear error and a
resumable checkpoint, not a hang."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ediff_core.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "folder"
    assert main(["export-data", "--out", str(out), "--n", "20"]) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ediff_core", "train", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _state(run_dir):
    return load_file(str(run_dir / "_train" / "base" / "shared" / "state.safetensors"))


def _losses(run_dir):
    return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(open(run_dir / "_train" / "base" / "shared" / "loss.csv"))]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4, msg=k)


def test_each_rank_reads_disjoint_rows_whose_union_is_the_global_batch(dataset):
    from ediff_core.data.spec import collate, open_data
    from ediff_core.tools.training import PRESETS

    cfg = PRESETS["tiny"]  # global batch 4
    source = open_data(str(dataset))

    def keys(rank, world, n):
        it = iter(source.stream(cfg, 0, 0, rank, world))
        B = cfg.batch_size // world
        return [collate([next(it) for _ in range(B)])["key"] for _ in range(n)]

    single, r0, r1 = keys(0, 1, 10), keys(0, 2, 10), keys(1, 2, 10)
    for s, a, b in zip(single, r0, r1):
        assert not set(a) & set(b) and a + b == s
    assert len({k for batch in single[:5] for k in batch}) == 20  # 5 global batches = one epoch of 20 samples


def test_torchrun_two_ranks_equal_one_process_and_resume_on_one_rank(dataset, encoders_run_at, tmp_path):
    one, two = encoders_run_at(tmp_path / "one"), encoders_run_at(tmp_path / "two")
    args = ["--preset", "tiny", "--stage", "base", "--data", str(dataset), "--threads", "1", "--seed", "5", "--batch-size", "4"]
    proc = _torchrun([*args, "--out", str(two), "--base-steps", "3", "--ddp-timeout", "120"])
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
    assert "2 ranks: global batch 4 (2 per rank), lr 0.0003 (not rescaled)" in log
    assert main(["train", *args, "--out", str(one), "--base-steps", "3"]) == 0
    _assert_same_weights(_state(one), _state(two))
    assert [s for s, _ in _losses(two)] == [1, 2, 3]
    for (_, a), (_, b) in zip(_losses(one), _losses(two)):
        assert abs(a - b) < 1e-4  # the logged loss is the global batch's
    import json

    run = json.loads((two / "_train" / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 4 and run["per_rank_batch"] == 2
    # The 2-rank checkpoint resumes on 1 rank and lands where 5 single-process steps land.
    assert main(["train", *args, "--out", str(two), "--base-steps", "5", "--resume"]) == 0
    assert main(["train", *args, "--out", str(one), "--base-steps", "5", "--resume"]) == 0
    _assert_same_weights(_state(one), _state(two))
    assert [s for s, _ in _losses(two)] == [1, 2, 3, 4, 5]


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = dict(e.split("=", 1) for e in (Path("/proc") / str(pid) / "environ").read_bytes().decode().split("\0") if "=" in e)
    except OSError:
        return None
    return int(env["RANK"]) if "RANK" in env else None


def test_a_dying_rank_ends_the_job_with_a_clear_error_and_a_resumable_checkpoint(dataset, encoders_run):
    run_dir = encoders_run
    args = ["--preset", "tiny", "--stage", "base", "--data", str(dataset), "--threads", "1", "--out", str(run_dir)]
    proc = _torchrun([*args, "--base-steps", "100000", "--save-every", "1000", "--ddp-timeout", "60"])
    loss_csv = run_dir / "_train" / "base" / "shared" / "loss.csv"
    deadline = time.time() + 180
    while time.time() < deadline and not (loss_csv.exists() and len(loss_csv.read_text().splitlines()) > 3):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    rank1 = [p for p in _children(proc.pid) if _rank_of(p) == 1]
    assert rank1, "rank 1 not found"
    os.kill(rank1[0], signal.SIGKILL)
    t0 = time.time()
    log, _ = proc.communicate(timeout=120)  # not a hang
    assert proc.returncode != 0 and time.time() - t0 < 100
    assert "rank 0 of 2: the data-parallel job failed" in log and "continue with --resume, on any number of ranks" in log, log[-3000:]
    saved = int(log.split("the last checkpoint is step ")[1].split()[0])
    assert saved >= 3  # no periodic save (every 1000) came yet: rank 0 saved its last completed step on the failure
    logs = []
    from ediff_core.tools.training import run

    run("tiny", "base", run_dir, resume=True, data=str(dataset), overrides={"base_steps": saved + 1, "threads": 1}, log=logs.append)
    assert any(f"resumed at step {saved}" in m for m in logs)
    assert [s for s, _ in _losses(run_dir)][-1] == saved + 1
