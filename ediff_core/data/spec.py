"""``train --data SPEC``: which dataset a run reads, and the rank- and worker-sharded streams over it.

SPEC is ``shapes`` (Shapes World, the default), a folder in the Hugging Face ``imagefolder``
layout, or WebDataset shards (a ``.tar`` path or brace pattern); ``imagefolder:PATH`` and
``webdataset:PATTERN`` say so explicitly.

Finite folders are read in one global order (a permutation per epoch, from the seed): global
batch ``s`` is positions ``s·G … s·G + G − 1`` and rank ``r`` of ``W`` takes its ``G/W`` rows of
it, so ranks see disjoint samples and together the batch one process would see (and a resume
at step ``s`` on any number of ranks continues at the same place). Shards are split between
readers (rank × data worker) and streamed through a shuffle buffer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .imagefolder import Record, read_imagefolder
from .shards import decode_entry, expand_shards
from .transforms import BadSample, decode_image, training_sample

KINDS = ("shapes", "imagefolder", "webdataset")


@dataclass(frozen=True)
class DataSpec:
    """What ``--data``, ``--min-side`` and ``--shuffle-buffer`` say."""

    spec: str = "shapes"
    min_side: int = 0  # images with a shorter side are skipped; 0: the SR resolution (no upscaled training images)
    shuffle_buffer: int = 1000  # WebDataset: samples held in the shuffle buffer per reader

    @property
    def kind(self) -> str:
        s = self.spec
        if s == "shapes":
            return "shapes"
        for k in KINDS[1:]:
            if s.startswith(k + ":"):
                return k
        return "webdataset" if ".tar" in s else "imagefolder"

    @property
    def location(self) -> str:
        k = self.kind
        return self.spec[len(k) + 1 :] if self.spec.startswith(k + ":") else self.spec


@dataclass
class Skips:
    """Bad samples met so far: counted once per sample id, the first few kept with their reason."""

    keep: int = 10
    seen: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, reason: str) -> None:
        self.seen.setdefault(key, reason)

    def report(self) -> dict:
        return {"count": len(self.seen), "first": [{"key": k, "reason": r} for k, r in list(self.seen.items())[: self.keep]]}


class Source:
    """An opened dataset: validated up front, so a bad ``--data`` fails before anything is written."""

    def __init__(self, data: DataSpec):
        self.data = data
        self.kind = data.kind
        self.records: list[Record] = []
        self.urls: list[str] = []
        self.skips = Skips()
        if data.min_side < 0 or data.shuffle_buffer < 1:
            raise ValueError(f"min_side must be >= 0 and shuffle_buffer >= 1; got {data.min_side}, {data.shuffle_buffer}")
        if self.kind == "imagefolder":
            self.records, skipped = read_imagefolder(Path(data.location))
            for b in skipped:
                self.skips.add(b.key, b.reason)
        elif self.kind == "webdataset":
            self.urls = expand_shards(data.location)

    def describe(self) -> dict:
        """The dataset spec and counts, as run records store them."""
        d = {"spec": self.data.spec, "kind": self.kind, "min_side": self.data.min_side}
        if self.kind == "imagefolder":
            d["samples"] = len(self.records)
        if self.kind == "webdataset":
            d |= {"shards": len(self.urls), "shuffle_buffer": self.data.shuffle_buffer}
        return d | {"skipped": self.skips.report()}

    def stream(self, cfg, seed: int, start_step: int, rank: int = 0, world: int = 1) -> IterableDataset:
        """Samples for ``rank`` of ``world`` from global step ``start_step`` on (endless)."""
        min_side = self.data.min_side or cfg.sr_resolution
        if self.kind == "imagefolder":
            return RecordStream(self.records, cfg.batch_size, cfg.base_resolution, cfg.sr_resolution, min_side, seed, start_step, rank, world)
        if self.kind == "webdataset":
            return ShardStream(self.urls, self.data.location, cfg.base_resolution, cfg.sr_resolution, min_side, self.data.shuffle_buffer,
                               seed * 100003 + start_step, rank, world)
        raise ValueError("Shapes World streams through training.ShapesStream")

    def in_order(self, cfg) -> Iterator[tuple[str, list[str], torch.Tensor] | BadSample]:
        """Every sample once, in storage order: (id, captions, SR-resolution image) or the ``BadSample``."""
        min_side = self.data.min_side or cfg.sr_resolution
        if self.kind == "imagefolder":
            entries = ((r.key, r.path, list(r.captions)) for r in self.records)
        elif self.kind == "webdataset":
            entries = _shard_entries(iter({"url": u} for u in self.urls), self.skips)
        else:
            raise ValueError("data: shapes is procedural and endless; write it to files first with "
                             "`python -m ediff_core export-data --out DIR --n N` and use --data DIR")
        for entry in entries:
            if isinstance(entry, BadSample):
                yield entry
                continue
            key, image, caps = entry
            try:
                img = decode_image(image, key, min_side)
            except BadSample as b:
                yield b
                continue
            yield key, caps, training_sample(img, caps[0], key, cfg.base_resolution, cfg.sr_resolution, random.Random(0))["image"]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class RecordStream(IterableDataset):
    """An imagefolder's samples in the global per-epoch order, this rank's rows of each global
    batch, this data worker's batches (a DataLoader takes batches from its workers in turn)."""

    def __init__(self, records: list[Record], batch_size: int, base: int, sr: int, min_side: int, seed: int, start_step: int, rank: int, world: int):
        self.records, self.G, self.base, self.sr, self.min_side = records, batch_size, base, sr, min_side
        self.seed, self.start, self.rank, self.world = seed, start_step, rank, world

    def positions(self) -> Iterator[int]:
        wid, nw = _worker()
        B = self.G // self.world
        b = wid
        while True:
            first = (self.start + b) * self.G + self.rank * B
            yield from range(first, first + B)
            b += nw

    def __iter__(self) -> Iterator[dict]:
        N = len(self.records)
        epoch, perm = -1, None
        bad: set[str] = set()
        pending: list[tuple[str, str]] = []
        for p in self.positions():
            if p // N != epoch:
                epoch = p // N
                perm = np.random.default_rng([self.seed, epoch]).permutation(N)
            rec = self.records[perm[p % N]]
            rng = random.Random(self.seed * 1_000_003 + p)  # per position: the same draws on any number of ranks and workers
            try:
                img = decode_image(rec.path, rec.key, self.min_side)
            except BadSample as b:
                bad.add(b.key)
                pending.append((b.key, b.reason))
                if len(bad) == N:
                    raise ValueError(f"data: no usable sample in {rec.path.parent}: all {N} images failed (e.g. {b})") from None
                continue
            k = rng.randrange(len(rec.captions))
            sample = training_sample(img, rec.captions[k], rec.key, self.base, self.sr, rng)
            yield sample | {"caption_index": k, "skipped": pending}
            pending = []


