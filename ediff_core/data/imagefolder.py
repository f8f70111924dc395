"""The Hugging Face ``imagefolder`` layout: images plus ``metadata.jsonl``.

Each line is ``{"file_name": "images/0001.png", "text": "a caption"}``; ``text`` may be a list
of captions, one of which is drawn per step (eDiff-I mixes caption sources, §4.2). Lines whose
caption is missing or empty, or whose file does not exist, are skipped and counted here; images
that fail to decode are skipped later, when the stream reaches them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .transforms import BadSample, captions_of

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Record:
    key: str  # the sample id: file_name relative to the folder
    path: Path
    captions: tuple[str, ...]


def read_imagefolder(folder: Path) -> tuple[list[Record], list[BadSample]]:
    """The usable records of ``folder`` and the lines skipped. Raises ``ValueError`` naming the
    ``data`` field when the folder, its metadata or every one of its samples is missing."""
    if not folder.is_dir():
        raise ValueError(f"data: no folder at {folder} (an imagefolder needs images and {METADATA})")
    meta = folder / METADATA
    if not meta.is_file():
        raise ValueError(f"data: {folder} has no {METADATA} (one JSON line per image: "
                         '{"file_name": "a.png", "text": "a caption"}, text may be a list)')
    lines = meta.read_text(encoding="utf-8").splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"data: {meta} is empty; it needs one JSON line per image: "
                         '{"file_name": "a.png", "text": "a caption"}')
    records, skipped, seen = [], [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{METADATA}:{n}"
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
                raise BadSample(where, 'no "file_name"')
            key = item["file_name"]
            if key in seen:
                raise BadSample(key, f"listed twice ({where})")
            caps = captions_of(item.get("text"), key)
            path = folder / key
            if not path.is_file():
                raise BadSample(key, "image file missing")
        except json.JSONDecodeError as e:
            skipped.append(BadSample(where, f"not JSON ({e.msg})"))
            continue
        except BadSample as b:
            skipped.append(b)
            continue
        seen.add(key)
        records.append(Record(key, path, tuple(caps)))
    if not records:
        first = "; ".join(str(b) for b in skipped[:3])
        raise ValueError(f"data: {meta} lists no usable sample ({len(skipped)} skipped: {first})")
    return records, skipped
