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


def run_record(args, result, arm: dict, corrector: dict, memory, fallbacks: list[str], metrics: dict,
               layout: dict | None = None) -> dict:
    """record.json: the command's arguments, the components, the memory (and whether it fell
    back), every chunk's prompts, seeds, t' and timesteps, timings, the run's metrics, library
    versions; for video runs the frame counts and which frames were corrected."""
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
        **(layout or {}),
        "metrics": metrics,
        **result.to_dict(),
        "versions": {"ardiff": ardiff.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }


def run_metrics(rows: dict[str, torch.Tensor], chunk_prompts: list[str], clip_dir=None, device: str = "cpu") -> dict:
    """Scores of each row ((chunks, F, C, H, W) frames in [-1, 1]), as the paper scores every run:

    - ``frame_consistency``: mean cosine of consecutive frames' features: the Fashion-MNIST
      network's for 1-channel frames, the story world's attribute reader's for 32 x 32 RGB;
    - ``class_accuracy`` (1-channel Fashion-MNIST frames): the share of frames that the
      classifier reads as the class their chunk's prompt names (frames whose prompt names no
      class are left out), and per frame (``class_accuracy_by_frame``);
    - with ``clip_dir`` (a local transformers CLIP): ``clip_frame_consistency`` and
      ``clip_text_similarity`` (100 x the cosine of each frame with its chunk's prompt, the
      paper's scale).
    """
    from ardiff.eval.metrics import frame_consistency

    first = next(iter(rows.values()))
    frames_per_chunk, channels, height, width = first.shape[1:]
    frame_prompts = [p for p in chunk_prompts for _ in range(frames_per_chunk)]
    out: dict[str, dict] = {name: {} for name in rows}
    network = None
    fashion = channels == 1 and min(height, width) >= 28  # what the Fashion-MNIST classifier reads
    if fashion:
        from ardiff.acdc.native import FMNIST_PROMPT_NAMES, ClassPrompts
        from ardiff.eval.features import FMNISTFeatures

        network, out_name = FMNISTFeatures(device=device), "fmnist classifier"
        classes = [ClassPrompts(FMNIST_PROMPT_NAMES, allow_none=True)(p) for p in frame_prompts]
    elif channels == 3 and (height, width) == (32, 32):
        from ardiff.worlds.reader import AttributeReader

        reader, out_name = AttributeReader.from_pretrained("story-reader"), "story-world attribute reader"
    clip = None
    if clip_dir is not None:
        from ardiff.eval.features import CLIPFeatures

        clip = CLIPFeatures(clip_dir, device=device)
        texts = clip.texts(frame_prompts)
    for name, frames in rows.items():
        frames = frames.flatten(0, 1).float()
        scores = out[name]
        if fashion:
            features, logits = network(frames)
            predicted = logits.argmax(-1).tolist()
            hits = [int(p == c) for p, c in zip(predicted, classes) if c is not None]
            if hits:
                scores["class_accuracy"] = sum(hits) / len(hits)
                scores["class_accuracy_by_frame"] = [None if c is None else int(p == c)
                                                     for p, c in zip(predicted, classes)]
        elif channels == 3 and (height, width) == (32, 32):
            features = reader.read(frames)[1]
        else:
            features = None
        if features is not None and len(frames) > 1:
            scores["frame_consistency"] = frame_consistency(features[None])
            scores["features"] = out_name
        if clip is not None:
            images = clip.images(frames)
            if len(frames) > 1:
                scores["clip_frame_consistency"] = frame_consistency(images[None])
            scores["clip_text_similarity"] = float(100 * (images * texts).sum(-1).mean())
    return out


def _model_summary(spec: str, path) -> str:
    """Parameters and fp32 weight memory of a model directory, from its config alone."""
    if path is None:
        return f"{spec}"
    directory = Path(path)
    if (directory / "config.json").is_file() and (directory / "model.safetensors").is_file():
        try:
            from ardiff.models.acdit import ACDiT
            from ardiff.models.checkpoint import load_config

            with torch.device("meta"):  # shapes only: no weights are read or allocated
                params = ACDiT(load_config(directory)).num_parameters()
            return f"{spec} ({directory}): {params / 1e6:.2f}M parameters, {4 * params / 2**20:.0f} MiB in fp32"
        except (ValueError, TypeError):
            pass
    weights = sum(f.stat().st_size for f in directory.rglob("*") if f.suffix in (".safetensors", ".bin", ".gguf"))
    return f"{spec} ({directory}): {weights / 2**20:.0f} MiB of weight files"


def describe_plan(args, prompts: list[str] | None, layout: dict | None, arm_path, corrector_path) -> str:
    """What a run would do, without loading any weights: chunks, which are corrected, the
    models' sizes and memory, steps, t' and its timesteps."""
    from ardiff.acdc.pipeline import select_chunks
    from ardiff.acdc.sdedit import sdedit_schedule

    lines = [f"ardiff acdc {args.mode}: plan (nothing loaded)"]
    if layout is not None:
        chunks = layout["num_chunks"]
        corrected = sorted(select_chunks(layout["correct"], chunks))
        lines += [f"  {layout['num_frames']} frames in {chunks} chunks of {layout['frames_per_chunk']} frames "
                  f"({layout['chunk_blocks']} ARM blocks each); prompt {args.prompt!r}",
                  f"  corrected chunks: {[k + 1 for k in corrected]} = frames "
                  f"{layout['corrected_frames'][0] if layout['corrected_frames'] else '-'}.."
                  f"{layout['corrected_frames'][-1] if layout['corrected_frames'] else '-'}",
                  f"  rolling window past the trained {layout['trained_frames']} frames: "
                  + ("none" if layout["window"] is None else
                     f"{layout['window']} blocks + {layout['sink_blocks']} sink block(s)")]
    else:
        chunks = len(prompts)
        corrected = sorted(select_chunks(args.correct, chunks))
        lines += [f"  {chunks} chunks, one per prompt; corrected: {[k + 1 for k in corrected]}; memory {args.memory}"]
    schedule = sdedit_schedule(args.t_prime, 1000, args.steps)
    lines += [f"  ARM: {_model_summary(args.arm, arm_path)}",
              f"      {args.arm_steps or 'recorded'} denoising steps per block, guidance {args.arm_cfg or 'recorded'}",
              f"  corrector: {_model_summary(args.corrector, corrector_path)}",
              f"      SDEdit from t'={schedule.t_prime:.3f} (timestep {schedule.t_start}): "
              f"{len(schedule.timesteps)} of {args.steps} steps, guidance {args.cfg or 'recorded'}",
              f"  baseline: the same ARM and seed {args.seed} without correction (a second ARM run)",
              f"  outputs: {args.out}/strip.png, index.html, arm_vs_acdc.gif, frames.safetensors, record.json"]
    return "\n".join(lines)


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
