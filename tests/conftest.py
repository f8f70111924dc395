import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

# Tiny models: one thread avoids oversubscription (and OpenMP spin-waits) on small CPUs.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A complete random model folder in the real formats (T5 HF layout, open_clip, diffusers)."""
    from ediff_core.tools.tiny import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model):
    from ediff_core.pipeline import EDiffPipeline

    return EDiffPipeline.from_pretrained(tiny_model)


@pytest.fixture
def encoders_run_at(tiny_model):
    """Makes run folders holding the tiny model's t5/ and clip/, as `train --stage base` expects."""
    import shutil

    def make(run_dir):
        for name in ("t5", "clip"):
            shutil.copytree(tiny_model / name, run_dir / name)
        return run_dir

    return make


@pytest.fixture
def encoders_run(encoders_run_at, tmp_path):
    return encoders_run_at(tmp_path / "run")
