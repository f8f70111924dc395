"""eDiff-I: text-to-image diffusion with an ensemble of expert denoisers (arXiv 2211.01324).

Nothing heavy happens at import time; import the submodules you need, e.g.
``from ediff_core.pipeline import EDiffPipeline``.
"""

__version__ = "0.1.0"
