"""``python -m ediff_core {generate,info,train,embed,export-data,eval,bench}``: thin shells over the library."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import MISSING
from pathlib import Path

from ..core.request import REQUEST_DEFAULTS, REQUEST_FIELDS, RequestError, pick_device


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    # The scalar fields come from the request schema (request.REQUEST_FIELDS): one flag each,
    # --no-NAME for a field that defaults to true.
    for name, spec in REQUEST_FIELDS.items():
        flag, default = "--" + name.replace("_", "-"), REQUEST_DEFAULTS[name]
        if spec.kind is bool:
            if default is True:
                p.add_argument("--no-" + flag[2:], dest=f"no_{name}", action="store_true", help=f"turn off: {spec.help}")
            else:
                p.add_argument(flag, action="store_true", help=spec.help)
            continue
        allowed = f" ({' | '.join(spec.choices)})" if spec.choices else ""
        p.add_argument(flag, type=spec.kind, default=None if default is MISSING else default, help=spec.help + allowed + ("; the model's default if omitted" if default is None else ""))
    p.add_argument("--style-image", default=None, help="reference image whose CLIP embedding sets the style")
    p.add_argument("--style-sigma", type=float, nargs=2, default=None, metavar=("LO", "HI"), help="apply the style only for σ in [LO, HI]")
    p.add_argument("--paint", default=None, help="colour sketch for paint-with-words")
    p.add_argument("--phrase", action="append", default=[], help="'#RRGGBB=words of the prompt' (repeatable)")
    p.add_argument("--switch-prompt", default=None, help="prompt used below --switch-sigma (Fig. 4)")
    p.add_argument("--switch-sigma", type=float, default=None)
    p.add_argument("--attention-maps", action="store_true", help="also write per-word cross-attention maps (PNG) next to each image")
    p.add_argument("--out", default="outputs", help="output folder, or a .png path for one image")


def _request_from(ns: dict):
    """A ``GenerationRequest`` from flag values (CLI namespace or a --prompts-file line)."""

    from ..core.request import GenerationRequest

    style = None
    if ns.get("style_image"):
        style = _open_image(ns["style_image"], "style_image")
    paint = None
    if ns.get("paint"):
        from ..features.paint_with_words import PaintSpec

        paint = PaintSpec.from_mapping(_open_image(ns["paint"], "paint"), ns.get("phrase") or [])
    elif ns.get("phrase"):
        raise RequestError("phrase", "--phrase needs --paint (the sketch it maps colours of)")
    style_sigma = ns.get("style_sigma")
    if style_sigma is not None:
        if not isinstance(style_sigma, (list, tuple)) or len(style_sigma) != 2:
            raise RequestError("style_sigma", f"needs two numbers LO HI; got {style_sigma!r}")
        style_sigma = tuple(style_sigma)
    scalars = {k: (not ns.get(f"no_{k}", False)) if REQUEST_FIELDS[k].kind is bool and REQUEST_DEFAULTS[k] is True else ns.get(k, REQUEST_DEFAULTS[k])
               for k in REQUEST_FIELDS}
    scalars["prompt"] = ns.get("prompt") or ""
    return GenerationRequest(
        **scalars,
        style_image=style,
        style_sigma=style_sigma,
        paint=paint,
        switch_prompt=ns.get("switch_prompt"),
        switch_sigma=ns.get("switch_sigma"),
        attention_maps=bool(ns.get("attention_maps", False)),
    )


def _open_image(path: str, field: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise RequestError(field, f"no such file: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise RequestError(field, f"{path} is not a readable image ({e})") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from ..core.images import save_png
    from ..pipeline import EDiffPipeline

    lines = []
    if args.prompts_file:
        defaults = {k: v for k, v in vars(args).items()}
        for n, line in enumerate(Path(args.prompts_file).read_text().splitlines(), 1):
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RequestError("prompts_file", f"line {n} is not JSON: {e}") from None
                unknown = set(item) - set(defaults)
                if unknown:
                    raise RequestError("prompts_file", f"line {n} has unknown keys {sorted(unknown)}")
                if isinstance(item.get("phrase"), str):
                    item["phrase"] = [item["phrase"]]
                lines.append({**defaults, **item})
    else:
        lines.append(vars(args))
    requests = [(_request_from(ns), ns["out"]) for ns in lines]
    for req, _ in requests:
        req.validate()
    pipe = EDiffPipeline.from_pretrained(args.model, device=pick_device(args.device))
    summaries = []
    for k, (req, out) in enumerate(requests):
        result, attention_paths = None, []
        for event in pipe.generate(req):
            result = event
            if not args.json and hasattr(event, "done"):
                print(f"\r[{k + 1}/{len(requests)}] {event.stage} step {event.step + 1}/{event.steps} σ={event.sigma:.3g} {event.expert}   ", end="", file=sys.stderr)
        if not args.json:
            print(file=sys.stderr)
        paths = []
        for i, (img, meta) in enumerate(zip(result.images, result.metadata)):
            target = Path(out)
            if target.suffix.lower() == ".png":
                path = target if len(result.images) == 1 else target.with_name(f"{target.stem}_{i}.png")
            else:
                path = target / f"{k:04d}_{meta['seed']}.png"
            paths.append(str(save_png(img, path, meta)))
            if result.attention is not None:
                attention_paths += _write_attention_maps(result, i, path)
        summary = {"outputs": paths, "seed": req.seed, "settings": result.metadata[0], "experts": result.metadata[0]["experts"], "timings": result.timings}
        if result.attention is not None:
            summary["attention_maps"] = attention_paths
        summaries.append(summary)
        if not args.json:
            print("\n".join(paths))
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1, default=str))
    return 0


def _write_attention_maps(result, index: int, image_path: Path) -> list[str]:
    """``<image>_attn_<word>.png`` for each word of the prompt and the null token (Fig. 3)."""
    from ..features.attention_maps import attention_overlay

    if result.attention["maps"].shape[0] == 0:
        return []
    out = []
    for word in ["null", *result.attention["words"]]:
        path = image_path.with_name(f"{image_path.stem}_attn_{word}.png")
        attention_overlay(result, word, index).save(path)
        out.append(str(path))
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from ..pipeline import EDiffPipeline

    info = EDiffPipeline.from_pretrained(args.model, device=pick_device(args.device)).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model {info['name']}  resolutions {info['resolutions']}  parameters {info['parameters']:,}")
    for k, e in info["encoders"].items():
        print(f"  encoder {k}: {e}")
    for st in info["stages"]:
        print(f"  stage {st['name']} ({st['resolution']}px)")
        for e in st["experts"]:
            hi = "inf" if e["sigma_max"] is None else f"{e['sigma_max']:.4g}"
            print(f"    {e['name']:>20}  σ ∈ [{e['sigma_min']:.4g}, {hi})  {e['parameters']:,} params")
    return 0


def parse_dropout(items: list[str]) -> dict[str, float]:
    """``--dropout`` values ``NAME=RATE`` over the paper's rates (the names not given keep theirs)."""
    from ..core.conditioning import DROPOUT_RATES

    rates = dict(DROPOUT_RATES)
    for item in items:
        name, _, value = item.partition("=")
        if name not in rates:
            raise ValueError(f"--dropout: the name must be one of {', '.join(rates)}; got {item!r}")
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"--dropout: {name} needs a rate in [0, 1], as {name}=0.5; got {item!r}")
        rates[name] = rate
    return rates


