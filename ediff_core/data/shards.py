"""WebDataset shards: ``.tar`` files holding ``KEY.jpg|png|webp`` with ``KEY.txt|json`` per sample.

A brace pattern such as ``data/{000000..000099}.tar`` names the shards. They are read through
the ``webdataset`` package, streamed (never indexed) and shuffled in a buffer; each reader (a
rank's data worker) reads its own shards.
"""

from __future__ import annotations

import json
from pathlib import Path

from .transforms import BadSample, captions_of

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
REMOTE = ("http://", "https://", "pipe:", "s3://", "gs://")


def expand_shards(pattern: str) -> list[str]:
    """The shard URLs of a brace pattern; local ones must exist. Raises ``ValueError`` naming ``data``."""
    from webdataset.shardlists import expand_urls

    urls = expand_urls(pattern)
    local = [u for u in urls if not u.startswith(REMOTE)]
    missing = [u for u in local if not Path(u).is_file()]
    if local and len(missing) == len(local):
        raise ValueError(f"data: the shard pattern {pattern} matches no file ({len(urls)} names such as {urls[0]}, none exists)")
    if missing:
        raise ValueError(f"data: {len(missing)} of the {len(urls)} shards of {pattern} do not exist, e.g. {missing[0]}")
    return urls


def decode_entry(sample: dict) -> tuple[str, bytes, list[str]]:
    """(key, image bytes, captions) of one WebDataset sample; ``BadSample`` when a part is missing."""
    key = sample.get("__key__", "?")
    image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if image is None:
        raise BadSample(key, f"no image ({'|'.join(IMAGE_EXTS)}) in the sample")
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadSample(key, "its .json is not JSON") from None
        value = meta.get("text", meta.get("caption")) if isinstance(meta, dict) else None
    elif "txt" in sample:
        value = sample["txt"].decode("utf-8", "replace")
    else:
        value = None
    return key, image, captions_of(value, key)
