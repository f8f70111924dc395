"""``python -m ediff_core export-data``: Shapes World written in the dataset layouts ``train --data`` reads.

``imagefolder``: ``DIR/images/NNNNNN.png`` and ``DIR/metadata.jsonl`` whose ``text`` is the list
of the scene's three captions (short, medium, long). ``webdataset``: ``DIR/shapes-NNNNNN.tar``
shards of ``--per-shard`` samples, each ``KEY.png`` with ``KEY.json`` ``{"text": [...]}``; the
brace pattern to train on is printed and returned.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from .captions import captions
from .shapes_world import IMAGE_SIZE, SPLITS, render, sample_scene

FORMATS = ("imagefolder", "webdataset")


def export_shapes(out: Path, n: int, fmt: str = "imagefolder", size: int = IMAGE_SIZE, per_shard: int = 100, offset: int = 0) -> str:
    """Writes ``n`` train-split scenes (ids ``offset`` on) and returns the ``--data`` spec for them."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if n < 1 or per_shard < 1 or size < 8:
        raise ValueError(f"n and per_shard must be positive and size at least 8; got n={n}, per_shard={per_shard}, size={size}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out: {out} exists and is not empty")
    lo = SPLITS["train"].start + offset

    def sample(i: int) -> tuple[str, bytes, list[str]]:
        scene = sample_scene(lo + i, "train")
        buf = io.BytesIO()
        render(scene, size).save(buf, "PNG")
        return f"{offset + i:06d}", buf.getvalue(), list(captions(scene).values())

    out.mkdir(parents=True, exist_ok=True)
    if fmt == "imagefolder":
        (out / "images").mkdir()
        with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for i in range(n):
                key, png, caps = sample(i)
                (out / "images" / f"{key}.png").write_bytes(png)
                meta.write(json.dumps({"file_name": f"images/{key}.png", "text": caps}) + "\n")
        return str(out)
    shards = (n + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(out / f"shapes-{s:06d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                key, png, caps = sample(i)
                for name, blob in ((f"{key}.png", png), (f"{key}.json", json.dumps({"text": caps}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(blob), 0
                    tar.addfile(info, io.BytesIO(blob))
    return str(out / (f"shapes-{{000000..{shards - 1:06d}}}.tar" if shards > 1 else "shapes-000000.tar"))
