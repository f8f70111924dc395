"""Data-parallel training on torchrun: one process per device, gradients all-reduced by DDP.

``torchrun --nproc_per_node N -m ediff_core train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in the environment; ``Ranks.from_env``
joins them into one process group (NCCL on CUDA, gloo on the CPU) with a timeout, so a rank
that hangs ends the job with an error instead of blocking it forever. ``--batch-size`` is the
*global* batch, split evenly over the ranks, and the learning rate is not rescaled: the same
run on 1, 2 or 8 ranks follows the same optimisation, and a checkpoint resumes on any number.
Only rank 0 writes (checkpoints, EMA exports, logs).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterator

import torch
from torch import nn


class RankFailure(RuntimeError):
    """A data-parallel job lost a rank (or was stopped): says which, and where its last checkpoint is."""


class _Stopped(Exception):
    pass


@dataclass
class Ranks:
    """This process's place in a data-parallel job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _stop_pending: list = field(default_factory=list)  # signals noted by ``guard``

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str, timeout_s: float) -> "Ranks":
        """Joins torchrun's process group when ``WORLD_SIZE`` > 1; a single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not timeout_s > 0:
            raise ValueError(f"ddp_timeout must be a positive number of seconds; got {timeout_s!r}")
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
        return cls(rank, world, local)

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` on CUDA."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.active else device

    def per_rank(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise ValueError(f"batch_size is the global batch and must divide evenly over {self.world} ranks; got {global_batch}")
        return global_batch // self.world

    def rows(self, global_batch: int) -> tuple[int, int] | None:
        """(offset, global batch) of this rank's rows, for the random draws; None in one process."""
        return (self.rank * self.per_rank(global_batch), global_batch) if self.active else None

    def wrap(self, net: nn.Module) -> nn.Module:
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[self.local_rank] if next(net.parameters()).is_cuda else None)

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over the ranks (the global batch's loss, for logging)."""
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one (e.g. a time budget spent), so all stop together."""
        if not self.active:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (on every rank)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def stop_if_signalled(self) -> None:
        """Raises at a step boundary once torchrun has sent its stop signal (see ``guard``)."""
        if self._stop_pending:
            raise _Stopped(f"stopped by signal {signal.Signals(self._stop_pending[0]).name} (torchrun stops the others when a rank dies)")

    @contextmanager
    def guard(self, on_failure: Callable[[], str]) -> Iterator[None]:
        """Turns a lost peer, a collective timeout or torchrun's stop signal into ``RankFailure``.

        A SIGTERM is only noted, and acted on at the next step boundary (``stop_if_signalled``), so
        the state is never cut mid-update; a rank blocked in a collective gets gloo's error for a
        closed peer, or the process group's timeout. ``on_failure`` then runs on every rank (rank 0
        saves the last completed step there; under NCCL a watchdog may end the process first, and
        the last periodic checkpoint is the one to resume) and returns what to tell the user.
        One process: no change.
        """
        if not self.active:
            yield
            return
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._stop_pending.append(signum))
        try:
            yield
        except (_Stopped, RuntimeError) as e:  # gloo/NCCL errors are RuntimeErrors (DistError and its kind)
            if isinstance(e, RankFailure):
                raise
            # From here the process only saves, reports and exits: torchrun's stop signal must not cut that short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            saved = on_failure()
            cause = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise RankFailure(f"rank {self.rank} of {self.world}: the data-parallel job failed ({cause}); {saved}") from e
        signal.signal(signal.SIGTERM, previous)
