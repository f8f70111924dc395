"""What the UI's buttons do, apart from layout: build requests, run them on a model, save PNGs.

Each public function here is a generator for Gradio: it yields a status line after every denoiser
evaluation (so Gradio can close it — cancelling the request — when the client goes away) and
finally the outputs. Bad input becomes ``gr.Error`` naming the field; a full server becomes
``gr.Error`` saying "busy, retry later".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
from PIL import Image

from ediff_core.core.images import png_info
from ediff_core.pipeline import GenerationResult, Progress
from ediff_core.core.request import GenerationRequest, RequestError
from server.fairness import TooManyRequests
from server.scheduler import Busy, Cancelled

log = logging.getLogger("ediff.ui")

KEEP_OUTPUTS_S = 3600  # generated PNGs are deleted after an hour
KEEP_OUTPUTS_BYTES = 512 * 2**20  # and the oldest go first once the folder holds more than this


class Outputs:
    """A folder this process owns for the PNGs it serves; names are generated, never client paths."""

    def __init__(self, root: str | Path | None = None, max_age_s: float = KEEP_OUTPUTS_S, max_bytes: int = KEEP_OUTPUTS_BYTES):
        self.owned = root is None  # a folder we made is ours to delete at exit; a user's is not
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="ediff-demo-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s, self.max_bytes = max_age_s, max_bytes

    def cleanup(self) -> None:
        """At exit: removes the folder if this process created it, else only the generated files."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            self.prune(max_age_s=0)

    def save(self, result: GenerationResult, tag: str = "ediff") -> list[str]:
        """Saves each image as PNG with its metadata embedded; returns the paths."""
        self.prune()
        folder = self.root / uuid.uuid4().hex[:16]
        return [str(_write_png(img, folder / f"{tag}_{meta['seed']}.png", png_info(meta))) for img, meta in zip(result.images, result.metadata)]

    def save_image(self, img: Image.Image, name: str) -> str:
        """Saves an auxiliary image (e.g. an attention overlay) under a fresh generated folder."""
        return str(_write_png(img, self.root / uuid.uuid4().hex[:16] / name))

    def save_example(self, img: Image.Image, name: str) -> str:
        """A file the UI offers as an example: kept for the life of the process (never pruned)."""
        return str(_write_png(img, self.root / "examples" / name))

    def prune(self, max_age_s: float | None = None) -> None:
        """Deletes generated files older than ``max_age_s``, then the oldest while the folder
        holds more than ``max_bytes`` (examples stay)."""
        max_age_s = self.max_age_s if max_age_s is None else max_age_s
        now = time.time()
        kept: list[tuple[float, int, Path]] = []
        for f in self.root.glob("*/*"):
            if f.parent.name == "examples":
                continue
            try:
                st = f.stat()
                if now - st.st_mtime >= max_age_s:
                    _remove(f)
                else:
                    kept.append((st.st_mtime, st.st_size, f))
            except OSError:
                pass
        total = sum(size for _, size, _ in kept)
        for _, size, f in sorted(kept, key=lambda k: k[0]):
            if total <= self.max_bytes:
                break
            _remove(f)
            total -= size