def _shard_entries(urls: Iterator[dict], skips: Skips, seed: int | None = None, buffer: int = 0, read: list[int] | None = None):
    """(key, image bytes, captions) or ``BadSample`` for each sample of a stream of shard URLs;
    ``read[0]`` counts the samples read from the tars (before the shuffle buffer)."""
    import webdataset as wds

    def handler(e: Exception) -> bool:
        where = next((a for a in reversed(e.args) if isinstance(a, str) and a.endswith(".tar")), "shard")
        skips.add(where, f"unreadable tar entry ({type(e).__name__}: {str(e.args[0]) if e.args else ''}"[:120] + ")")
        return True

    def counted(samples):
        for s in samples:
            if read is not None:
                read[0] += 1
            yield s

    samples = counted(wds.tarfile_to_samples(handler=handler)(urls))
    if buffer > 1:
        samples = wds.shuffle(buffer, initial=min(buffer, 100), seed=seed)(samples)
    for s in samples:
        try:
            yield decode_entry(s)
        except BadSample as b:
            yield b


class ShardStream(IterableDataset):
    """WebDataset shards split across readers (rank × data worker), endlessly, reshuffled each epoch."""

    def __init__(self, urls: list[str], pattern: str, base: int, sr: int, min_side: int, buffer: int, seed: int, rank: int, world: int):
        self.urls, self.pattern, self.base, self.sr, self.min_side = urls, pattern, base, sr, min_side
        self.buffer, self.seed, self.rank, self.world = buffer, seed, rank, world

    def __iter__(self) -> Iterator[dict]:
        wid, nw = _worker()
        readers, reader = self.world * nw, self.rank * nw + wid
        if len(self.urls) < readers:
            raise ValueError(f"data: {len(self.urls)} shards cannot feed {readers} readers ({self.world} ranks x {nw} data workers); "
                             "write more shards (export-data --per-shard) or use fewer --data-workers")
        rng = random.Random(self.seed * 7919 + reader)
        skips = Skips(keep=10**9)
        read, first_epoch = [0], []

        def shard_urls() -> Iterator[dict]:
            epoch = 0
            while True:
                if epoch == 1:
                    first_epoch.append(read[0])
                    if read[0] == 0:
                        raise ValueError(f"data: the shards {self.pattern} hold no sample for reader {reader} ({len(skips.seen)} unreadable)")
                for u in random.Random(f"{self.seed}:{epoch}").sample(self.urls, len(self.urls))[reader::readers]:
                    yield {"url": u}
                epoch += 1

        reported, good, seen = 0, 0, 0
        for entry in _shard_entries(shard_urls(), skips, rng.randrange(2**31), self.buffer, read):
            seen += 1
            try:
                if isinstance(entry, BadSample):
                    raise entry
                key, image, caps = entry
                img = decode_image(image, key, self.min_side)
            except BadSample as b:
                skips.add(b.key, b.reason)
                if good == 0 and first_epoch and seen >= first_epoch[0]:
                    raise ValueError(f"data: no usable sample in the shards {self.pattern}: all {seen} read were bad (e.g. {b})") from None
                continue
            good += 1
            new = list(skips.seen.items())[reported:]
            reported += len(new)
            k = rng.randrange(len(caps))
            yield training_sample(img, caps[k], key, self.base, self.sr, rng) | {"caption_index": k, "skipped": new}


def collate(items: list[dict]) -> dict:
    """Stacks tensors; keeps captions, ids and caption indices as lists; gathers the skipped samples."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("image", "base", "degraded")}
    out |= {k: [it[k] for it in items] for k in ("caption", "key", "caption_index")}
    out["skipped"] = [s for it in items for s in it["skipped"]]
    return out


def open_data(data: DataSpec | str) -> Source:
    """Validates and opens ``--data``; errors name the ``data`` field."""
    data = DataSpec(data) if isinstance(data, str) else data
    if data.kind not in KINDS:
        raise ValueError(f"data must be shapes, an imagefolder path or WebDataset shards; got {data.spec!r}")
    return Source(data)
