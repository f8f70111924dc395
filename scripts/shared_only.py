"""A model folder whose base stage is one network for every σ: the shared model before it branched
into experts (§4.1), with the encoders and super-resolution stage of another folder.

Every eval suite then measures the shared model itself, so two base networks (say, a run's shared
model against the shipped one's) are compared without the expert fine-tunes in between. The parts
are linked, not copied. (A training run's folder before its experts stage already indexes its shared
model this way, `training.write_model_index`; this is for a shared model kept elsewhere, such as
`checkpoints/ediff-mini-train/base/shared`.)

Usage: .venv/bin/python scripts/shared_only.py MODEL_DIR SHARED_DIR OUT_DIR
  e.g. scripts/shared_only.py checkpoints/ediff-mini checkpoints/ediff-mini-train/base/shared runs/shared7
       .venv/bin/python -m ediff_core eval --model runs/shared7 --suite paint --n 16
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.core.model_folder import ExpertEntry, read_index, write_index  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="model folder whose encoders and super-resolution stages are used")
    p.add_argument("shared", type=Path, help="folder of the one base network (config.json + safetensors)")
    p.add_argument("out", type=Path)
    a = p.parse_args()
    if not (a.shared / "config.json").exists():
        p.error(f"shared: {a.shared} has no config.json; give an exported U-Net folder")
    index = read_index(a.model)
    a.out.mkdir(parents=True, exist_ok=True)
    links = {e.path: a.model / e.path for s in index.super_resolution for e in s.experts}
    links |= {name: a.model / path for name, path in index.encoders.items()} | {"base/shared": a.shared}
    for rel, target in links.items():
        link = a.out / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    index.base.experts = [ExpertEntry("shared", "base/shared", 0.0, math.inf)]
    write_index(a.out, index)
    print(json.dumps({"model": str(a.out), "base": str(a.shared.resolve())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