def _write_png(img: Image.Image, path: Path, pnginfo: Any = None) -> Path:
    """Writes a PNG under a temporary name and renames it into place: a process killed mid-write
    leaves no half-written file where the UI would serve it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    img.save(part, format="PNG", pnginfo=pnginfo)
    os.replace(part, path)
    return path


def _remove(f: Path) -> None:
    """Deletes a generated file and its folder once empty."""
    try:
        f.unlink()
        if not any(f.parent.iterdir()):
            f.parent.rmdir()
    except OSError:
        pass


@contextmanager
def user_errors() -> Iterator[None]:
    """Turns library errors into messages for the user (and for gradio_client callers).

    A user's error is one log line, not a traceback (``print_exception=False``).
    """
    try:
        yield
    except RequestError as e:
        log.info("refused: %s", e)
        raise gr.Error(str(e), title="Invalid input", print_exception=False) from None
    except TooManyRequests as e:
        log.info("throttled: %s", e)
        raise gr.Error(f"Too many requests from you at once; retry when one has finished. ({e})", title="Too many requests", print_exception=False) from None
    except Busy as e:
        log.info("busy: %s", e)
        raise gr.Error(f"Server busy, retry later. ({e})", title="Busy", print_exception=False) from None
    except Cancelled as e:
        raise gr.Error(f"Cancelled: {e}", print_exception=False) from None


def status_line(p: Progress) -> str:
    return f"{p.stage} step {p.step + 1}/{p.steps} · σ = {p.sigma:.4g} · expert **{p.expert}** · {p.done}/{p.total} evaluations"


def drive(events: Iterator[Progress | GenerationResult], progress: gr.Progress | None) -> Iterator[str | GenerationResult]:
    """Relays progress to the bar and as status lines; yields the result last."""
    for event in events:
        if isinstance(event, Progress):
            if progress is not None:
                progress((event.done, event.total), desc=f"{event.stage} · {event.expert}")
            yield status_line(event)
        else:
            yield event


def schedule_rows(meta: dict) -> list[list[Any]]:
    """One row per denoiser evaluation: stage, step, σ, expert (from metadata["experts"])."""
    return [[stage, e["step"], e["sigma"], e["expert"]] for stage, steps in meta.get("experts", {}).items() for e in steps]


def schedule_summary(meta: dict) -> str:
    """Which expert covered which σ range in each stage, as Markdown."""
    lines = []
    for stage, steps in meta.get("experts", {}).items():
        runs: list[list] = []
        for e in steps:
            if runs and runs[-1][0] == e["expert"]:
                runs[-1][2] = e["sigma"]
                runs[-1][3] += 1
            else:
                runs.append([e["expert"], e["sigma"], e["sigma"], 1])
        parts = [f"**{n}** σ {a:.3g}→{b:.3g} ({k} eval{'s' if k > 1 else ''})" for n, a, b, k in runs]
        lines.append(f"- {stage}: " + " · ".join(parts))
    notes = meta.get("truncated")
    if notes:
        lines.append("- ⚠ " + "; ".join(notes))
    return "\n".join(lines)


def attention_gallery(result: GenerationResult, outputs: Outputs) -> list[tuple[str, str]]:
    """Per-word cross-attention overlays of image 0 (Fig. 3) when the request recorded them."""
    if result.attention is None or result.attention["maps"].shape[0] == 0:
        return []
    from ediff_core.features.attention_maps import attention_overlay

    items = []
    for word in ["null", *result.attention["words"]]:
        try:
            img = attention_overlay(result, word, 0)
        except ValueError:
            continue
        items.append((outputs.save_image(img, f"attention_{word}.png"), "<null>" if word == "null" else word))
    return items


def build_request(prompt: str, negative_prompt: str, seed: float, steps: float | None, guidance: float | None, sampler: str | None, encoders: str, num_images: float, **extra: Any) -> GenerationRequest:
    """A ``GenerationRequest`` from UI values (numbers arrive as floats from gr.Number)."""

    def as_int(v: Any, field: str) -> Any:
        if v is None or v == "":
            return None
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, (int, float)):
            return v
        try:
            return int(str(v))
        except ValueError:
            raise RequestError(field, f"must be an integer; got {v!r}") from None

    return GenerationRequest(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        seed=as_int(seed, "seed") if seed not in (None, "") else 0,
        steps=as_int(steps, "steps"),
        guidance=None if guidance is None else float(guidance),
        sampler=sampler or None,
        encoders=encoders or "both",
        num_images=as_int(num_images, "num_images") or 1,
        **extra,
    )


def run_single(start: Callable[[], Iterator], outputs: Outputs, progress: gr.Progress | None, tag: str) -> Iterator[tuple]:
    """Drives one request; yields (status,) while running and the output tuple at the end:
    (gallery, files, schedule rows, schedule summary, metadata, attention, status).

    ``start()`` builds the request and returns the model's event iterator; closing this
    generator (Gradio does when the client goes away) closes that iterator, which cancels.
    """
    result = None
    with user_errors():
        with closing(start()) as events:
            for item in drive(events, progress):
                if isinstance(item, str):
                    yield (item,)
                else:
                    result = item
    assert result is not None
    paths = outputs.save(result, tag)
    meta = result.metadata[0]
    gallery = [(p, f"seed {m['seed']}") for p, m in zip(paths, result.metadata)]
    attention = attention_gallery(result, outputs)
    done = f"done in {result.timings.get('total', 0):.2f} s · {len(paths)} image(s) · model {meta.get('model')}"
    yield (gallery, paths, schedule_rows(meta), schedule_summary(meta), json.dumps(result.metadata, indent=1, default=str), attention, done)
