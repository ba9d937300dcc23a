"""`ardiff acdc story|video`: run ACDC with components chosen on the command line.

Component specs (every model from a local path; nothing is downloaded):

  --arm        builtin (the shipped Moving Fashion-MNIST ACDiT) | acdit:DIR | emu3:DIR | janus:DIR
  --corrector  builtin (the shipped Fashion-MNIST ACDiT, block-wise SDEdit) | native:DIR | sd:DIR |
               animatediff:DIR (a diffusers AnimateDiff directory) |
               animatediff:SD_DIR,motion=ADAPTER_DIR | none
  --memory     rule | none | smollm2 | transformers:PATH (directory or .gguf file) |
               openai:MODEL@BASE_URL (key from $OPENAI_API_KEY)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _split(spec: str, what: str) -> tuple[str, str | None]:
    kind, _, arg = spec.partition(":")
    return kind.strip().lower(), (arg or None)


def _need(arg, spec, what):
    if not arg:
        raise ValueError(f"--{what} {spec!r} needs a path: {spec.split(':')[0]}:PATH")
    return arg


def build_arm(spec: str, steps: int, cfg: float, device: str):
    kind, arg = _split(spec, "arm")
    if kind in ("builtin", "acdit"):
        from ardiff.acdc.native import ACDiTARM
        from ardiff.generate.settings import SamplingSettings
        from ardiff.models.acdit import ACDiT
        from ardiff.models.resolve import resolve_model_dir

        path = resolve_model_dir("moving-fmnist" if kind == "builtin" else _need(arg, spec, "arm"))
        settings = SamplingSettings.recorded(path).but(cfg_scale=cfg, num_steps=steps)
        return ACDiTARM(ACDiT.from_pretrained(path, device=device), num_steps=settings.num_steps,
                        cfg_scale=settings.cfg_scale)
    if kind in ("emu3", "janus"):
        from ardiff.acdc import transformers_arms

        cls = transformers_arms.Emu3ARM if kind == "emu3" else transformers_arms.JanusARM
        return cls.from_pretrained(_need(arg, spec, "arm"), device=device)
    raise ValueError(f"--arm {spec!r}: use builtin, acdit:DIR, emu3:DIR or janus:DIR")


def build_corrector(spec: str, steps: int, cfg: float | None, device: str):
    kind, arg = _split(spec, "corrector")
    if kind == "none":
        return None
    if kind in ("builtin", "native"):
        from ardiff.acdc.native import NativeCorrector
        from ardiff.generate.settings import SamplingSettings
        from ardiff.models.acdit import ACDiT
        from ardiff.models.resolve import resolve_model_dir

        path = resolve_model_dir("fmnist" if kind == "builtin" else _need(arg, spec, "corrector"))
        settings = SamplingSettings.recorded(path).but(cfg_scale=cfg, num_steps=steps)
        return NativeCorrector(ACDiT.from_pretrained(path, device=device), num_steps=settings.num_steps,
                               cfg_scale=settings.cfg_scale)
    if kind in ("sd", "animatediff"):
        from ardiff.acdc import correctors

        cls = correctors.SDEditCorrector if kind == "sd" else correctors.AnimateDiffCorrector
        kwargs = {"num_inference_steps": steps, "device": device}
        arg, _, adapter = (arg or "").partition(",motion=")
        if adapter:  # a Stable Diffusion directory plus a MotionAdapter directory
            kwargs["motion_adapter"] = adapter
        if cfg is not None:
            kwargs["guidance_scale"] = cfg
        return cls.from_pretrained(_need(arg, spec, "corrector"), **kwargs)
    raise ValueError(f"--corrector {spec!r}: use builtin, native:DIR, sd:DIR, animatediff:DIR or none")


def build_memory_from_spec(spec: str):
    from ardiff.acdc.memory import build_memory

    kind, arg = _split(spec, "memory")
    if kind in ("rule", "none", "smollm2"):
        return build_memory(kind)
    if kind == "transformers":
        return build_memory("transformers", path=_need(arg, spec, "memory"))
    if kind == "openai":
        model, _, base_url = (arg or "").partition("@")
        if not model or not base_url:
            raise ValueError(f"--memory {spec!r}: use openai:MODEL@BASE_URL (e.g. openai:gpt-4o-mini@https://api.openai.com/v1)")
        return build_memory("openai", model=model, base_url=base_url)
    raise ValueError(f"--memory {spec!r}: use rule, none, smollm2, transformers:PATH or openai:MODEL@BASE_URL")


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file (one prompt per line, or a JSON list of strings)")
    text = p.read_text()
    if p.suffix == ".json":
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(s, str) for s in prompts):
            raise ValueError(f"--prompts {path}: a .json file must hold a list of strings")
        return prompts
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_masks(specs: list[str] | None) -> dict[int, torch.Tensor]:
    """``IDX:PNG`` -> chunk index -> (1, 1, H, W) mask, white = may change."""
    import numpy as np
    from PIL import Image

    masks = {}
    for spec in specs or []:
        index, _, path = spec.partition(":")
        if not index.isdigit() or not Path(path).is_file():
            raise ValueError(f"--mask {spec!r}: use CHUNK_INDEX:MASK.png (an existing image; white = may change)")
        array = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        masks[int(index)] = torch.from_numpy((array > 0.5).astype(np.float32))[None, None]
    return masks


def write_outputs(result, out: Path) -> dict:
    from ardiff.utils.media import save_image_grid, save_video_grid

    out.mkdir(parents=True, exist_ok=True)
    before, after = result.frames(corrected=False), result.frames(corrected=True)
    n = before.shape[0]
    save_image_grid(torch.cat([before, after]).float(), out / "strip.png", nrow=n)  # top: ARM alone, bottom: ACDC
    pair = torch.stack([before, after]).transpose(1, 2).float()  # (2, C, F, H, W)
    save_video_grid(pair, out / "uncorrected_vs_corrected.gif", fps=4, nrow=2)
    record = result.to_dict()
    (out / "record.json").write_text(json.dumps(record, indent=2))
    return record


def cmd_acdc(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    arm = build_arm(args.arm, args.arm_steps, args.arm_cfg, device)
    corrector = build_corrector(args.corrector, args.steps, args.cfg, device)
    from ardiff.acdc.pipeline import ACDCPipeline

    if args.mode == "story":
        memory = build_memory_from_spec(args.memory)
        prompts = read_prompts(args.prompts) if args.prompts else DEFAULT_STORY
        pipe = ACDCPipeline(arm, corrector, memory, t_prime=args.t_prime, color_match=args.color_match)
        result = pipe.story(prompts, seed=args.seed, correct=args.correct, masks=read_masks(args.mask))
    else:
        pipe = ACDCPipeline(arm, corrector, None, t_prime=args.t_prime, color_match=args.color_match)
        result = pipe.video(args.prompt, num_chunks=args.chunks, seed=args.seed,
                            correct=1 if args.correct is None else args.correct, masks=read_masks(args.mask))
    out = Path(args.out)
    record = write_outputs(result, out)
    for chunk in record["chunks"]:
        flag = f"corrected at t'={chunk['t_prime']:.3f}" if chunk["corrected"] else "kept"
        print(f"chunk {chunk['index']}: {flag:<24} {chunk['corrector_prompt']}")
    print(f"wrote {out / 'strip.png'} (top: ARM alone, bottom: with ACDC), "
          f"{out / 'uncorrected_vs_corrected.gif'}, {out / 'record.json'}")
    return 0


# Four chunks for the shipped video ARM (4 blocks of 2 frames); later sentences refer by pronoun.
DEFAULT_STORY = [
    "A sneaker glides across the dark floor.",
    "It slows down near the wall.",
    "The sneaker bounces back.",
    "It drifts to a stop.",
]


def cmd_benchmark(args) -> int:
    from ardiff.experiments.story_benchmark import ALL_SETTINGS, BenchmarkConfig, run_benchmark
    from ardiff.experiments.video_table import VideoBenchConfig

    settings = tuple(s.strip() for s in args.settings.split(",")) if args.settings else ALL_SETTINGS
    video = VideoBenchConfig(arm=args.video_arm, corrector=args.video_corrector, clips=args.video_clips,
                             t_prime=args.video_t_prime, window=args.video_window, seed=args.seed)
    config = BenchmarkConfig(out=args.out, arm=args.arm, corrector=args.corrector, num_stories=args.num_stories,
                             long_stories=args.long_stories, t_prime=args.t_prime, seed=args.seed, settings=settings,
                             window=args.window, sink_blocks=args.sink_blocks, smollm2_stories=args.smollm2_stories,
                             video=video)
    summary = run_benchmark(config, device=args.device or "cpu", rescore=args.rescore)
    print((Path(args.out) / "story_table.md").read_text())
    print(f"wrote {args.out}/benchmark.json, story_table.md, error_accumulation.png and strip_*.png")
    return 0 if summary["results"] else 1


def cmd_make_stories(args) -> int:
    from ardiff.experiments.story_generation import build_story_llm, make_stories, write_jsonl

    llm = build_story_llm(args.llm)
    valid, total = write_jsonl(make_stories(llm, args.num, seed=args.seed, attempts=args.attempts), args.out)
    print(f"wrote {args.out}: {valid} of {total} stories valid (six sentences)")
    return 0 if valid == total else 1


def add_parser(sub) -> None:
    acdc = sub.add_parser("acdc", help="ACDC: diffusion correction of an autoregressive generator",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = acdc.add_subparsers(dest="mode", required=True)
    b = modes.add_parser("benchmark", help="the story-world benchmark: story table, error accumulation, "
                                                 "video table, strips")
    b.add_argument("--out", default="out/acdc-benchmark")
    b.add_argument("--arm", default="story-arm", help="story ARM (shipped name or directory)")
    b.add_argument("--corrector", default="story-corrector", help="single-frame corrector (name or directory)")
    b.add_argument("--num-stories", type=int, default=200)
    b.add_argument("--long-stories", type=int, default=100, help="12-frame stories for the error-accumulation plot")
    b.add_argument("--smollm2-stories", type=int, default=200, help="stories for the SmolLM2 row (it is slow on CPU)")
    b.add_argument("--window", type=int, default=4, help="rolling KV window (blocks) past the trained length")
    b.add_argument("--sink-blocks", type=int, default=1, help="blocks kept from the start in the rolling window")
    b.add_argument("--t-prime", type=float, default=0.5)
    b.add_argument("--video-arm", default="moving-fmnist-16", help="video ACDiT with whole-frame blocks (video table)")
    b.add_argument("--video-corrector", default="moving-fmnist-16-dit",
                   help="full-sequence video model of the ARM's clip size (one block)")
    b.add_argument("--video-clips", type=int, default=100, help="clips of twice the trained length (class-balanced)")
    b.add_argument("--video-t-prime", type=float, default=0.5)
    b.add_argument("--video-window", type=int, default=6, help="rolling KV window of the video ARM (blocks), "
                                                               "plus one sink block")
    b.add_argument("--settings", help="comma-separated subset (default: all); finished settings are skipped")
    b.add_argument("--rescore", action="store_true", help="recompute the metrics from the saved frames only")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device")
    b.set_defaults(func=cmd_benchmark)
    m = modes.add_parser("make-stories", help="an LLM writes 6-sentence animal stories (the paper's benchmark), JSONL")
    m.add_argument("--llm", default="smollm2", help="smollm2 | transformers:PATH | openai:MODEL@BASE_URL")
    m.add_argument("--num", type=int, default=10)
    m.add_argument("--attempts", type=int, default=3, help="tries per story before it is recorded as failed")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", default="out/stories.jsonl")
    m.set_defaults(func=cmd_make_stories)
    for mode in ("story", "video"):
        p = modes.add_parser(mode, help="one prompt per chunk" if mode == "story" else
                             "one prompt; the first chunk corrected, then generation continues",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        if mode == "story":
            p.add_argument("--prompts", help="text file, one prompt per chunk (or a .json list); "
                                             "default: a 4-sentence built-in story")
            p.add_argument("--memory", default="rule", help="memory backend (default: rule)")
        else:
            p.add_argument("--prompt", default="a sneaker", help="the prompt for every chunk")
            p.add_argument("--chunks", type=int, default=4, help="chunks to generate")
        p.add_argument("--arm", default="builtin", help="autoregressive generator (default: builtin)")
        p.add_argument("--corrector", default="builtin", help="SDEdit corrector (default: builtin)")
        p.add_argument("--t-prime", type=float, default=0.5, help="SDEdit noise level in (0, 1] (paper: 0.4-0.6)")
        p.add_argument("--correct", type=int, help="correct only the first K chunks (ACDC #K); default: all "
                                                   "(story) or 1 (video)")
        p.add_argument("--steps", type=int, default=25, help="corrector denoising steps over the full schedule")
        p.add_argument("--cfg", type=float, help="corrector guidance scale (default: recorded with a native model, "
                                                 "7.5 Stable Diffusion)")
        p.add_argument("--arm-steps", type=int, default=25, help="ACDiT ARM denoising steps per block")
        p.add_argument("--arm-cfg", type=float, help="ACDiT ARM guidance scale (default: recorded with the model)")
        p.add_argument("--color-match", action="store_true", help="match corrected colours to the ARM's chunk")
        p.add_argument("--mask", action="append", metavar="IDX:PNG", help="user constraint: only white pixels of "
                                                                          "chunk IDX may change (repeatable)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device")
        p.add_argument("--out", default=f"out/acdc-{mode}", help="output directory")
        p.set_defaults(func=cmd_acdc)
