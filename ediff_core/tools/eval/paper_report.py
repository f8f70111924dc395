"""Plots and ``results.md`` for the paper suite (``ediff_core.tools.eval.paper``).

One plot per finding in the style of the paper's figure (Fig. 7: FID against CLIP score over
guidance; Fig. 4: change against the switch point; Fig. 3: attention shares against σ), plus
image grids, and a markdown page putting the paper's claim next to our numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from ediff_core.features.ablation import grid  # noqa: E402

COLOURS = {"ensemble": "tab:blue", "baseline": "tab:orange", "clip": "tab:green", "t5": "tab:purple", "both": "tab:blue"}
MODE_LABELS = {"clip": "CLIP only", "t5": "T5 only", "both": "T5 + CLIP"}


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def _ensemble(rec: dict, out_dir: Path) -> list[str]:
    per, gs = rec["numbers"]["per_guidance"], rec["numbers"]["guidances"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for v in ("ensemble", "baseline"):
        pts = [per[f"{g:g}"][v] for g in gs]
        for ax, (xk, yk) in zip(axes, (("clip", "fid"), ("aligned", "kid"))):
            x = [p[xk][0] for p in pts]
            xe = [p[xk][1] for p in pts]
            y = [p[yk] for p in pts]
            ye = [p[f"{yk}_std"] for p in pts]
            ax.errorbar(x, y, xerr=xe, yerr=ye, marker="o", capsize=3, color=COLOURS[v], label=v)
            for g, xi, yi in zip(gs, x, y):
                ax.annotate(f"w={g:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8, color=COLOURS[v])
    real = rec["numbers"]["real"]
    axes[0].plot([real["clip"][0]], [real["fid"]], "k*", ms=10, label="real renders (floor)")
    axes[1].plot([real["aligned"][0]], [real["kid"]], "k*", ms=10, label="real renders (floor)")
    axes[0].set(xlabel="CLIP score (mini-CLIP)", ylabel="FID (mini-CLIP features)", title="Fig. 7 analogue: FID vs CLIP score")
    axes[1].set(xlabel="alignment rate", ylabel="KID ×10³", title="KID vs alignment")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    return [_save(fig, out_dir, "ensemble_vs_baseline.png")]


def _encoders(rec: dict, out_dir: Path) -> list[str]:
    per = rec["numbers"]["per_setting"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("aligned", "objects_right"), ("aligned with the caption", "objects right (colours, counts, shapes)")):
        for j, mode in enumerate(("clip", "t5", "both")):
            vals = [per[f"{L}/{mode}"][key] for L in ("short", "long")]
            ax.bar([i + (j - 1) * 0.27 for i in range(2)], [v[0] for v in vals], 0.27, yerr=[v[1] for v in vals], capsize=3, color=COLOURS[mode], label=MODE_LABELS[mode])
        ax.set_xticks([0, 1], ["short (COCO-like)", "long (VG-like)"])
        ax.set(ylim=(0, 1.05), title=title)
        ax.legend()
    return [_save(fig, out_dir, "encoder_ablation.png")]


def _switch(rec: dict, out_dir: Path) -> list[str]:
    from ediff_core.tools.eval.paper_findings import EARLY_MIN, LATE_MAX

    n = rec["numbers"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x, label in ((axes[0], n["fractions"], "share of sampling steps run with prompt A"), (axes[1], n["switch_sigmas"], "switch σ (A above, B below)")):
        for p in n["pairs"]:
            ax.plot(x, [v if v is not None else float("nan") for v in p["relative_change"]], color="grey", alpha=0.4, lw=1)
        mean, std = n["relative_change_mean"], n["relative_change_std"]
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color="tab:blue", label="mean over pairs")
        ax.axhline(LATE_MAX, ls=":", color="tab:green", label=f"'nearly unchanged' ({LATE_MAX})")
        ax.axhline(EARLY_MIN, ls=":", color="tab:red", label=f"'changes completely' ({EARLY_MIN})")
        ax.set(xlabel=label, ylabel="change from A alone / change of B alone", ylim=(-0.05, 1.3))
        ax.grid(alpha=0.3)
    axes[0].axvline(0.4, color="tab:red", alpha=0.3)
    axes[0].axvline(0.93, color="tab:green", alpha=0.3)
    axes[1].set_xscale("log")
    axes[1].invert_xaxis()
    axes[0].legend(fontsize=8)
    axes[0].set_title("Fig. 4 analogue: prompt switching")
    return [_save(fig, out_dir, "prompt_switch.png")]


def _attention(rec: dict, out_dir: Path) -> list[str]:
    n = rec["numbers"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for v, c in n["curves"].items():
        for k, ls in (("text", "-"), ("null", "--")):
            m, sd = c[f"{k}_mean"], c[f"{k}_std"]
            ax.plot(c["sigmas"], m, ls, marker=".", color=COLOURS.get(v, "k"), label=f"{v}: {k}")
            ax.fill_between(c["sigmas"], [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=COLOURS.get(v, "k"), alpha=0.12)
    for b in n["expert_boundaries"]:
        ax.axvline(b, color="grey", ls=":", alpha=0.6)
    ax.set(xscale="log", xlabel="σ (sampling runs left to right; dotted: expert boundaries)", ylabel="share of cross-attention", ylim=(0, 1), title="Fig. 3 analogue: attention on text vs null token")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [_save(fig, out_dir, "attention_dynamics.png")]


def _heldout(rec: dict, out_dir: Path) -> list[str]:
    n = rec["numbers"]
    labels = ["aligned", "held-out object", "seen object"]
    vals = [n["aligned"], n["heldout_object_exact"], n["seen_object_exact"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, [v[0] or 0 for v in vals], yerr=[v[1] or 0 for v in vals], capsize=4, color=["tab:blue", "tab:orange", "tab:green"])
    if n.get("target") is not None:
        ax.axhline(n["target"], ls=":", color="k", label=f"alignment target {n['target']}")
        ax.legend()
    ax.set(ylim=(0, 1.05), ylabel="rate", title="Held-out colour–shape pairs")
    return [_save(fig, out_dir, "heldout_compositions.png")]


def _sr(rec: dict, out_dir: Path) -> list[str]:
    per = rec["numbers"]["per_aug"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    keys = list(per)
    axes[0].bar([f"aug σ={k}" for k in keys], [per[k]["kid"] for k in keys], yerr=[per[k]["kid_std"] for k in keys], capsize=4)
    axes[0].set(ylabel="KID ×10³", title="quality")
    axes[1].bar([f"aug σ={k}" for k in keys], [per[k]["consistency"][0] for k in keys], yerr=[per[k]["consistency"][1] for k in keys], capsize=4, color="tab:orange")
    axes[1].set(ylabel="|SR↓ − base| (0..1)", title="consistency with the base image")
    return [_save(fig, out_dir, "sr_ablation.png")]


PLOTS: dict[str, Callable[[dict, Path], list[str]]] = {
    "ensemble_vs_baseline": _ensemble, "encoder_ablation": _encoders, "prompt_switch": _switch,
    "attention_dynamics": _attention, "heldout_compositions": _heldout, "sr_ablation": _sr,
}


def image_grid(rows: dict[str, list[Image.Image] | tuple[list[Image.Image], list[str]]], tile: int = 96) -> Image.Image:
    """Rows of images under a title band each; a row is a list of images or (images, labels)."""
    strips = []
    for title, row in rows.items():
        imgs, labels = row if isinstance(row, tuple) else (row, [""] * len(row))
        if not imgs:
            continue
        strip = grid(imgs, labels, tile=tile, label_height=14 if any(labels) else 2)
        band = Image.new("RGB", (strip.width, strip.height + 16), (255, 255, 255))
        ImageDraw.Draw(band).text((4, 2), title, fill=(0, 0, 0), font=ImageFont.load_default())
        band.paste(strip, (0, 16))
        strips.append(band)
    out = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), (255, 255, 255))
    y = 0
    for s in strips:
        out.paste(s, (0, y))
        y += s.height
    return out


def plot(key: str, rec: dict, grids: dict[str, list[Image.Image]] | None, out_dir: Path) -> list[str]:
    """Writes the finding's plot (and its image grid) into ``out_dir``; returns the file names."""
    names = PLOTS[key](rec, out_dir)
    if grids:
        name = f"{key}_samples.png"
        image_grid(grids).save(out_dir / name)
        names.append(name)
    return names