TRAIN_OVERRIDES = ("base_steps", "expert_steps", "sr_steps", "threads", "batch_size", "data_workers", "lr", "seed", "save_every", "precision", "grounding", "encode_in_workers")


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.spec import DataSpec
    from .training import run

    if not args.out:
        raise ValueError("out: give --out FOLDER (or 'out' in the --config file)")
    overrides = {k: getattr(args, k) for k in TRAIN_OVERRIDES if getattr(args, k) is not None} | getattr(args, "config_overrides", {})
    if args.dropout:
        overrides["dropout"] = parse_dropout([f"{k}={v}" for k, v in args.dropout.items()] if isinstance(args.dropout, dict) else args.dropout)
    data = DataSpec(args.data, args.min_side, args.shuffle_buffer)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "config_overrides", "command")} | getattr(args, "config_overrides", {})
    run(args.preset, args.stage, Path(args.out), resume=args.resume, overrides=overrides, device=args.device, minutes=args.minutes,
        data=data, t5=args.t5, clip=args.clip, embeddings=args.embeddings, ddp_timeout=args.ddp_timeout, settings=settings)
    return 0


def apply_config_file(parser: argparse.ArgumentParser, train: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """``train --config FILE``: the file's settings become the flags' defaults, so flags given win."""
    from dataclasses import fields

    from .run_config import load_config_file
    from .training import TrainConfig

    settings = {str(k).replace("-", "_"): v for k, v in load_config_file(args.config).items()}
    flags = {a.dest for a in train._actions if a.dest not in ("help", "config")}
    fields_ = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - flags - fields_)
    if unknown:
        raise ValueError(f"config: unknown setting(s) {unknown} in {args.config}; allowed: the train flags ({', '.join(sorted(flags))}) "
                         f"and TrainConfig fields ({', '.join(sorted(fields_ - flags))})")
    train.set_defaults(**{k: v for k, v in settings.items() if k in flags})
    resolved = parser.parse_args(argv)
    resolved.config_overrides = {k: v for k, v in settings.items() if k not in flags}
    return resolved


