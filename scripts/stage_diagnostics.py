"""Which part of the cascade limits alignment and paint-with-words placement? (the model card's "What would close the gap")

1. ``sr``: the alignment suite's test prompts (same prompts and seeds as ``eval --suite alignment``)
   scored twice: through the whole cascade, and as the 32-px base image upsampled bicubically to 64
   with the super-resolution stage skipped. Equal counts mean SR neither fixes nor breaks alignment.
2. ``paint``: the paint suite's layouts (``eval --suite paint``) with the paper's bias inside each
   painted region (§4.3) and, in addition, the same bias with the opposite sign outside it
   (A = m − λ(1 − m) on the phrase's columns, as DenseDiffusion-style layout methods do). If pushing
   a phrase out of the rest of the canvas does not place it either, the limit is not the size of the bias.
   First, for one layout, the attention share on each phrase's tokens inside and outside its region
   per σ (``--n 0`` prints only that).
3. ``attention``: is cross-attention spatially selective? For the alignment suite's single- and
   multi-object prompts (no painting), the attention on each object's colour word, averaged over the
   evaluations with σ ≥ 1 (where the layout forms) and over layers at the finest attention level, is
   read inside the disc of each detected object of that colour, inside the other objects' discs and
   on the background. Ratios near 1 mean the word's attention is spread evenly over the canvas.
4. ``tokens``: can moving attention between phrases change what a cross-attention layer adds? For
   the paint suite's prompts (two or three phrases), each phrase's encoder outputs (mean over its
   tokens) are compared with the other phrases' of the same prompt (cosine), and so is what each
   base-stage cross-attention layer adds when it attends to that phrase alone: ``to_out(to_v(k))``
   of the phrase's projected keys, since full attention to one token returns that token's value.
   A relative difference ‖o_A − o_B‖ / ‖o‖ near 0 means paint-with-words (§4.3), which only
   re-weights the attention over tokens, has nothing different to move into a region. Then, over
   the first four layouts generated without painting, how large each expert's cross-attention
   output is against the transformer block's input (‖attn2 out‖ / ‖h‖, median over layers and
   evaluations): near 0 would mean the layer's output hardly reaches the residual stream.

Usage: .venv/bin/python scripts/stage_diagnostics.py {sr,paint,attention,tokens} [--model DIR] [--n 16] [--encoders both t5] [--outside 1]
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.features.attention_maps import token_map  # noqa: E402
from ediff_core.tools.eval.alignment import check_alignment, detect_objects, eval_prompts  # noqa: E402
from ediff_core.tools.eval.control import paint_placement_rate  # noqa: E402
from ediff_core.core.conditioning import Cond  # noqa: E402
from ediff_core.features.paint_with_words import Paint  # noqa: E402
from ediff_core.pipeline import EDiffPipeline  # noqa: E402
from ediff_core.core.request import GenerationRequest  # noqa: E402


class SuppressedOutside(Paint):
    """Paint-with-words with each painted phrase's token maps set to m − λ(1 − m): w·A then also
    lowers that phrase's logits outside its region (by λ times the in-region bias)."""

    outside = 1.0  # λ

    def condition(self, pipe: EDiffPipeline, req: GenerationRequest, field: str, cond: Cond, notes: dict) -> Cond:
        cond = super().condition(pipe, req, field, cond, notes)
        maps = cond.token_maps
        if maps is not None:
            painted = (maps.flatten(2).amax(-1) > 0)[..., None, None]  # (B, S, 1, 1): the phrases' columns
            cond = replace(cond, token_maps=torch.where(painted, maps - self.outside * (1 - maps), maps))
        return cond


class OutsideSuppressed(EDiffPipeline):
    """The pipeline with ``SuppressedOutside`` in place of ``Paint`` (a feature swapped in, core.feature)."""

    features = tuple(SuppressedOutside if f is Paint else f for f in EDiffPipeline.features)


def sr_vs_base(model: str, n: int, kinds: list[str]) -> None:
    pipe = EDiffPipeline.from_pretrained(model)
    sr = pipe.sr
    for kind in kinds:
        cascade = base = 0
        for i, item in enumerate(eval_prompts(kind, n, 0)):
            req = GenerationRequest(item.prompt, seed=i)
            pipe.sr = sr
            cascade += check_alignment(pipe(req).images[0], item.spec).aligned
            pipe.sr = []
            base += check_alignment(pipe(req).images[0].resize((64, 64), Image.BICUBIC), item.spec).aligned
        print(f"{kind}: cascade {cascade}/{n}, base 32 px upsampled bicubically {base}/{n}", flush=True)


