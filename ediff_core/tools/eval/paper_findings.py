"""The six findings of the paper suite, one function each (eDiff-I Figs. 3, 4, 7, 8, 18; §5.2).

Each takes the ``Suite`` (generation with memoised settings, metrics against the reference) and
returns a record: the verdict ('yes' / 'partly' / 'no' / 'inconclusive'), the claims tested, a
table, the raw numbers for the plot, sample sizes and seeds, and a "why we think so" paragraph.
Every sentence of that paragraph is picked by the numbers, so it holds whichever way they fall.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np
from PIL import Image

from ediff_core.data.shapes_world import HELD_OUT
from ediff_core.tools.eval import metrics as M
from ediff_core.tools.eval.alignment import check_detections, detect_objects, eval_prompts, parse_prompt
from ediff_core.tools.eval.paper import POOL_START, TRAIN_BASELINE, pool, trained_steps, using
from ediff_core.tools.eval.suite import Measured, Suite, pm, verdict_of

LATE_MAX, EARLY_MIN = 0.25, 0.75  # Fig. 4: "nearly unchanged" / "changes completely", share of the full A→B change
ATTENTION_TOL = 0.02  # Fig. 3: a shift of attention share this small is no shift
MODE_NAMES = {"clip": "CLIP only", "t5": "T5 only", "both": "T5 + CLIP"}

CLAIMS = {  # (figure, source, quote), quoted from /work/shared/PAPER_NOTES.md or SHAPES_WORLD.md
    "ensemble_vs_baseline": ("Fig. 7", "Paper", "Fig. 7: at equal training samples, the ensemble's FID–CLIP-score curve dominates "
                             "the single model's over guidance 0…10."),
    "encoder_ablation": ("§5.2, Figs. 8, 18", "Paper", "CLIP-only gets the right foreground objects and global look but fails at "
                         "composition, counting and text; T5-only composes better but renders objects worse; both is best. On long "
                         "captions (Visual Genome, ~62 words) T5 beats CLIP; on short ones (COCO, ~11 words) they are similar."),
    "prompt_switch": ("Fig. 4", "Paper", "switching the prompt during the last ~7% of denoising leaves the image nearly unchanged, "
                      "while switching during the first ~40% changes it completely."),
    "attention_dynamics": ("Fig. 3", "Paper", "Early in sampling (high σ) the denoiser leans on the text to decide the layout; late "
                           "(low σ) it mostly ignores the text and paints detail. Evidence: cross-attention at low noise goes mostly "
                           "to the null token."),
    "heldout_compositions": ("no paper figure; Shapes World spec", "SHAPES_WORLD.md (the paper has no such experiment)",
                             "Held-out compositions: `purple heart`, `cyan triangle`, `yellow square`, `green star` never appear in "
                             "any training image or caption. They exist to test zero-shot composition."),
    "sr_ablation": ("§4.2; Imagen", "Paper notes (the paper has no such ablation)", "SR 64→256 and SR 256→1024: "
                    "Efficient-U-Net-style; low-resolution input conditioning with random degradations during training. The technique "
                    "is Imagen's (\"noise-conditioning augmentation\"), which conditions the SR stage on a noised low-resolution input "
                    "at inference too."),
}
TITLES = {
    "ensemble_vs_baseline": "Ensemble of expert denoisers vs one model",
    "encoder_ablation": "T5 vs CLIP text encoders",
    "prompt_switch": "Prompt switching during sampling",
    "attention_dynamics": "Cross-attention on text vs the null token over σ",
    "heldout_compositions": "Zero-shot held-out colour–shape pairs",
    "sr_ablation": "Super-resolution noise-conditioning augmentation",
}


def _quality_row(q: dict) -> list[str]:
    """FID, KID, clean pixels, CLIP score, aligned of a ``Suite.summary``."""
    return [pm(q["fid"], q["fid_std"], 1), pm(q["kid"], q["kid_std"], 1), pm(*q["clean"], 3), pm(*q["clip"], 1), pm(*q["aligned"])]


def _outcome(cmps: list[str]) -> str:
    """'better' / 'worse' when some metric moved beyond noise one way and none the other; else 'mixed' or 'tie'."""
    if "better" in cmps:
        return "mixed" if "worse" in cmps else "better"
    return "worse" if "worse" in cmps else "tie"


# ---- 1. Fig. 7 --------------------------------------------------------------------------------
def ensemble_vs_baseline(s: Suite) -> dict:
    """Fig. 7: the ensemble and the single baseline model over a guidance sweep, same prompts, seeds and NFE."""
    if "baseline" not in s.variants and s.folder is None:
        return {"status": "not run: model folder unknown",
                "why": f"The pipeline {s.pipe.name!r} was not loaded from the default model folder, so `base/baseline` could not be "
                       "looked up; pass `model_folder=` to `run_paper_suite` (the CLI passes none for `--model`)."}
    if "baseline" not in s.variants:
        return {"status": "not run: baseline not trained", "command": TRAIN_BASELINE,
                "why": "The single model `base/baseline` (trained on as many samples as the shared model plus the experts) "
                       f"is missing from the model folder and from `<model folder>-train`. Train it with `{TRAIN_BASELINE}`."}
    prompts = [c["short"] for _, c in pool(s.cfg.n_sweep)]
    specs = [parse_prompt(p) for p in prompts]
    gs = sorted(set(s.cfg.guidances) | {s.guidance})
    runs: dict[str, dict[float, Measured]] = {
        v: {g: s.measure([s.generate(p, s.cfg.seed + i, v, g)[0] for i, p in enumerate(prompts)], prompts, specs) for g in gs}
        for v in ("ensemble", "baseline")
    }
    rows, per_g = [], {}
    for g in gs:
        e, b = runs["ensemble"][g], runs["baseline"][g]
        diff = {  # ensemble minus baseline, oriented so that > 0 means the ensemble is better
            "kid_gain": s.paired(b.feats, e.feats, s.kid), "fid_gain": s.paired(b.feats, e.feats, s.fast_fid),
            "clean": s.paired(e.clean, b.clean), "clip": s.paired(e.clip, b.clip), "aligned": s.paired(e.aligned, b.aligned),
        }
        cmps = {k: M.compare(*v) for k, v in diff.items()}
        per_g[g] = {v: s.summary(runs[v][g]) for v in runs}
        per_g[g].update(ensemble_minus_baseline=diff, compare=cmps, outcome=_outcome([c for k, c in cmps.items() if k != "fid_gain"]))
        rows += [[f"{g:g}", v, *_quality_row(per_g[g][v])] for v in runs]
    real = s.real(s.cfg.n_sweep)
    rows.append(["–", "real renders", *_quality_row(real)])
    by = {o: [f"{g:g}" for g in gs if per_g[g]["outcome"] == o] for o in ("better", "worse", "mixed", "tie")}
    if by["better"] and not by["worse"] and not by["mixed"]:
        verdict = "yes"
    elif (by["worse"] or by["mixed"]) and not by["better"]:
        verdict = "no" if by["worse"] else "partly"
    else:
        verdict = "partly" if by["better"] else "inconclusive"
    pts = {v: [(per_g[g][v]["fid"], per_g[g][v]["clip"][0]) for g in gs] for v in runs}
    dominates = lambda p, q: p[0] <= q[0] and p[1] >= q[1] and p != q  # noqa: E731  (lower FID, higher CLIP)
    n_dom_b = sum(any(dominates(p, q) for p in pts["ensemble"]) for q in pts["baseline"])
    n_dom_e = sum(any(dominates(q, p) for q in pts["baseline"]) for p in pts["ensemble"])
    agree = sum(np.sign(per_g[g]["ensemble_minus_baseline"]["fid_gain"][0]) == np.sign(per_g[g]["ensemble_minus_baseline"]["kid_gain"][0]) for g in gs)
    metrics = "KID, clean pixels, CLIP score or alignment"
    why = [{
        "yes": f"The ensemble is better than the single model beyond twice the paired spread at guidance {', '.join(by['better'])} "
               f"({metrics}) and significantly worse on none of them anywhere: the ordering of Fig. 7.",
        "no": f"The single model is significantly better at guidance {', '.join(by['worse'])} and the ensemble is nowhere "
              "significantly better: Fig. 7's ordering does not reproduce at this scale.",
        "partly": f"The ensemble wins at guidance {', '.join(by['better']) or '–'}, loses at {', '.join(by['worse']) or '–'} and trades "
                  f"one metric for another at {', '.join(by['mixed']) or '–'}: no curve dominates the other, unlike Fig. 7.",
        "inconclusive": f"No difference in {metrics} exceeds twice its paired spread at any guidance: with {s.cfg.n_sweep} images per "
                        "setting this run cannot tell the two models apart. The paper's gaps are small too (zero-shot COCO FID 7.35 "
                        "for one model vs 6.95 with three base experts, Table 1, on 30,000 images).",
    }[verdict]]
    why.append(f"For scale, the real renders of the same {s.cfg.n_sweep} prompts score FID {real['fid']:.1f} (the small-sample floor) "
               f"and CLIP score {real['clip'][0]:.1f}. On the FID–CLIP plane {n_dom_b} of the baseline's {len(gs)} points are dominated "
               f"by an ensemble point and {n_dom_e} of the ensemble's by a baseline point (point estimates). FID, biased at n = "
               f"{s.cfg.n_sweep} with {s.ref.stats.mu.size}-d features, moves the same way as the unbiased KID at {agree} of {len(gs)} "
               "guidance values; it takes no part in the verdict.")
    if steps := trained_steps(s.pipe):
        why.append(f"Training steps from the model card: {steps}.")
    if verdict in ("no", "partly"):
        why.append("A likely reason, not a measured one: our experts are fine-tuned from the shared model for far fewer steps than the "
                   "paper's, each on a narrow σ range, while the baseline kept training on all σ.")
    elif verdict == "inconclusive":
        why.append(f"A likely reason, not a measured one: the experts and the single model both start from the shared model and "
                   f"stay close after short fine-tuning, and a gap of the paper's size is far below what {s.cfg.n_sweep} images resolve.")
    claim = "the ensemble is better on some metric beyond noise and worse on none"
    return {"reproduces": verdict, "why": " ".join(why),
            "claims": [{"claim": f"guidance {g:g}: {claim}", "verdict": {"better": "yes", "tie": "inconclusive"}.get(per_g[g]["outcome"], "no")} for g in gs],
            "table": {"header": ["guidance", "model", "FID", "KID×10³", "clean pixels", "CLIP score", "aligned"], "rows": rows},
            "numbers": {"guidances": gs, "per_guidance": {f"{g:g}": per_g[g] for g in gs}, "real": real},
            "samples": {"images_per_setting": s.cfg.n_sweep, "fid_sample_size": s.cfg.n_sweep, "seeds": [s.cfg.seed, s.cfg.seed + s.cfg.n_sweep - 1],
                        "prompts": f"short captions of test-split scenes from index {POOL_START} (no held-out pairs)"},
            "_grid": {f"{v}, guidance {g:g}": runs[v][g].images[:6] for v in runs for g in gs}}


# ---- 2. §5.2 ----------------------------------------------------------------------------------
def encoder_ablation(s: Suite) -> dict:
    """§5.2: CLIP only, T5 only and both on the short and the long caption of the same scenes."""
    items = pool(s.cfg.n_ablation)
    res: dict[str, dict[str, Measured]] = {}
    objects: dict[str, dict[str, np.ndarray]] = {}  # long-caption images checked against the short caption too
    trunc: dict[str, dict[str, float]] = {}
    short_specs = [parse_prompt(c["short"]) for _, c in items]
    for length in ("short", "long"):
        prompts = [c[length] for _, c in items]
        specs = [parse_prompt(p) for p in prompts]
        trunc[length] = {e.name: float(np.mean([e.truncated(p) for p in prompts])) for e in (s.pipe.encoders.clip_text, s.pipe.encoders.t5)}
        res[length], objects[length] = {}, {}
        for mode in MODE_NAMES:
            imgs = [s.generate(p, s.cfg.seed + i, encoders=mode)[0] for i, p in enumerate(prompts)]
            res[length][mode] = s.measure(imgs, prompts, specs)
            objects[length][mode] = np.array([float(check_detections(detect_objects(im), sp).shapes_ok) for im, sp in zip(imgs, short_specs)])
    rows, nums = [], {}
    for length, by_mode in res.items():
        for mode, m in by_mode.items():
            q = nums[f"{length}/{mode}"] = {"aligned": s.ms(m.aligned), "objects_right": s.ms(objects[length][mode]), "counts_ok": s.ms(m.counts_ok),
                                            "object_score": s.ms(m.object_score), "clip": s.ms(m.clip), **s.quality(m.feats)}
            rows.append([length, MODE_NAMES[mode], pm(*q["aligned"]), pm(*q["objects_right"]), pm(*q["counts_ok"]), pm(*q["object_score"]),
                         pm(*q["clip"], 1), pm(q["kid"], q["kid_std"], 1)])
    d = lambda L, a, b: s.paired(res[L][a].aligned, res[L][b].aligned)  # noqa: E731
    long_t5, short_t5 = d("long", "t5", "clip"), d("short", "t5", "clip")
    both_vs = {f"{L} vs {MODE_NAMES[m]}": d(L, "both", m) for L in res for m in ("clip", "t5")}
    both_cmp = [M.compare(*v) for v in both_vs.values()]
    pooled = float(np.mean([res["short"][m].aligned.mean() for m in ("t5", "clip")]))
    at_floor = not 0.1 <= pooled <= 0.9  # both single encoders near 0 (or 1): a tie says nothing
    claims = [
        {"claim": "long captions: T5 only is better aligned than CLIP only", "verdict": verdict_of(M.compare(*long_t5)), "delta": long_t5},
        {"claim": "short captions: T5 only and CLIP only are similar", "delta": short_t5,
         "verdict": "inconclusive" if at_floor else "yes" if M.compare(*short_t5) == "tie" else "no"},
        {"claim": "both encoders together are best", "delta": both_vs,
         "verdict": "no" if "worse" in both_cmp else "yes" if "better" in both_cmp else "inconclusive"},
    ]
    why = [f"Alignment rate differences with paired spreads: on long captions T5 only minus CLIP only is {pm(*long_t5)}, "
           f"on short captions {pm(*short_t5)}.",
           {"yes": "T5 helps on long captions, as the paper says.",
            "no": "CLIP only is the better one on long captions here, contrary to the paper.",
            "inconclusive": "On long captions the two single encoders are not separable at this sample size."}[claims[0]["verdict"]]]
    if at_floor:
        why.append(f"On short captions the single encoders align {pooled:.0%} of images on average, a floor (or ceiling) where a tie "
                   "says nothing about similarity.")
    elif claims[1]["verdict"] == "yes":
        why.append(f"On short captions the difference is within twice its spread; with {s.cfg.n_ablation} scenes that spread is wide, "
                   "so 'similar' only means no difference was detectable.")
    else:
        why.append("On short captions the difference exceeds twice its spread: the encoders are not similar here.")
    why.append("Both together minus each alone: " + ", ".join(f"{k} {pm(*v)}" for k, v in both_vs.items())
               + f", so 'both is best' is {claims[2]['verdict']}.")
    why.append(f"Long captions truncated: CLIP {trunc['long'].get('clip', 0):.0%}, T5 {trunc['long'].get('t5', 0):.0%}; "
               "truncation drops the cells and relations at the end of a long caption.")
    return {"reproduces": M.overall([c["verdict"] for c in claims]), "why": " ".join(why), "claims": claims,
            "table": {"header": ["captions", "encoders", "aligned", "objects right", "counts right", "object fit", "CLIP score", "KID×10³"], "rows": rows},
            "numbers": {"per_setting": nums, "truncated": trunc},
            "samples": {"scenes": s.cfg.n_ablation, "seeds": [s.cfg.seed, s.cfg.seed + s.cfg.n_ablation - 1], "guidance": s.guidance,
                        "prompts": f"short and long captions of the same test-split scenes from index {POOL_START}",
                        "notes": "'objects right': the short caption's colours, counts and shapes (long-caption images too); "
                                 "'object fit': mean template IoU of detected objects (rendering quality); KID on so few images is indicative only"},
            "_grid": {f"{L} captions, {MODE_NAMES[m]}": res[L][m].images[:6] for L in res for m in MODE_NAMES}}


# ---- 3. Fig. 4 --------------------------------------------------------------------------------
def prompt_switch(s: Suite) -> dict:
    """Fig. 4: prompt A for the first k steps, B after; change of the base-stage image vs k / steps."""
    from ediff_core.features.prompt_switch import prompt_switch_sweep
    from ediff_core.core.samplers import karras_sigmas

    req = s.pipe.resolve(s.request("x", 0))
    sig = karras_sigmas(req.steps, req.sigma_min, req.sigma_max).tolist()
    ks = sorted({min(req.steps - 1, max(1, round(f * req.steps))) for f in s.cfg.switch_fractions})
    if req.steps < 2:
        return {"status": f"not run: {req.steps} sampler step leaves no switch point"}
    switch = [math.sqrt(sig[k - 1] * sig[k]) for k in ks]  # steps 0..k-1 see A, steps k.. see B
    fracs = [k / req.steps for k in ks]
    colours = lambda scene: {o.color for o in scene.objects}  # noqa: E731
    items, pairs = pool(8 * s.cfg.n_switch_pairs + 8), []
    for i, (sa, ca) in enumerate(items):  # disjoint colours, so the final image's colours say whose it is
        sb, cb = next(((sb, cb) for sb, cb in items[i + 1 :] if not colours(sa) & colours(sb)), (None, None))
        if sb is not None and len(pairs) < s.cfg.n_switch_pairs:
            pairs.append((ca["short"], cb["short"], colours(sa), colours(sb)))
    rel, b_share, per_pair, grid = [], [], [], {}
    for j, (a, b, col_a, col_b) in enumerate(pairs):
        sw = prompt_switch_sweep(s.pipe, a, b, switch, seed=s.cfg.seed + j, steps=req.steps, sr_steps=s.cfg.sr_steps, guidance=s.guidance)
        s.tick(len(switch) + 2)
        r = [c / sw.reference if sw.reference > 0 else float("nan") for c in sw.change]
        share = []
        for img in sw.images:
            found = {d.color for d in detect_objects(img)} & (col_a | col_b)
            share.append(len(found & col_b) / len(found) if found else float("nan"))
        rel.append(r)
        b_share.append(share)
        per_pair.append({"a": a, "b": b, "relative_change": r, "b_colour_share": share, "reference_change": sw.reference})
        grid[f"A: {a}  ->  B: {b}"] = ([sw.no_switch, *sw.images[::-1], sw.prompt_b_only], ["A only", *[f"{f:.0%} A" for f in fracs[::-1]], "B only"])
    mean, std = np.nanmean(np.array(rel), 0), np.nanstd(np.array(rel), 0)
    late = [i for i, f in enumerate(fracs) if f >= 0.9]
    early = [i for i, f in enumerate(fracs) if f <= 0.4]
    late_v = float(np.mean(mean[late])) if late else float("nan")
    early_v = float(np.mean(mean[early])) if early else float("nan")
    claims = [
        {"claim": f"a switch in the last ~7% (≥ 90% of the steps with A) changes less than {LATE_MAX:.0%} of the full A→B change",
         "verdict": "inconclusive" if not late else "yes" if late_v <= LATE_MAX else "no", "value": late_v},
        {"claim": f"a switch in the first ~40% changes at least {EARLY_MIN:.0%} of it",
         "verdict": "inconclusive" if not early else "yes" if early_v >= EARLY_MIN else "no", "value": early_v},
    ]
    half = next((f for f, m in zip(fracs, mean) if m < 0.5), None)
    why = [f"Relative change (mean absolute pixel change of the base-stage image from prompt A alone, divided by that of prompt B "
           f"alone), averaged over {len(pairs)} prompt pairs, by share of the steps run with A: "
           + ", ".join(f"{f:.0%} → {m:.2f}" for f, m in zip(fracs, mean)) + "."]
    if late:
        why.append(f"Late switches change {late_v:.2f} of it, {'within' if late_v <= LATE_MAX else 'above'} our 'nearly unchanged' bound of {LATE_MAX}.")
    else:
        why.append("No switch point falls in the last 10% of the steps, so 'nearly unchanged' cannot be judged.")
    if early:
        why.append(f"Early switches change {early_v:.2f}, {'reaching' if early_v >= EARLY_MIN else 'short of'} our 'changes completely' bound of {EARLY_MIN}.")
    why.append(f"The change first falls below half when {half:.0%} of the steps ran with A." if half is not None
               else "The change stays above half of the full change at every switch point measured.")
    why.append("The bounds are ours: the paper shows images, not numbers.")
    b_mean = np.nanmean(np.array(b_share, dtype=float), 0) if pairs else []
    return {"reproduces": M.overall([c["verdict"] for c in claims]), "why": " ".join(why), "claims": claims,
            "table": {"header": ["share of steps with A", "switch σ", "relative change", "spread over pairs", "share of B's colours in the final image"],
                      "rows": [[f"{f:.0%}", f"{sg:.3g}", f"{m:.2f}", f"{sd:.2f}", f"{bm:.2f}"] for f, sg, m, sd, bm in zip(fracs, switch, mean, std, b_mean)]},
            "numbers": {"fractions": fracs, "switch_sigmas": switch, "relative_change_mean": mean.tolist(), "relative_change_std": std.tolist(),
                        "pairs": per_pair, "steps": req.steps},
            "samples": {"pairs": len(pairs), "seeds": [s.cfg.seed, s.cfg.seed + len(pairs) - 1], "guidance": s.guidance, "images_per_pair": len(switch) + 2},
            "_grid": grid}


# ---- 4. Fig. 3 --------------------------------------------------------------------------------
def attention_dynamics(s: Suite) -> dict:
    """Fig. 3: share of cross-attention on the text tokens and on the null token at each σ, per model."""
    prompts = [c["short"] for _, c in pool(s.cfg.n_attention)]
    curves, claims = {}, []
    for v in s.variants:
        shares = []
        with using(s.pipe, None if v == "ensemble" else s.variants[v]):
            for i, p in enumerate(prompts):
                shares.append(s.pipe(s.request(p, s.cfg.seed + i, guidance=s.guidance, attention_maps=True)).attention["shares"])
                s.tick()
        if not shares[0]:
            return {"status": "not run: the base U-Net has no cross-attention layers to record"}
        arr = {k: np.array([[e[k] for e in sh] for sh in shares]) for k in ("text", "null", "image")}  # (prompts, evaluations)
        third = max(1, arr["text"].shape[1] // 3)
        drop = M.mean_and_spread(arr["text"][:, :third].mean(1) - arr["text"][:, -third:].mean(1), s.cfg.bootstrap)  # high-σ minus low-σ
        null_low = M.mean_and_spread(arr["null"][:, -1], s.cfg.bootstrap)
        curves[v] = {"sigmas": [e["sigma"] for e in shares[0]], **{f"{k}_mean": a.mean(0).tolist() for k, a in arr.items()},
                     **{f"{k}_std": a.std(0).tolist() for k, a in arr.items()}, "text_drop_high_minus_low": drop, "null_at_lowest_sigma": null_low}
        claims.append({"claim": f"{v}: the text share is higher over the first third of the steps than over the last third (by more than {ATTENTION_TOL})",
                       "verdict": verdict_of(M.compare(*drop, tol=ATTENTION_TOL)), "value": drop})
        claims.append({"claim": f"{v}: at the lowest σ most attention goes to the null token (share > 0.5)",
                       "verdict": "yes" if null_low[0] > 0.5 else "no", "value": null_low})
    why = [f"{v}: text share {pm(c['text_mean'][0], c['text_std'][0])} at σ = {c['sigmas'][0]:.3g} and {pm(c['text_mean'][-1], c['text_std'][-1])} "
           f"at σ = {c['sigmas'][-1]:.3g}; null share at the lowest σ {pm(*c['null_at_lowest_sigma'])}; first-third minus last-third text "
           f"share {pm(*c['text_drop_high_minus_low'])} (spread over {len(prompts)} prompts)." for v, c in curves.items()]
    failed = [c["claim"] for c in claims if c["verdict"] == "no"]
    unclear = [c["claim"] for c in claims if c["verdict"] == "inconclusive"]
    if not failed and not unclear:
        why.append("Both parts of the observation hold: the text steers early and the null token takes over late.")
    if failed:
        why.append("Not observed: " + "; ".join(failed) + ". Our model's cross-attention does not split the σ range the way the paper "
                   "describes; the experts are routed by σ regardless, so this weakens the case for experts at this scale rather than "
                   "breaking them.")
    if unclear:
        why.append(f"Within the spread over prompts (or below the {ATTENTION_TOL} shift we count): " + "; ".join(unclear) + ".")
    return {"reproduces": M.overall([c["verdict"] for c in claims]), "why": " ".join(why), "claims": claims,
            "table": {"header": ["model", "σ", "text", "null", "image"],
                      "rows": [[v, f"{c['sigmas'][i]:.3g}", f"{c['text_mean'][i]:.2f}", f"{c['null_mean'][i]:.2f}", f"{c['image_mean'][i]:.2f}"]
                               for v, c in curves.items() for i in sorted({0, len(c["sigmas"]) // 2, len(c["sigmas"]) - 1})]},
            "numbers": {"curves": curves, "expert_boundaries": [sp.interval.lo for sp in s.pipe.base.ensemble.specs if sp.interval.lo > 0]},
            "samples": {"prompts": len(prompts), "seeds": [s.cfg.seed, s.cfg.seed + len(prompts) - 1], "guidance": s.guidance,
                        "note": "conditional branch of CFG only, averaged over heads, layers and pixels"}}


# ---- 5. held-out pairs ------------------------------------------------------------------------
def heldout_compositions(s: Suite) -> dict:
    """Zero-shot composition: held-out colour–shape pairs against the seen objects of the same prompts."""
    from ediff_core.tools.eval.alignment import TARGETS

    items = eval_prompts("heldout", s.cfg.n_heldout, s.cfg.seed)
    held, seen, aligned, per_pair, imgs = [], [], [], {}, []
    for i, it in enumerate(items):
        img = s.generate(it.prompt, s.cfg.seed + i)[0]
        dets = detect_objects(img)
        found = Counter((d.color, d.shape) for d in dets)
        ok = float(check_detections(dets, it.spec).aligned)
        imgs.append(img)
        aligned.append(ok)
        for pair, k in Counter((o.color, o.shape) for o in it.spec.objects).items():
            (held if pair in HELD_OUT else seen).append(min(found[pair], k) / k)
            if pair in HELD_OUT:
                per_pair.setdefault(" ".join(pair), []).append(ok)
    al, h = s.ms(np.array(aligned)), s.ms(np.array(held))
    se = s.ms(np.array(seen)) if seen else (float("nan"), float("nan"))
    gap = (h[0] - se[0], math.hypot(h[1], se[1]))
    if not seen or se[0] - 2 * se[1] <= 0:
        verdict = "inconclusive"
        why = ["The model renders too few seen colour–shape pairs correctly in these prompts to judge whether held-out pairs are harder."]
    else:
        worse = M.compare(*gap) == "worse"
        verdict = "no" if worse else "yes"
        why = [f"Held-out objects are rendered exactly {pm(*h)} of the time against {pm(*se)} for the seen objects beside them in the same "
               f"prompts (difference {pm(*gap)}): " + ("significantly worse, so unseen pairs compose worse than seen ones." if worse
                                                       else "no significant gap, so the model composes colour and shape beyond the pairs it saw.")]
    why.append(f"Whole-prompt alignment is {pm(*al)}; the alignment suite's target is {TARGETS.get('heldout')}.")
    return {"reproduces": verdict, "why": " ".join(why),
            "claims": [{"claim": "held-out pairs are rendered about as often as seen pairs", "verdict": verdict, "value": gap}],
            "table": {"header": ["measure", "value"],
                      "rows": [["aligned (whole prompt)", pm(*al)], ["held-out object exact", pm(*h)], ["seen object exact", pm(*se)],
                               *[[f"aligned, prompts with {k}", f"{np.mean(x):.2f} (n={len(x)})"] for k, x in sorted(per_pair.items())]]},
            "numbers": {"aligned": al, "heldout_object_exact": h, "seen_object_exact": se, "gap": gap, "target": TARGETS.get("heldout"),
                        "per_pair_aligned": {k: float(np.mean(x)) for k, x in per_pair.items()}},
            "samples": {"prompts": len(items), "seeds": [s.cfg.seed, s.cfg.seed + len(items) - 1], "guidance": s.guidance,
                        "prompt_set": f"eval_prompts('heldout', {len(items)}, seed={s.cfg.seed})"},
            "_grid": {"held-out prompts": imgs[:8]}}


# ---- 6. SR augmentation -----------------------------------------------------------------------
def sr_ablation(s: Suite) -> dict:
    """Super-resolution at the model's augmentation σ and at 0, on the same base images."""
    if not s.pipe.sr:
        return {"status": "not run: the model has no super-resolution stage"}
    default = s.pipe.sr[0].aug_sigma
    if default == 0:
        return {"status": "not run: the model's SR stage already runs without augmentation (aug_sigma 0)"}
    prompts = [c["short"] for _, c in pool(s.cfg.n_sr)]
    specs = [parse_prompt(p) for p in prompts]
    out, consistency = {}, {}
    for a in (default, 0.0):
        pairs = [s.generate(p, s.cfg.seed + i, aug=a) for i, p in enumerate(prompts)]  # (final, base); base identical for both
        out[a] = s.measure([f for f, _ in pairs], prompts, specs)
        consistency[a] = np.array([np.abs(np.asarray(f.convert("RGB").resize(b.size, Image.LANCZOS), np.float64)
                                          - np.asarray(b.convert("RGB"), np.float64)).mean() / 255 for f, b in pairs])
    d_kid = s.paired(out[0.0].feats, out[default].feats, s.kid)  # > 0: augmentation better
    d_clean = s.paired(out[default].clean, out[0.0].clean)  # > 0: augmentation better
    d_al = s.paired(out[default].aligned, out[0.0].aligned)
    d_cons = s.paired(consistency[0.0], consistency[default])  # > 0: augmented SR stays closer to its input
    nums = {f"{a:g}": {**s.summary(out[a]), "consistency": s.ms(consistency[a])} for a in out}
    outcome = _outcome([M.compare(*d_kid), M.compare(*d_clean)])
    verdict = {"better": "yes", "worse": "no"}.get(outcome, "inconclusive")
    why = [f"Without minus with augmentation, KID×10³: {pm(*d_kid, 1)}; with minus without, clean pixels: {pm(*d_clean, 3)}, alignment: "
           f"{pm(*d_al)}; input consistency (mean |downsampled SR output − base image|), without minus with: {pm(*d_cons, 3)}.",
           {"yes": "Augmentation at inference helps here, as Imagen's noise-conditioning augmentation intends (our SR training also noises "
                   "and degrades its low-resolution input).",
            "no": "Running the SR stage on the clean base image is better here; a likely reason, not a measured one: the base images are "
                  "clean enough that the added noise only removes detail.",
            "inconclusive": f"The two settings are not separable with {s.cfg.n_sr} images (or they trade KID against clean pixels): the SR "
                            "stage changes only fine detail, which mini-CLIP features barely see."}[verdict]]
    real = s.real(s.cfg.n_sr)
    return {"reproduces": verdict, "why": " ".join(why),
            "claims": [{"claim": f"SR at its default augmentation (σ = {default:g}) is better (KID or clean pixels) than at 0", "verdict": verdict,
                        "delta": {"kid_gain": d_kid, "clean": d_clean}}],
            "table": {"header": ["aug σ", "FID", "KID×10³", "clean pixels", "CLIP score", "aligned", "input consistency"],
                      "rows": [[k, *_quality_row(x), pm(*x["consistency"], 3)] for k, x in nums.items()] + [["real renders", *_quality_row(real), "–"]]},
            "numbers": {"per_aug": nums, "kid_gain": d_kid, "clean_gain": d_clean, "aligned_gain": d_al, "consistency_gain": d_cons, "real": real},
            "samples": {"images_per_setting": s.cfg.n_sr, "seeds": [s.cfg.seed, s.cfg.seed + s.cfg.n_sr - 1], "guidance": s.guidance},
            "_grid": {f"SR augmentation σ = {a:g}": out[a].images[:6] for a in out}}


RUNNERS: dict[str, Callable[[Suite], dict]] = {
    "ensemble_vs_baseline": ensemble_vs_baseline, "encoder_ablation": encoder_ablation, "prompt_switch": prompt_switch,
    "attention_dynamics": attention_dynamics, "heldout_compositions": heldout_compositions, "sr_ablation": sr_ablation,
}
