"""``train --config run.yaml`` (or ``.toml``) and the record every run folder keeps.

A config file holds what a command line holds: its keys are the ``train`` flags with ``_`` for
``-`` (``preset``, ``stage``, ``out``, ``data``, ``t5``, ``clip``, ``embeddings``, ``base_steps``,
``batch_size``, ``lr``, ``dropout`` as a mapping, ...) plus any ``TrainConfig`` field (``warmup``,
``ema_decay``, ``save_every``, ...). Flags given on the command line win over the file.

``OUT/_train/run.json`` records the resolved settings, the dataset spec and counts (skipped
samples included), the encoders and their fingerprint, the world size, the global batch and lr,
the device and the git commit; ``OUT/_train/config.yaml`` is the resolved config, which
``--config`` reads back to repeat the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path


def load_config_file(path: str | Path) -> dict:
    """The mapping in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file; errors name ``config``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"config: {path} must end in .yaml, .yml or .toml")
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser's error becomes one message naming the file
        raise ValueError(f"config: {path} does not parse ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ValueError(f"config: {path} must hold a mapping of settings; got {type(d).__name__}")
    return d


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has changes), or None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(preset: str, stage: str, cfg, settings: dict | None, data, encoders: dict, ranks, device: str) -> dict:
    """What ``_train/run.json`` says about a run (the dataset counts are filled in as it goes)."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "settings": settings or {"preset": preset, "stage": stage},
        "train_config": asdict(cfg),
        "data": {"spec": data.spec, "kind": data.kind},
        "encoders": encoders,
        "world_size": ranks.world,
        "global_batch": cfg.batch_size,
        "per_rank_batch": ranks.per_rank(cfg.batch_size),
        "lr": cfg.lr,
        "device": device,
        "git_commit": git_commit(),
    }


def write_run_record(out: Path, record: dict) -> None:
    import yaml

    folder = out / "_train"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(record, indent=1, default=str))
    settings = {k: v for k, v in record["settings"].items() if v is not None and k != "config"} | record["train_config"]
    (folder / "config.yaml").write_text("# resolved settings of this run; repeat it with: train --config this-file\n"
                                        + yaml.safe_dump(settings, sort_keys=False))
