"""Load encoders by kind from a local folder or a Hugging Face Hub id.

A path that exists is a folder; a string of the form ``owner/name`` that is not a folder is a
Hub id, fetched (safetensors and config files only) with huggingface_hub, or read from its cache
when ``HF_HUB_OFFLINE=1``. Every failure names the path or id and the file that was expected.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

import torch

from ediff_core.encoders.base import TextEncoder

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
T5_HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "spiece.model"]
CLIP_HUB_FILES = ["open_clip_config.json", "open_clip_model.safetensors"]


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (read now, not at huggingface_hub's import time)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_folder(path_or_repo: str | Path, patterns: list[str]) -> Path:
    """A local folder for `path_or_repo`: itself if it is a folder, else a Hub snapshot.

    Raises:
        FileNotFoundError: not a folder, and not a Hub id that could be fetched (or, offline,
            found in the local cache); the message says which.
    """
    text = str(path_or_repo)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{text} is a file; expected a folder (or a Hugging Face Hub id)")
    if not _HUB_ID.match(text):
        raise FileNotFoundError(f"no folder at {text}")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        return Path(snapshot_download(text, allow_patterns=patterns, local_files_only=offline))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        if offline:
            reason = "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local Hub cache"
        else:
            reason = f"fetching it from the Hub failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        raise FileNotFoundError(f"'{text}' is not a local folder and could not be loaded as a Hugging Face "
                                f"Hub id: {reason}. Pass a local folder, or download it first.") from None


def check_t5_folder(folder: Path) -> None:
    """Check a Hugging Face T5 folder: config.json (a T5), safetensors weights, tokenizer files."""
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (expected a Hugging Face T5 folder: "
                                "config.json, model.safetensors, tokenizer.json or spiece.model)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{config} is not valid JSON: {e}") from None
    if model_type != "t5":
        raise ValueError(f"{config} describes model_type {model_type!r}; a T5 encoder needs 't5'")
    if not any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (folder / n).is_file()]
        extra = f" (found {pickled[0]}; pickled checkpoints are not loaded, convert it to safetensors)" if pickled else ""
        raise FileNotFoundError(f"{folder} has no model.safetensors{extra}")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        raise FileNotFoundError(f"{folder} has no tokenizer.json or spiece.model (the T5 tokenizer)")


def load_text_encoder(kind: Literal["t5", "clip"], path_or_repo: str | Path, device: str | torch.device = "cpu",
                      max_length: int | None = None) -> TextEncoder:
    """Load a frozen text encoder.

    Args:
        kind: "t5" (Hugging Face T5 folder, e.g. google/t5-v1_1-xxl or ediff-mini's t5/) or
            "clip" (open_clip folder, e.g. ViT-L/14 or ediff-mini's clip/).
        path_or_repo: local folder or Hub id.
        device: where the encoder runs.
        max_length: T5 only; token length L (None: see `T5TextEncoder`). CLIP is always 77.
    """
    if kind == "t5":
        from ediff_core.encoders.t5 import T5TextEncoder

        folder = resolve_folder(path_or_repo, T5_HUB_FILES)
        check_t5_folder(folder)
        return T5TextEncoder(folder, device=device, max_length=max_length)
    if kind == "clip":
        if max_length not in (None, 77):
            raise ValueError(f"CLIP's text length is fixed by the model (77); got max_length={max_length}")
        return load_clip(path_or_repo, device).text
    raise ValueError(f"kind must be 't5' or 'clip'; got {kind!r}")


def load_clip(path_or_repo: str | Path, device: str | torch.device = "cpu"):
    """Load an open_clip model (folder with open_clip_config.json + open_clip_model.safetensors,
    or a Hub id such as timm/vit_large_patch14_clip_224.openai) as `CLIPEncoders` (.text, .image)."""
    from ediff_core.encoders.clip import CLIPEncoders

    return CLIPEncoders.from_folder(resolve_folder(path_or_repo, CLIP_HUB_FILES), device)