def painted_attention(pipe: EDiffPipeline, layout: int, encoders: str) -> None:
    """Per σ, the attention share on each painted phrase's tokens inside and outside its region."""
    from ediff_core.features.attention_maps import token_columns
    from ediff_core.tools.eval.control import placement_layout
    from ediff_core.features.paint_with_words import PaintSpec

    prompt, _, sketch, phrases = placement_layout(layout)
    spec = PaintSpec(sketch, phrases)
    att = pipe(GenerationRequest(prompt, seed=layout, paint=spec, encoders=encoders, attention_maps=True)).attention
    side = att["maps"].shape[-1]
    for mask, phrase in zip(spec.masks(side, side).masks, spec.masks(side, side).phrases):
        inside = mask > 0.5
        share = att["maps"][:, 0, token_columns(att, phrase)].sum(1)  # (T, side, side)
        parts = [f"σ={s:.1f}: in {float(m[inside].mean()):.2f} out {float(m[~inside].mean()):.2f}" for s, m in zip(att["sigmas"], share) if s >= 1]
        print(f"encoders={encoders}, layout {layout}, '{phrase}': attention share on its tokens; " + ", ".join(parts[::2]), flush=True)


def paint(model: str, n: int, encoders: list[str], outside: float) -> None:
    plain = EDiffPipeline.from_pretrained(model)
    for mode in encoders:
        painted_attention(plain, 4, mode)
    suppressed = OutsideSuppressed.from_pretrained(model)
    SuppressedOutside.outside = outside
    for mode in encoders:
        for name, pipe in (("paper (inside only)", plain), (f"inside and −{outside:g}× outside", suppressed)):
            r = paint_placement_rate(pipe, n, 0, True, encoders=mode)
            objects = sum(sum(d["placed"]) for d in r.details), sum(len(d["placed"]) for d in r.details)
            print(f"encoders={mode}, bias {name}: layouts fully placed {r.hits}/{r.n}, objects in their regions {objects[0]}/{objects[1]}", flush=True)


def _disc(cx: float, cy: float, area: float, side: int) -> torch.Tensor:
    """(side, side) bool: the disc of a detection's area around its centre, on a side² grid."""
    r = max((area / torch.pi) ** 0.5, 0.5 / side)
    c = (torch.arange(side) + 0.5) / side
    return (c[None, :] - cx) ** 2 + (c[:, None] - cy) ** 2 <= r**2


def attention_selectivity(model: str, n: int, kinds: list[str]) -> None:
    pipe = EDiffPipeline.from_pretrained(model)
    pipe.sr = []  # the base stage's image is where its attention was
    for kind in kinds:
        own, other, background = [], [], []
        for i, item in enumerate(eval_prompts(kind, n, 0)):
            result = pipe(GenerationRequest(item.prompt, seed=i, attention_maps=True))
            att = result.attention
            layout = [k for k, s in enumerate(att["sigmas"]) if s >= 1]
            dets = detect_objects(result.images[0].resize((64, 64), Image.BICUBIC))
            side = att["maps"].shape[-1]
            for colour in {o.color for o in item.spec.objects}:
                mine = [_disc(d.cx, d.cy, d.area, side) for d in dets if d.color == colour]
                theirs = [_disc(d.cx, d.cy, d.area, side) for d in dets if d.color != colour]
                if not mine:
                    continue
                m = torch.stack([token_map(att, colour, 0, k) for k in layout]).mean(0)  # (side, side)
                inside = torch.stack(mine).any(0)
                others = torch.stack(theirs).any(0) & ~inside if theirs else torch.zeros_like(inside)
                rest = ~inside & ~others
                own.append(float(m[inside].mean()))
                background.append(float(m[rest].mean()) if rest.any() else float("nan"))
                if others.any():
                    other.append((float(m[inside].mean()), float(m[others].mean())))
        ratio = torch.tensor(own) / torch.tensor(background)
        line = f"{kind}: colour word's attention, own object / background: median {ratio.nanmedian():.2f} over {len(own)} objects"
        if other:
            o = torch.tensor(other)
            line += f"; own object / the other objects: median {(o[:, 0] / o[:, 1]).median():.2f} over {len(other)}"
        print(line, flush=True)


