"""eDiff-I: text-to-image diffusion with an ensemble of expert denoisers (arXiv 2211.01324).

The public names are importable from the package, loaded on first use (nothing heavy happens at
import time), e.g. ``from ediff_core import EDiffPipeline, GenerationRequest``. The folders are
the layers (docs/architecture.md): ``core/`` the contracts, ``features/`` §4's controls,
``pipeline.py`` the generation recipe, ``tools/`` the CLI, training, evaluation and benchmarks.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    "EDiffPipeline": "ediff_core.pipeline",
    "GenerationResult": "ediff_core.pipeline",
    "Progress": "ediff_core.pipeline",
    "GenerationRequest": "ediff_core.core.request",
    "RequestError": "ediff_core.core.request",
    "SAMPLERS": "ediff_core.core.samplers",
    "ENCODER_MODES": "ediff_core.core.conditioning",
    "Feature": "ediff_core.core.feature",
    "PaintSpec": "ediff_core.features.paint_with_words",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ediff_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
