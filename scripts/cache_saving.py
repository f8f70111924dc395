"""What the embedding cache saves per training step: the encoders' time on a batch (T5 + CLIP text
+ CLIP image) against reading the same batch's rows from the cache, interleaved so that a shared
CPU's load hits both alike.

    .venv/bin/python scripts/cache_saving.py runs/toy/data runs/toy/cache [--batches 20] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.data.spec import collate, open_data  # noqa: E402
from ediff_core.core.embed import load_encoder_set  # noqa: E402
from ediff_core.tools.embed_cache import EmbeddingCache  # noqa: E402
from ediff_core.tools.training import PRESETS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("cache")
    p.add_argument("--t5", default="checkpoints/ediff-mini/t5")
    p.add_argument("--clip", default="checkpoints/ediff-mini/clip")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(2)
    enc = load_encoder_set(args.t5, args.clip)
    cache = EmbeddingCache(args.cache)
    stream = iter(open_data(args.data).stream(PRESETS["mini"], seed=0, start_step=0))
    fly, cached = [], []
    for _ in range(args.batches):
        batch = collate([next(stream) for _ in range(args.batch_size)])
        t = time.perf_counter()
        enc.encode(batch["caption"], (batch["image"] + 1) / 2)
        fly.append(time.perf_counter() - t)
        t = time.perf_counter()
        cache.lookup(batch["key"], batch["caption_index"])
        cached.append(time.perf_counter() - t)
    f, c = statistics.median(fly[2:]), statistics.median(cached[2:])
    print(f"batch {args.batch_size}: encoders {f * 1000:.1f} ms, cache {c * 1000:.1f} ms per batch (medians of {args.batches - 2}); saving {(f - c) * 1000:.1f} ms per step")


if __name__ == "__main__":
    main()