def _phrase_means(pipe: EDiffPipeline, prompt: str, phrases: list[str]) -> dict[str, torch.Tensor]:
    """Per encoder ("clip", "t5"), each phrase's mean output token (P, D) for ``prompt``."""
    from ediff_core.features.paint_with_words import phrase_positions

    outs = {"clip": pipe.encoders.clip_text.encode([prompt]).tokens[0].float(), "t5": pipe.encoders.t5.encode([prompt]).tokens[0].float()}
    pos = [phrase_positions(pipe, prompt, p) for p in phrases]
    return {name: torch.stack([outs[name][cols[k]].mean(0) for cols in pos]) for k, name in enumerate(("clip", "t5"))}


def _pairwise(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Cosines and relative differences ‖a − b‖ / mean(‖a‖, ‖b‖) of every pair of rows of ``x``."""
    cos, rel = [], []
    for a in range(len(x)):
        for b in range(a + 1, len(x)):
            cos.append(float(torch.nn.functional.cosine_similarity(x[a], x[b], dim=0)))
            rel.append(float((x[a] - x[b]).norm() / ((x[a].norm() + x[b].norm()) / 2)))
    return cos, rel


@torch.no_grad()
def token_contrast(model: str, n: int) -> None:
    from ediff_core.tools.eval.control import placement_layout

    pipe = EDiffPipeline.from_pretrained(model)
    stats: dict[str, tuple[list[float], list[float]]] = {}

    def add(key: str, x: torch.Tensor) -> None:
        c, r = _pairwise(x)
        stats.setdefault(key, ([], []))[0].extend(c)
        stats[key][1].extend(r)

    for i in range(n):
        prompt, _, _, phrase_map = placement_layout(i)
        means = _phrase_means(pipe, prompt, list(phrase_map.values()))
        for name, x in means.items():
            add(f"encoder output, {name}", x)
        for spec, net in pipe.base.networks():
            keys = {"clip": net.projector.proj_clip(means["clip"]), "t5": net.projector.proj_t5(means["t5"])}
            for layer, mod in net.unet.named_modules():
                if layer.endswith("attn2"):  # cross-attention: what it adds when it attends to one phrase only
                    for name, k in keys.items():
                        add(f"{spec.name} cross-attention output, {name}", mod.to_out[0](mod.to_v(k)))
    print(f"{n} paint-suite prompts; pairs of phrases of one prompt: median cosine, median ‖a − b‖ / ‖a‖", flush=True)
    for key, (c, r) in stats.items():
        print(f"  {key}: cosine {torch.tensor(c).median():.3f}, relative difference {torch.tensor(r).median():.3f} ({len(c)} pairs)", flush=True)

    ratios: dict[str, list[float]] = {}
    hooks = []
    for spec, net in pipe.base.networks():
        for layer, block in net.unet.named_modules():
            if layer.endswith("transformer_blocks.0"):
                hooks.append(block.register_forward_pre_hook(lambda m, args, kwargs: setattr(m, "_h", args[0] if args else kwargs["hidden_states"]), with_kwargs=True))
                hooks.append(block.attn2.register_forward_hook(
                    lambda m, args, out, block=block, name=spec.name: ratios.setdefault(name, []).append(float(out.norm() / block._h.norm()))))
    pipe.sr = []
    for i in range(min(n, 4)):
        pipe(GenerationRequest(placement_layout(i)[0], seed=i))
    for h in hooks:
        h.remove()
    print("cross-attention output / transformer block input, median over layers and evaluations: "
          + ", ".join(f"{k} {torch.tensor(v).median():.2f}" for k, v in ratios.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sr", "paint", "attention", "tokens"])
    ap.add_argument("--model", default="checkpoints/ediff-mini")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--kinds", nargs="+", default=["single", "multi", "positions", "heldout"])
    ap.add_argument("--encoders", nargs="+", default=["both", "t5"], choices=["both", "t5", "clip"])
    ap.add_argument("--outside", type=float, default=1.0, help="λ: the outside bias as a multiple of the inside one")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.what == "sr":
        sr_vs_base(args.model, args.n, args.kinds)
    elif args.what == "paint":
        paint(args.model, args.n, args.encoders, args.outside)
    elif args.what == "tokens":
        token_contrast(args.model, args.n)
    else:
        attention_selectivity(args.model, args.n, [k for k in args.kinds if k in ("single", "multi")])


if __name__ == "__main__":
    main()