def cmd_embed(args: argparse.Namespace) -> int:
    from ..data.spec import DataSpec, open_data
    from ..core.embed import load_encoder_set
    from .embed_cache import build_cache
    from .training import PRESETS

    if args.preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {args.preset!r}")
    cfg = PRESETS[args.preset]
    source = open_data(DataSpec(args.data, args.min_side))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out: {out} exists and is not empty; give a new folder for the cache")
    if (args.t5 is None) != (args.clip is None):
        raise ValueError("t5, clip: give both encoders (folders or Hub ids), or neither (the --model folder's)")
    t5, clip = (args.t5, args.clip) if args.t5 else _model_encoders(args.model)
    enc = load_encoder_set(t5, clip, pick_device(args.device))
    build_cache(source, enc, out, cfg.base_resolution, cfg.sr_resolution, args.shard_samples, args.batch_size, args.dtype)
    return 0


def _model_encoders(model: str | None) -> tuple[str, str]:
    """The T5 and CLIP a model (or run) folder names (default: the embedded ediff-mini)."""
    from ..core.model_folder import default_model_path, read_index

    folder = Path(model) if model else default_model_path()
    if (folder / "model_index.json").exists():
        names = read_index(folder).encoders
    elif (folder / "t5").is_dir() and (folder / "clip").is_dir():
        names = {"t5": "t5", "clip": "clip"}
    else:
        raise FileNotFoundError(f"model: {folder} has neither a model_index.json nor t5/ and clip/ folders")
    return tuple(str(folder / names[k]) if (folder / names[k]).exists() else names[k] for k in ("t5", "clip"))


