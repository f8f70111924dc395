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

from torch.utils.data import DataLoader

from ..core.conditioning import Cond, drop_embeddings
from ..data.spec import Skips, Source, collate
from .distributed import Ranks
from .embed_cache import EmbeddingCache


@dataclass
class Feed:
    source: Source | None = None  # None: Shapes World
    cache: EmbeddingCache | None = None  # None: encode each batch's captions and images
    ranks: Ranks = field(default_factory=Ranks)
    rescue: Callable[[], str] = lambda: "no step was trained"  # the running job's save of its last completed step

    def file_batches(self, cfg, step: int) -> Iterator[dict]:
        """This rank's batches of the dataset on disk, from global step ``step`` on; bad samples are counted."""
        ds = self.source.stream(cfg, cfg.seed, step, self.ranks.rank, self.ranks.world)
        loader = DataLoader(ds, batch_size=self.ranks.per_rank(cfg.batch_size), num_workers=cfg.data_workers,
                            persistent_workers=cfg.data_workers > 0, collate_fn=collate)
        for batch in loader:
            for key, reason in batch.pop("skipped"):
                self.source.skips.add(key, reason)
            yield batch

    def conditioning(self, enc, batch: dict, cfg, gen) -> Cond:
        """The batch's embeddings (§4.2), then training-time dropout drawn for the global batch."""
        if self.cache is not None:
            cond = self.cache.lookup(batch["key"], batch["caption_index"], batch["image"].device)
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