# ---- markdown ---------------------------------------------------------------------------------
def _table(t: dict) -> list[str]:
    return ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"]), *["| " + " | ".join(str(c) for c in r) + " |" for r in t["rows"]], ""]


def objective_line(objective: dict | None) -> list[str]:
    """The report's statement of which model it measured: the paper's objective, or token grounding."""
    if objective is None:
        return []
    if objective["paper_faithful"]:
        return ["Measured model: the paper's training objective (EDM loss; token grounding W = 0 for every base expert).", ""]
    ws = ", ".join(f"{k} W = {w:g}" for k, w in objective["grounding"].items())
    return [f"Measured model: trained **with token grounding** (`train --grounding`, beyond the paper): {ws}. "
            "The paper-faithful model is the same command with `--grounding 0` (the model card's reproduce section).", ""]


def write_markdown(results: dict, path: Path, out_dir: Path) -> None:
    """``results.md``: a summary table, then per finding the paper's claim, our numbers, the plot,
    the verdict and the reasoning."""
    rel = Path(out_dir.name) if out_dir.parent.resolve() == path.parent.resolve() else out_dir.resolve()
    m, s = divmod(int(results.get("wall_clock_s", 0)), 60)
    smp = results["sampling"]
    ref = results["fid"]["reference"]
    real = results["fid"]["real_renders"]
    L = [f"# eDiff-I's findings, measured on {results['model']}", ""]
    if results["quick"]:
        L += ["> **Quick run** (CI smoke test): a handful of images per setting. The numbers only show that the pipeline works; they say nothing about the paper.", ""]
    L += [
        f"Generated by `{results['command']}` on {results['started']}: wall-clock **{m} min {s:02d} s** for {results.get('images_generated', 0)} generated images "
        f"(device {results['device']}, torch threads {results['torch_threads']}). Model folder: `{results['model_folder']}`.",
        "",
        *objective_line(results.get("training_objective")),
        f"Sampling: {smp['sampler']}, {smp['steps']} base steps and {smp['sr_steps']} super-resolution steps for every model (the same NFE), default guidance {smp['default_guidance']:g}. "
        f"Each setting uses the same prompts and seeds (image *i* gets seed {results['config']['seed']} + *i*), so differences are paired.",
        "",
        f"**Metrics.** FID and KID use {results['fid']['features']} against {ref['images']} real Shapes World renders of the test split "
        f"(indices {ref['indices'][0]}–{ref['indices'][1]}, {ref['excludes']}; statistics cached in `{ref['cache']}` under the encoder weights' hash {ref['encoder_hash'][:12]}). "
        "FID from a few dozen images is heavily biased (the paper uses 30,000), so it is shown for comparison with the paper while verdicts on quality use KID, which is unbiased at small n; "
        "the real renders of the same prompts, scored the same way, give the floor a perfect model would reach. Mini-CLIP features describe content (colours, shapes, counts, styles) and are nearly blind to blur, "
        "so *clean pixels* (the share of pixels within 30 of a colour Shapes World draws with) adds a pixel-level quality measure. "
        f"For scale, the real renders of the {real['n']} sweep prompts score FID {real['fid']:.1f}, KID×10³ {real['kid']:.1f}, clean pixels "
        f"{real['clean'][0]:.3f}, CLIP score {real['clip'][0]:.1f} and aligned {real['aligned'][0]:.2f} (the detector's accuracy on perfect images). "
        "CLIP score is 100·max(cos(image, caption), 0) with mini-CLIP. *Aligned* is the alignment suite's check (objects found by colour; counts, shapes, cells, relations). "
        "Every ± is a bootstrap standard deviation over the generated images; a difference counts only when it exceeds twice its paired spread.",
        "",
        "| finding | paper | reproduces |",
        "|---|---|---|",
    ]
    for k, f in results["findings"].items():
        L.append(f"| [{f['title']}](#{k.replace('_', '-')}) | {f['figure']} | {f['reproduces'] or f['status']} |")
    L.append("")
    for i, (k, f) in enumerate(results["findings"].items(), 1):
        L += [f'<a id="{k.replace("_", "-")}"></a>', f"## {i}. {f['title']} ({f['figure']})", "", f"> **{f.get('source', 'Paper')}:** {f['paper']}", ""]
        if f["status"] != "ok":
            L += [f"**Not measured:** {f['status']}.", ""]
            if f.get("why"):
                L += [f["why"], ""]
            continue
        L += ["**Ours:**", "", *_table(f["table"])]
        L += [f"![{p}]({(rel / p).as_posix()})" for p in f.get("plots", [])] + [""]
        if f.get("claims"):
            L += ["**Claims tested:**", ""] + [f"- {c['claim']}: **{c['verdict']}**" for c in f["claims"]] + [""]
        L += [f"**Reproduces:** {f['reproduces']}", "", f"**Why we think so.** {f['why']}", "", f"*Samples:* `{json.dumps(f.get('samples', {}), ensure_ascii=False)}`; {f['seconds']:.0f} s.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L))