def cmd_export_data(args: argparse.Namespace) -> int:
    from ..data.export import export_shapes

    spec = export_shapes(Path(args.out), args.n, args.format, args.size, args.per_shard)
    print(f"wrote {args.n} Shapes World samples; train on them with: python -m ediff_core train --data '{spec}' ...")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import main as eval_main

    return eval_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ediff_core", description="eDiff-I: text-to-image with an ensemble of expert denoisers")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", default=None, help="model folder or Hub id (default: checkpoints/ediff-mini)")
        q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        q.add_argument("--json", action="store_true", help="print a JSON summary")

    g = sub.add_parser("generate", help="text to image through the full cascade")
    common(g)
    _add_generation_flags(g)
    g.add_argument("--prompts-file", default=None, help="JSONL: one request per line, keys = flag names with _")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe the model: encoders, experts and σ intervals, parameters")
    common(i)
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train encoders, base experts and super-resolution from a preset")
    t.add_argument("--config", default=None, help="a .yaml or .toml file of these settings (keys: the flags with _); flags given win")
    t.add_argument("--preset", default="mini")
    t.add_argument("--stage", default="all", help="encoders | base | experts | sr | all")
    t.add_argument("--out", default=None, help="the run / model folder (required, here or in --config)")
    t.add_argument("--resume", action="store_true")
    for name in ("base-steps", "expert-steps", "sr-steps", "threads", "data-workers", "seed", "save-every"):
        t.add_argument(f"--{name}", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None, help="the global batch, split over the ranks under torchrun")
    _add_data_flags(t)
    t.add_argument("--t5", default=None, help="frozen T5 encoder: folder or Hub id (e.g. google/t5-v1_1-xxl); default: train the mini T5 into the run")
    t.add_argument("--clip", default=None, help="frozen open_clip CLIP: folder or Hub id; default: train the mini CLIP into the run")
    t.add_argument("--embeddings", default=None, help="an `embed` cache read instead of running the encoders (refused if made with other weights)")
    t.add_argument("--ddp-timeout", type=float, default=1800.0, help="torchrun: seconds a collective may wait for a rank before the job fails")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the base and SR jobs train (auto: CUDA when present)")
    t.add_argument("--minutes", type=float, default=None, help="wall-clock budget: the running job saves and exports its step when it is spent; --resume continues")
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate (preset mini: 3e-4; the paper: 1e-4), e.g. a lower one to anneal a resumed run")
    t.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                   help="fp32 (default), or bf16 autocast for forward and backward with fp32 master weights, AdamW state and EMA (CPUs with AMX, CUDA)")
    t.add_argument("--encode-in-workers", action=argparse.BooleanOptionalAction, default=None,
                   help="on the CPU, the data workers also run the frozen encoders, beside the U-Net's step (default off: on 2 cores it was slower, 0.87-1.13x, model card)")
    t.add_argument("--grounding", type=float, default=None, metavar="W",
                   help="weight of the token-grounding loss pulling each object word's cross-attention into its mask (0, the default: the paper's training)")
    t.add_argument("--dropout", action="append", metavar="NAME=RATE",
                   help="per-embedding training dropout (§4.2), repeatable: clip_text, t5 or clip_image = a rate in [0, 1]")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("embed", help="precompute T5 and CLIP embeddings of a dataset into a cache for train --embeddings")
    m.add_argument("--data", required=True, help="an imagefolder path or WebDataset shards (as train --data)")
    m.add_argument("--out", required=True, help="a new cache folder")
    m.add_argument("--min-side", type=int, default=0, help="images with a shorter side are skipped (0: the SR resolution)")
    m.add_argument("--model", default=None, help="model or run folder whose t5/ and clip/ to use (default: checkpoints/ediff-mini)")
    m.add_argument("--t5", default=None, help="T5 folder or Hub id (with --clip; instead of --model)")
    m.add_argument("--clip", default=None, help="open_clip folder or Hub id (with --t5)")
    m.add_argument("--preset", default="mini", help="the training preset whose resolutions the image embeddings are made at")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="storage precision (fp16 halves the size)")
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--shard-samples", type=int, default=1024, help="samples per safetensors shard")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.set_defaults(func=cmd_embed)

    x = sub.add_parser("export-data", help="write Shapes World as an imagefolder or WebDataset shards (to try train --data)")
    x.add_argument("--out", required=True)
    x.add_argument("--n", type=int, required=True, help="how many scenes")
    x.add_argument("--format", default="imagefolder", choices=["imagefolder", "webdataset"])
    x.add_argument("--size", type=int, default=64, help="image side in pixels")
    x.add_argument("--per-shard", type=int, default=100, help="webdataset: samples per .tar shard")
    x.set_defaults(func=cmd_export_data)

    e = sub.add_parser("eval", help="alignment and quality metrics; the paper-style experiments")
    common(e)
    e.add_argument("--suite", default="alignment", help="alignment | paint | style | paper")
    e.add_argument("--n", type=int, default=None, help="prompts per category")
    e.add_argument("--out", default=None)
    e.add_argument("--quick", action="store_true")
    e.add_argument("--steps", type=int, default=None, help="base sampler steps (default: the model's)")
    e.add_argument("--guidance", type=float, default=None, help="classifier-free guidance w for the alignment, paint and style suites (default: the model's)")
    e.add_argument("--style-strength", type=float, default=None, help="style suite: the reference's strength (default 1)")
    e.add_argument("--pww-weight", type=float, default=None, help="paint suite: paint-with-words w′ (default 1)")
    e.add_argument("--encoders", default=None, help="both | t5 | clip: the text encoders every suite but paper conditions on (default both; §5.2)")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="speed and memory figures")
    common(b)
    b.add_argument("--quick", action="store_true")
    b.add_argument("--compile", default="none", choices=["auto", "tensorrt", "torch", "none"])
    b.set_defaults(func=cmd_bench)
    p.train_parser = t
    return p


def _add_data_flags(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", default="shapes", help="shapes | an imagefolder path (images + metadata.jsonl) | WebDataset shards, e.g. 'data/{000000..000099}.tar'")
    t.add_argument("--min-side", type=int, default=0, help="images with a shorter side are skipped and counted (0: the SR resolution)")
    t.add_argument("--shuffle-buffer", type=int, default=1000, help="WebDataset: shuffle buffer, samples per reader")


def main(argv: list[str] | None = None) -> int:
    from .accel import tune_cpu_allocator
    from .distributed import RankFailure

    tune_cpu_allocator()  # process-wide, so set by the entry point: glibc heap thresholds (docs/performance.md)

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train" and args.config:
            args = apply_config_file(parser, parser.train_parser, argv, args)
        return args.func(args)
    except (RequestError, FileNotFoundError, NotADirectoryError, ValueError, RankFailure) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
