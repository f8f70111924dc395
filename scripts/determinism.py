"""Batched against solo on the shipped model: the figures of docs/serving.md "Determinism".

16 requests (4 prompts, guidance 1, 3 and 5) are admitted together, so the scheduler batches their
denoiser calls; each is then run alone, and the first four again. Prints the largest pixel
difference and the share of differing pixels as JSON.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/determinism.py   (about 1 min on a 2-core CPU)
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.pipeline import EDiffPipeline  # noqa: E402
from ediff_core.core.request import GenerationRequest  # noqa: E402
from server.model import Model  # noqa: E402

PROMPTS = ["a red circle and two blue stars on old paper", "a green heart", "two yellow squares", "a large purple triangle"]


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], np.int16)


def main() -> int:
    model = Model(EDiffPipeline.from_pretrained(None), max_queue=32, max_running=16)
    reqs = [GenerationRequest(PROMPTS[k % 4], seed=k, guidance=[1.0, 3.0, 5.0][k % 3]) for k in range(16)]
    batched = []
    for ticket in model.submit_many(reqs):
        *_, result = list(ticket)
        batched.append(pixels(result))
    solo = [pixels(model(r)) for r in reqs]
    again = [pixels(model(r)) for r in reqs[:4]]
    diffs = [np.abs(a - b) for a, b in zip(batched, solo)]
    print(json.dumps({
        "max_batch_requests": model.scheduler.stats.max_batch_requests,
        "max_diff": int(max(d.max() for d in diffs)),
        "share_differing": float(np.mean([(d > 0).mean() for d in diffs])),
        "worst_share": float(max((d > 0).mean() for d in diffs)),
        "solo_repeat_identical": all((a == b).all() for a, b in zip(again, solo[:4])),
    }))
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
