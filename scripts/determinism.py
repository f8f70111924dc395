"""16 requests batched together against each run alone on the shipped model: the figures of docs/serving.md "Determinism".

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/determinism.py   (about 1 min on a 2-core CPU)
"""
import json, numpy as np, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.pipeline import EDiffPipeline
from ediff_core.request import GenerationRequest
from server.model import Model
pipe = EDiffPipeline.from_pretrained(None)
m = Model(pipe, max_queue=32, max_running=16)
prompts = ["a red circle and two blue stars on old paper", "a green heart", "two yellow squares", "a large purple triangle"]
reqs = [GenerationRequest(prompts[k % 4], seed=k, guidance=[1.0, 3.0, 5.0][k % 3]) for k in range(16)]
out = [None] * 16
for k, t in enumerate(m.submit_many(reqs)):
    for e in t: out[k] = e
batched = [np.asarray(r.images[0], np.int16) for r in out]
solo = [np.asarray(m(r).images[0], np.int16) for r in reqs]
again = [np.asarray(m(r).images[0], np.int16) for r in reqs[:4]]
d = [np.abs(a - b) for a, b in zip(batched, solo)]
print(json.dumps({"max_batch_requests": m.scheduler.stats.max_batch_requests, "max_diff": int(max(x.max() for x in d)), "share_differing": float(np.mean([ (x > 0).mean() for x in d])), "worst_share": float(max((x > 0).mean() for x in d)), "solo_repeat_identical": all((a == b).all() for a, b in zip(again, solo[:4]))}))
m.close()
