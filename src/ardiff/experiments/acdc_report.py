"""What an `ardiff acdc story|video` run writes: a labelled strip (the ARM alone with the same
seed above ARM + ACDC, chunk borders, corrected chunks marked), a side-by-side GIF, an HTML
page with every chunk's prompts, the frames themselves, and record.json with everything
needed to run it again."""

from __future__ import annotations

import html
import platform
from pathlib import Path

import numpy as np
import torch

from ardiff.experiments.common import write_json
from ardiff.utils.media import font, save_video_grid, to_uint8

ROW_LABELS = ("ARM alone", "ARM + ACDC")
CORRECTED_COLOUR = (0, 160, 60)


def run_record(args, result, arm: dict, corrector: dict, memory, fallbacks: list[str]) -> dict:
    """record.json: the command's arguments, the components, the memory (and whether it fell
    back), every chunk's prompts, seeds, t' and timesteps, timings and library versions."""
    import diffusers
    import transformers

    import ardiff

    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "prog", "flag_names", "debug")}
    return {
        "command": f"ardiff acdc {args.mode}",
        "arguments": arguments,
        "arm": arm,
        "corrector": corrector,
        "memory": None if memory is None else {"spec": args.memory, "class": type(memory).__name__,
                                               "fell_back": bool(fallbacks), "fallback_reasons": fallbacks},
        "t_prime": args.t_prime,
        "seed": args.seed,
        "baseline": "the same ARM and seed without correction (the 'ARM alone' row)",
        **result.to_dict(),
        "versions": {"ardiff": ardiff.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }


def _frames_uint8(frames: torch.Tensor, scale: int) -> np.ndarray:
    """(T, C, H, W) in [-1, 1] -> (T, H*scale, W*scale, 3) uint8."""
    x = to_uint8(frames.float()).transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x.repeat(scale, axis=1).repeat(scale, axis=2)


def render_strip(rows: list[torch.Tensor], labels: list[str], corrected: list[bool], t_primes: list,
                 scale: int) -> "Image.Image":  # noqa: F821
    """rows: (N, F, C, H, W) each (N chunks of F frames). Labels on the left, a chunk header on
    top, gaps and lines between chunks, corrected chunks outlined in the ACDC row."""
    from PIL import Image, ImageDraw

    n, f = rows[0].shape[:2]
    h, w = rows[0].shape[-2] * scale, rows[0].shape[-1] * scale
    label_font, head_font = font(14), font(12)
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=label_font)) for t in labels) + 16
    gap, pad, head_h = 10, 4, 34
    chunk_w = f * w + (f - 1) * 2
    width = label_w + n * chunk_w + (n - 1) * gap + 2 * pad
    height = head_h + len(rows) * (h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k in range(n):
        left = label_w + pad + k * (chunk_w + gap)
        draw.text((left, 2), f"chunk {k + 1}", fill=(0, 0, 0), font=head_font)
        if corrected[k]:
            draw.text((left, 17), f"corrected, t'={t_primes[k]:.2f}", fill=CORRECTED_COLOUR, font=head_font)
        else:
            draw.text((left, 17), "kept", fill=(120, 120, 120), font=head_font)
        if k:  # the border between chunks
            x = left - gap // 2
            draw.line([(x, head_h - 2), (x, height - 2)], fill=(170, 170, 170), width=2)
    for r, (frames, label) in enumerate(zip(rows, labels)):
        top = head_h + r * (h + pad)
        draw.text((6, top + h // 2 - 8), label, fill=(0, 0, 0), font=label_font)
        pixels = _frames_uint8(frames.flatten(0, 1), scale)
        for k in range(n):
            left = label_w + pad + k * (chunk_w + gap)
            for j in range(f):
                canvas.paste(Image.fromarray(pixels[k * f + j]), (left + j * (w + 2), top))
            if corrected[k] and r == len(rows) - 1:
                draw.rectangle([left - 3, top - 3, left + chunk_w + 2, top + h + 2], outline=CORRECTED_COLOUR,
                               width=3)
    return canvas


def write_report(result, baseline, record: dict, out: Path) -> None:
    """strip.png, arm_vs_acdc.gif, index.html, record.json and frames.safetensors (the two rows'
    frames, (chunks, frames per chunk, C, H, W) in [-1, 1]) in ``out``."""
    from ardiff.utils.io import atomic_save_safetensors

    out.mkdir(parents=True, exist_ok=True)
    arm_alone, acdc = baseline.uncorrected, result.corrected
    atomic_save_safetensors({"arm_alone": arm_alone.float(), "acdc": acdc.float()}, out / "frames.safetensors")
    chunks = record["chunks"]
    scale = max(1, 96 // max(acdc.shape[-2:]))
    strip = render_strip([arm_alone, acdc], list(ROW_LABELS), [c["corrected"] for c in chunks],
                         [c["t_prime"] for c in chunks], scale)
    strip.save(out / "strip.png")
    pair = torch.stack([arm_alone.flatten(0, 1), acdc.flatten(0, 1)]).transpose(1, 2).float()  # (2, C, T, H, W)
    save_video_grid(pair, out / "arm_vs_acdc.gif", fps=4, nrow=2, scale=scale, captions=list(ROW_LABELS))
    write_json(out / "record.json", record)
    (out / "index.html").write_text(_html(record))


def _html(record: dict) -> str:
    e = html.escape
    def corrected(chunk: dict) -> str:
        return f"yes, t&prime;={chunk['t_prime']:.2f}" if chunk["corrected"] else "no"

    rows = "\n".join(
        f"<tr><td>{c['index'] + 1}</td><td>{e(c['arm_prompt'])}</td><td>{e(c['corrector_prompt'] or '')}</td>"
        f"<td>{corrected(c)}</td></tr>" for c in record["chunks"])
    memory = record.get("memory")
    memory_line = "" if memory is None else (
        f"<p>Memory: {e(memory['spec'])} ({e(memory['class'])})"
        + (f" &mdash; <b>fell back</b>: {e('; '.join(memory['fallback_reasons']))}" if memory["fell_back"] else "")
        + "</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(record['command'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
table{{border-collapse:collapse}} img{{image-rendering:pixelated}}</style></head><body>
<h1>{e(record['command'])}</h1>
<p>Top row: the ARM alone with the same seed (no correction). Bottom row: ARM + ACDC, the frames that entered the
ARM's context (corrected chunks outlined in green).</p>
<img src="strip.png" alt="ARM alone vs ARM + ACDC">
<p><img src="arm_vs_acdc.gif" alt="ARM alone vs ARM + ACDC, animated"></p>
<p>ARM: {e(str(record['arm'].get('spec')))} &middot; corrector: {e(str(record['corrector'].get('spec')))} &middot;
seed {record['seed']} &middot; t&prime; {record['t_prime']}</p>
{memory_line}
<table><tr><th>chunk</th><th>prompt as given (the ARM's)</th><th>prompt to the corrector (memory's rewrite)</th>
<th>corrected</th></tr>
{rows}
</table>
<p>Everything needed to run it again: <a href="record.json">record.json</a>.</p>
</body></html>
"""
