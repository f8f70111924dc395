"""``python -m ediff_core embed``: T5 and CLIP embeddings precomputed once, as the paper does.

A cache folder holds ``index.json`` and shards ``embeddings-00000.safetensors``, .... Each shard
stacks, for a block of samples, every caption's T5 tokens and mask, CLIP tokens, mask and pooled
feature, and each image's CLIP image embedding (of the SR-resolution centre crop training
conditions on). The index is keyed by sample id and names the encoders' fingerprint
(``embed.encoder_fingerprint``); ``train --embeddings`` reads rows from it instead of running the
encoders and refuses a cache whose fingerprint is not that of the run's encoders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..core.conditioning import Cond
from ..core.embed import EncoderSet

INDEX = "index.json"
FORMAT = "ediff-embeddings"
FIELDS = ("t5_tokens", "t5_mask", "clip_tokens", "clip_mask", "clip_pooled")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def build_cache(source, enc: EncoderSet, out: Path, base: int, sr: int, shard_samples: int = 1024, batch: int = 32, dtype: str = "fp32",
                log: Callable[[str], None] = print) -> dict:
    """Encodes every caption and image of ``source`` (a ``data.spec.Source``) into ``out``; returns the index.

    ``base``/``sr``: the resolutions training uses (the image embedding is of the ``sr`` crop).
    Bad samples are skipped and counted, as in training.
    """
    from types import SimpleNamespace

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out: {out} exists and is not empty; give a new folder for the cache")
    fingerprint = enc.fingerprint()
    samples: dict[str, list[int]] = {}
    shard, rows, images, n_shards = [], [], [], 0
    t = DTYPES[dtype]

    def flush() -> None:
        nonlocal shard, rows, images, n_shards
        if not shard:
            return
        tensors: dict[str, Tensor] = {}
        for i in range(0, len(rows), batch):
            c = enc.encode(rows[i : i + batch])
            for k in FIELDS:
                tensors.setdefault(k, []).append(getattr(c, k))
        for i in range(0, len(images), batch):
            tensors.setdefault("image_embed", []).append(enc.clip_image.encode_image(torch.stack(images[i : i + batch])).float())
        tensors = {k: torch.cat(v).to(t if v[0].is_floating_point() else v[0].dtype).contiguous() for k, v in tensors.items()}
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / f"embeddings-{n_shards:05d}.safetensors"), metadata={"fingerprint": fingerprint})
        n_shards += 1
        shard, rows, images = [], [], []

    from ..data.transforms import BadSample

    for entry in source.in_order(SimpleNamespace(base_resolution=base, sr_resolution=sr)):
        if isinstance(entry, BadSample):
            source.skips.add(entry.key, entry.reason)
            continue
        key, caps, image = entry
        if key in samples:
            raise ValueError(f"data: sample id {key!r} appears twice; the cache is keyed by sample id")
        samples[key] = [n_shards, len(images), len(rows), len(caps)]
        shard.append(key)
        rows += caps
        images.append((image + 1) / 2)
        if len(shard) >= shard_samples:
            flush()
    flush()
    if not samples:
        raise ValueError(f"data: no usable sample in {source.data.spec} ({source.skips.report()['count']} skipped)")
    index = {"format": FORMAT, "fingerprint": fingerprint, "encoders": {k: str(v) for k, v in enc.folders.items()}, "dims": enc.dims,
             "dtype": dtype, "resolutions": {"base": base, "sr": sr}, "data": source.describe(), "shards": n_shards, "samples": samples}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    log(f"embedded {len(samples)} samples ({sum(v[3] for v in samples.values())} captions) into {n_shards} shards in {out}; "
        f"{index['data']['skipped']['count']} skipped; encoders {fingerprint}")
    return index


class EmbeddingCache:
    """Reads ``Cond`` batches by sample id and caption index from a cache folder (memory-mapped)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise ValueError(f"embeddings: {self.folder} has no {INDEX} (make a cache with `python -m ediff_core embed --data SPEC --out CACHE`)")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"embeddings: {path} is not an embedding cache (format {self.index.get('format')!r})")
        self.samples: dict[str, list[int]] = self.index["samples"]
        self.fingerprint: str = self.index["fingerprint"]
        self.dims: dict[str, int] = self.index["dims"]
        self._files: dict[int, object] = {}

    def check(self, fingerprint: str, encoders: dict[str, str], base: int, sr: int) -> None:
        """Refuses a cache made with other encoder weights, or at other resolutions than the run's."""
        if fingerprint != self.fingerprint:
            raise ValueError(f"embeddings: {self.folder} was made with other encoder weights (fingerprint {self.fingerprint}: "
                             f"t5 {self.index['encoders'].get('t5')}, clip {self.index['encoders'].get('clip')}); this run's encoders "
                             f"(t5 {encoders.get('t5')}, clip {encoders.get('clip')}) have {fingerprint}. Re-run embed with them.")
        made = self.index["resolutions"]
        if made != {"base": base, "sr": sr}:
            raise ValueError(f"embeddings: {self.folder} holds image embeddings of {made['sr']}-px crops; this run trains at {sr} px (base {base})")

    def _shard(self, k: int):
        if k not in self._files:
            self._files[k] = safe_open(str(self.folder / f"embeddings-{k:05d}.safetensors"), framework="pt")
        return self._files[k]

    def lookup(self, keys: list[str], caption_index: list[int], device: torch.device | str = "cpu") -> Cond:
        """The conditioning of a batch: sample ``keys[i]``'s caption ``caption_index[i]`` and its image."""
        parts: dict[str, list[Tensor]] = {k: [] for k in (*FIELDS, "image_embed")}
        for key, c in zip(keys, caption_index):
            if key not in self.samples:
                raise ValueError(f"embeddings: sample {key!r} is not in {self.folder}; it was made from other data ({self.index['data']['spec']})")
            shard, image_row, first, n = self.samples[key]
            if not 0 <= c < n:
                raise ValueError(f"embeddings: sample {key!r} has {n} captions in {self.folder}; asked for caption {c}")
            f = self._shard(shard)
            for k in FIELDS:
                parts[k].append(f.get_slice(k)[first + c : first + c + 1])
            parts["image_embed"].append(f.get_slice("image_embed")[image_row : image_row + 1])
        t = {k: torch.cat(v) for k, v in parts.items()}
        float_ = {k: v.float() for k, v in t.items() if v.is_floating_point()}
        cond = Cond(clip_tokens=float_["clip_tokens"], clip_mask=t["clip_mask"].bool(), clip_pooled=float_["clip_pooled"],
                    t5_tokens=float_["t5_tokens"], t5_mask=t["t5_mask"].bool(), image_embed=float_["image_embed"],
                    keep=torch.ones(len(keys), 3, dtype=torch.bool))
        return cond.to(device)


class CachedEncoders:
    """Stands in for an ``EncoderSet`` when training from a cache: the widths, no weights in memory."""

    def __init__(self, cache: EmbeddingCache, names: dict[str, str] | None = None):
        self.cache = cache
        self.dims = dict(cache.dims)
        self.names = names or dict(cache.index["encoders"])  # the encoders' folders or Hub ids

    def fingerprint(self) -> str:
        return self.cache.fingerprint
