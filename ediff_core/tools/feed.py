"""What a training job's steps read: this rank's batches and their conditioning.

The batches come from Shapes World (``training.ShapesStream``) or a dataset on disk
(``data.spec``); the conditioning from the frozen encoders run on the fly, or from an embedding
cache (``embed_cache``). Under data parallelism each rank holds its rows of the global batch,
and the random draws of a step (embedding dropout, σ, noise) are made for the whole global batch
and sliced, so that W ranks train exactly what one process would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, default_collate

from ..core.conditioning import Cond, drop_embeddings
from ..data.spec import Skips, Source, collate
from .distributed import Ranks
from .embed_cache import EmbeddingCache


class EncodingCollate:
    """A DataLoader ``collate_fn`` that also runs the frozen encoders (§4.2; fp32, no grad) on the
    batch it stacks, in the data worker: the encoders then run beside the U-Net's step in the main
    process instead of before it. The batch carries the result as ``"cond"``."""

    def __init__(self, enc, collate: Callable[[list], dict] = default_collate):
        self.enc, self.collate = enc, collate

    def __call__(self, samples: list) -> dict:
        batch = self.collate(samples)
        batch["cond"] = self.enc.encode(list(batch["caption"]), (batch["image"] + 1) / 2, "cpu")
        return batch


def encodes_in_workers(cfg, device: torch.device | str, cache: EmbeddingCache | None) -> bool:
    """Whether a job's data workers run the encoders: on the CPU, with workers and no cache
    (on CUDA the encoders stay on the GPU in the main process)."""
    return cfg.encode_in_workers and cfg.data_workers > 0 and cache is None and torch.device(device).type == "cpu"


@dataclass
class Feed:
    source: Source | None = None  # None: Shapes World
    cache: EmbeddingCache | None = None  # None: encode each batch's captions and images
    ranks: Ranks = field(default_factory=Ranks)
    rescue: Callable[[], str] = lambda: "no step was trained"  # the running job's save of its last completed step

    def file_batches(self, cfg, step: int, enc=None) -> Iterator[dict]:
        """This rank's batches of the dataset on disk, from global step ``step`` on; bad samples are counted.
        ``enc``: the encoders the data workers run on each batch (``EncodingCollate``), or None."""
        ds = self.source.stream(cfg, cfg.seed, step, self.ranks.rank, self.ranks.world)
        loader = DataLoader(ds, batch_size=self.ranks.per_rank(cfg.batch_size), num_workers=cfg.data_workers,
                            persistent_workers=cfg.data_workers > 0, collate_fn=collate if enc is None else EncodingCollate(enc, collate))
        for batch in loader:
            for key, reason in batch.pop("skipped"):
                self.source.skips.add(key, reason)
            yield batch

    def conditioning(self, enc, batch: dict, cfg, gen) -> Cond:
        """The batch's embeddings (§4.2), then training-time dropout drawn for the global batch."""
        if self.cache is not None:
            cond = self.cache.lookup(batch["key"], batch["caption_index"], batch["image"].device)
        elif "cond" in batch:  # encoded by the data worker (EncodingCollate)
            cond = batch["cond"].to(batch["image"].device)
        else:
            images01 = (batch["image"] + 1) / 2
            cond = enc.encode(list(batch["caption"]), images01, images01.device)  # on the batch's device
        return drop_embeddings(cond, cfg.dropout, gen, rows=self.ranks.rows(cfg.batch_size))

    def record(self) -> dict | None:
        """The dataset spec and counts with the skipped samples of every rank (a collective under DDP)."""
        if self.source is None:
            return None
        merged = Skips()
        for seen in self.ranks.gather(self.source.skips.seen):
            for k, r in seen.items():
                merged.add(k, r)
        return self.source.describe() | {"skipped": merged.report()}
