"""`ardiff acdc story|video|benchmark|make-stories`: run ACDC with components chosen on the
command line.

Component specs (every model from a local path; nothing is downloaded):

  --arm        builtin (the shipped Moving Fashion-MNIST ACDiT) | acdit:DIR | emu3:DIR | janus:DIR
  --corrector  builtin (the shipped Fashion-MNIST ACDiT, block-wise SDEdit) | native:DIR | sd:DIR |
               animatediff:DIR (a diffusers AnimateDiff directory) |
               animatediff:SD_DIR,motion=ADAPTER_DIR | none
  --memory     rule | none | smollm2 | transformers:PATH (directory or .gguf file) |
               openai:MODEL@BASE_URL (key from $OPENAI_API_KEY)

Every run writes, into --out: strip.png (labelled rows: the ARM alone with the same seed,
and ARM + ACDC; chunk borders; corrected chunks marked), index.html (the strip with every
chunk's prompt as given and as the memory rewrote it), a side-by-side GIF, and record.json
(everything needed to run it again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ardiff.acdc.components import BUILTIN_ARM, BUILTIN_CORRECTOR, model_path, split_spec
from ardiff.cli.common import (
    CommandError,
    existing_dir,
    existing_file,
    guidance_scale,
    nonnegative_int,
    output_dir,
    output_file,
    positive_int,
    t_prime,
)

ARM_KINDS = ("builtin", "acdit", "emu3", "janus")
CORRECTOR_KINDS = ("builtin", "native", "sd", "animatediff", "none")
MEMORY_KINDS = ("rule", "none", "smollm2", "transformers", "openai")
# Library argument names in error messages, as this command's flags.
FLAG_NAMES = {"window=W": "--window W", "window=": "--window", "sink_blocks": "--sink-blocks",
              "num_inference_steps": "--steps", "guidance_scale": "--cfg", "t_prime": "--t-prime",
              "correct=": "--correct"}


# ---------------------------------------------------------------------------
#                  Component specs (checked when the arguments are parsed)
# ---------------------------------------------------------------------------
def _spec_type(flag: str, kinds: tuple[str, ...], needs_path: tuple[str, ...], usage: str):
    def check(text: str) -> str:
        kind, arg = split_spec(text)
        if kind not in kinds:
            raise argparse.ArgumentTypeError(f"{text!r}: use {usage}")
        if kind in needs_path:
            if not arg:
                raise argparse.ArgumentTypeError(f"{text!r} needs a path: {kind}:PATH")
            path = arg.partition(",motion=")[0] if kind == "animatediff" else arg
            if kind != "openai" and not Path(path).exists():
                raise argparse.ArgumentTypeError(f"{text!r}: {path} does not exist")
        return text

    check.__name__ = f"{flag} spec"
    return check


arm_spec = _spec_type("--arm", ARM_KINDS, ("acdit", "emu3", "janus"), "builtin, acdit:DIR, emu3:DIR or janus:DIR")
corrector_spec = _spec_type("--corrector", CORRECTOR_KINDS, ("native", "sd", "animatediff"),
                            "builtin, native:DIR, sd:DIR, animatediff:DIR[,motion=DIR] or none")


def memory_spec(text: str) -> str:
    kind, arg = split_spec(text)
    if kind not in MEMORY_KINDS:
        raise argparse.ArgumentTypeError(f"{text!r}: use rule, none, smollm2, transformers:PATH or "
                                         f"openai:MODEL@BASE_URL")
    if kind == "transformers" and (not arg or not Path(arg).exists()):
        raise argparse.ArgumentTypeError(f"{text!r}: transformers:PATH needs an existing directory or .gguf file")
    if kind == "openai":
        model, _, base_url = (arg or "").partition("@")
        if not model or not base_url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"{text!r}: use openai:MODEL@BASE_URL "
                                             f"(e.g. openai:gpt-4o-mini@https://api.openai.com/v1)")
    return text


def mask_spec(text: str) -> str:
    index, _, path = text.partition(":")
    if not index.isdigit() or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: use CHUNK_INDEX:MASK.png (white = may change)")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: {path} does not exist")
    return text


# ---------------------------------------------------------------------------
#                     Reading the files the flags name
# ---------------------------------------------------------------------------
def read_memory_prompt(path: str) -> str:
    """A refiner prompt template from a file: it must hold {story} (the numbered sentences) and
    may hold {n} (their number); other braces are doubled."""
    from ardiff.acdc.memory.llm import check_template

    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise CommandError(f"--memory-prompt {path}: not a text file") from None
    try:
        check_template(text)
    except ValueError as e:
        raise CommandError(f"--memory-prompt {path}: {e}") from None
    return text


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise CommandError(f"--prompts {path}: not a text file (one prompt per line, or a JSON list)") from None
    if p.suffix == ".json":
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as e:
            raise CommandError(f"--prompts {path}: not valid JSON ({e})") from None
        if not isinstance(prompts, list) or not all(isinstance(s, str) for s in prompts):
            raise CommandError(f"--prompts {path}: a .json file must hold a list of strings")
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CommandError(f"--prompts {path} holds no prompt; give one prompt per line")
    return prompts


def read_masks(specs: list[str] | None) -> dict:
    """``IDX:PNG`` -> chunk index -> (1, 1, H, W) mask, white = may change."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    masks = {}
    for spec in specs or []:
        index, _, path = spec.partition(":")
        try:
            array = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        except UnidentifiedImageError:
            raise CommandError(f"--mask {spec}: {path} is not an image") from None
        masks[int(index)] = torch.from_numpy((array > 0.5).astype(np.float32))[None, None]
    return masks


# ---------------------------------------------------------------------------
#                                   story | video
# ---------------------------------------------------------------------------
# Four chunks for the shipped video ARM (4 blocks of 2 frames); later sentences refer by pronoun.
DEFAULT_STORY = [
    "A sneaker glides across the dark floor.",
    "It slows down near the wall.",
    "The sneaker bounces back.",
    "It drifts to a stop.",
]


def _acdit_config(spec: str, builtin: dict, mode: str):
    """The ACDiTConfig of an ACDiT spec (read from config.json, no weights), else None."""
    from ardiff.models.checkpoint import load_config
    from ardiff.models.resolve import resolve_model_dir

    kind, arg = split_spec(spec)
    if kind not in ("builtin", "acdit", "native"):
        return None
    return load_config(resolve_model_dir(builtin[mode] if kind == "builtin" else arg))


def video_layout(args) -> dict:
    """How a video run is cut: L = --corrected-frames frames a chunk (k ARM blocks), N / L
    chunks, the first --correct chunks corrected, a rolling window past the trained length."""
    config = _acdit_config(args.arm, BUILTIN_ARM, "video")
    if config is None:
        raise CommandError(f"--arm {args.arm}: video mode needs an ACDiT ARM (builtin or acdit:DIR)")
    trained_frames, frames_per_block = config.input_size[0], config.block_size // config.tokens_per_frame
    L = args.corrected_frames or trained_frames
    if L % frames_per_block or L > trained_frames:
        raise CommandError(f"--corrected-frames {L}: the ARM makes {frames_per_block} frames a block and was trained "
                           f"on {trained_frames}; give a multiple of {frames_per_block} up to {trained_frames}")
    if args.num_frames % L:
        raise CommandError(f"--num-frames {args.num_frames} must be a multiple of --corrected-frames {L} "
                           f"(the chunk length)")
    window, sink = args.window, args.sink_blocks
    if args.num_frames > trained_frames and window is None:  # as the video table: 1 sink + the rest
        window, sink = config.num_blocks - 2, 1
    corrector = _acdit_config(args.corrector, BUILTIN_CORRECTOR, "video")
    if corrector is not None and corrector.is_video and corrector.input_size[0] != L:
        raise CommandError(f"--corrector {args.corrector} corrects clips of {corrector.input_size[0]} frames; "
                           f"give --corrected-frames {corrector.input_size[0]}")
    num_chunks = args.num_frames // L
    correct = 1 if args.correct is None else args.correct
    return {"num_frames": args.num_frames, "frames_per_chunk": L, "chunk_blocks": L // frames_per_block,
            "num_chunks": num_chunks, "correct": correct, "window": window, "sink_blocks": sink,
            "corrected_frames": list(range(min(correct, num_chunks) * L)),
            "trained_frames": trained_frames}


def cmd_acdc(args) -> int:
    import warnings

    prompts = (read_prompts(args.prompts) if args.prompts else DEFAULT_STORY) if args.mode == "story" else None
    layout = video_layout(args) if args.mode == "video" else None
    if getattr(args, "memory_prompt", None):
        read_memory_prompt(args.memory_prompt)  # checked before anything loads
    if args.dry_run:
        from ardiff.experiments.acdc_report import describe_plan

        print(describe_plan(args, prompts, layout, model_path(args.arm, BUILTIN_ARM[args.mode]),
                            None if args.corrector == "none" else
                            model_path(args.corrector, BUILTIN_CORRECTOR[args.mode])))
        return 0
    from ardiff.acdc.components import build_arm, build_corrector, build_memory_from_spec
    from ardiff.acdc.pipeline import ACDCPipeline
    from ardiff.experiments.acdc_report import run_metrics, run_record, write_report
    from ardiff.utils.devices import default_device

    masks = read_masks(args.mask)
    device = default_device(args.device)
    if layout is not None:
        arm, arm_record = build_arm(args.arm, device, "video", args.arm_steps, args.arm_cfg, layout["window"],
                                    layout["sink_blocks"], layout["chunk_blocks"])
    else:
        arm, arm_record = build_arm(args.arm, device, "story", args.arm_steps, args.arm_cfg, args.window,
                                    args.sink_blocks)
    corrector, corrector_record = build_corrector(args.corrector, device, args.mode, args.steps, args.cfg)
    template = read_memory_prompt(args.memory_prompt) if getattr(args, "memory_prompt", None) else None
    memory = build_memory_from_spec(args.memory, template) if args.mode == "story" else None

    def run(with_corrector: bool):
        pipe = ACDCPipeline(arm, corrector if with_corrector else None, memory, t_prime=args.t_prime,
                            color_match=args.color_match)
        if layout is None:
            return pipe.story(prompts, seed=args.seed, correct=args.correct, masks=masks)
        return pipe.video(args.prompt, num_chunks=layout["num_chunks"], seed=args.seed, correct=layout["correct"],
                          masks=masks)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(with_corrector=True)
    fallbacks = [str(w.message) for w in caught if type(w.message).__name__ == "MemoryFallbackWarning"]
    baseline = run(with_corrector=False) if corrector is not None else result  # the same seed, no correction
    metrics = run_metrics({"arm_alone": baseline.uncorrected, "acdc": result.corrected}, result.prompts,
                          clip_dir=args.clip, device=device)
    record = run_record(args, result, arm_record, corrector_record, memory, fallbacks, metrics, layout)
    out = Path(args.out)
    write_report(result, baseline, record, out)
    for chunk in record["chunks"]:
        flag = f"corrected at t'={chunk['t_prime']:.3f}" if chunk["corrected"] else "kept"
        print(f"chunk {chunk['index']}: {flag:<24} {chunk['corrector_prompt']}")
    for reason in fallbacks:
        print(f"memory fell back: {reason}")
    for row, scores in metrics.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
        print(f"metrics, {'ARM alone' if row == 'arm_alone' else 'ARM + ACDC'}: {shown or 'none for these frames'}")
    print(f"wrote {out / 'strip.png'} (rows: ARM alone with the same seed, ARM + ACDC), {out / 'index.html'}, "
          f"{out / 'arm_vs_acdc.gif'}, {out / 'record.json'}")
    return 0


# ---------------------------------------------------------------------------
#                           benchmark | make-stories
# ---------------------------------------------------------------------------
def _settings_list(text: str) -> tuple[str, ...]:
    from ardiff.experiments.benchmark_settings import expand_settings

    names = [s.strip() for s in text.split(",") if s.strip()]
    try:
        return expand_settings(names or [text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_benchmark(args) -> int:
    from ardiff.experiments.benchmark_settings import DEFAULT_SETTINGS
    from ardiff.experiments.story_benchmark import BenchmarkConfig, run_benchmark
    from ardiff.experiments.video_table import VideoBenchConfig
    from ardiff.utils.devices import default_device

    settings = args.settings or DEFAULT_SETTINGS
    video = VideoBenchConfig(arm=args.video_arm, corrector=args.video_corrector, clips=args.video_clips,
                             t_prime=args.video_t_prime, corrector_cfg=args.video_corrector_cfg,
                             window=args.video_window, seed=args.seed, student=args.video_student,
                             sf_student=args.video_sf_student)
    config = BenchmarkConfig(out=args.out, arm=args.arm, corrector=args.corrector, num_stories=args.num_stories,
                             long_stories=args.long_stories, t_prime=args.t_prime, corrector_cfg=args.corrector_cfg,
                             seed=args.seed, settings=settings,
                             window=args.window, sink_blocks=args.sink_blocks, smollm2_stories=args.smollm2_stories,
                             video=video)
    summary = run_benchmark(config, device=default_device(args.device), rescore=args.rescore)
    print((Path(args.out) / "story_table.md").read_text())
    print(f"wrote {args.out}/benchmark.json, story_table.md, error_accumulation.png and strip_*.png")
    return 0 if summary["results"] or summary["video"] else 1


def cmd_make_stories(args) -> int:
    from ardiff.experiments.story_generation import (
        GENERATOR_SYSTEM_TEMPLATE,
        build_story_llm,
        check_generator_template,
        make_stories,
        write_jsonl,
    )

    template = GENERATOR_SYSTEM_TEMPLATE
    if args.prompt_file:
        try:
            template = check_generator_template(Path(args.prompt_file).read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CommandError(f"--prompt-file {args.prompt_file}: {e}") from None
    llm = build_story_llm(args.llm)
    stories = make_stories(llm, args.num, seed=args.seed, attempts=args.attempts, template=template)
    valid, total = write_jsonl(stories, args.out)
    print(f"wrote {args.out}: {valid} of {total} stories valid (six sentences)")
    return 0 if valid == total else 1


# ---------------------------------------------------------------------------
#                                   The parser
# ---------------------------------------------------------------------------
def add_parser(sub) -> None:
    from ardiff.experiments.benchmark_settings import BENCHMARK_HELP

    acdc = sub.add_parser("acdc", help="ACDC: diffusion correction of an autoregressive generator",
                          description=__doc__)
    modes = acdc.add_subparsers(dest="mode", required=True, metavar="MODE")
    b = modes.add_parser("benchmark", help="the story-world benchmark: story table, error accumulation, video "
                                           "table, strips (hours on a CPU with the defaults; see --help)",
                         description=BENCHMARK_HELP)
    b.add_argument("--out", type=output_dir, default="out/acdc-benchmark", help="output directory")
    b.add_argument("--arm", default="story-arm", help="story ARM (shipped name or directory)")
    b.add_argument("--corrector", default="story-corrector", help="single-frame corrector (name or directory)")
    b.add_argument("--num-stories", type=positive_int, default=200, help="6-frame test stories per setting")
    b.add_argument("--long-stories", type=positive_int, default=100,
                   help="12-frame stories for the error-accumulation plot")
    b.add_argument("--smollm2-stories", type=positive_int, default=200,
                   help="stories for the SmolLM2 row (about 10 s per story on a CPU)")
    b.add_argument("--window", type=positive_int, default=4, help="rolling KV window (blocks) past the trained "
                                                                  "length")
    b.add_argument("--sink-blocks", type=nonnegative_int, default=1,
                   help="blocks kept from the start in the rolling window")
    b.add_argument("--t-prime", type=t_prime, default=0.5, help="SDEdit noise level of the corrections")
    b.add_argument("--corrector-cfg", type=guidance_scale,
                   help="the story corrector's guidance scale (default: recorded with the corrector)")
    b.add_argument("--video-arm", default="moving-fmnist-16", help="video ACDiT with whole-frame blocks (video table)")
    b.add_argument("--video-corrector", default="moving-fmnist-16-dit",
                   help="full-sequence video model of the ARM's clip size (one block)")
    b.add_argument("--video-clips", type=positive_int, default=100,
                   help="clips of twice the trained length (class-balanced)")
    b.add_argument("--video-t-prime", type=t_prime, default=0.5, help="SDEdit noise level of the video correction")
    b.add_argument("--video-corrector-cfg", type=guidance_scale,
                   help="the video corrector's guidance scale (default: the video ARM's, which beat the "
                        "corrector's recorded one on the shipped models)")
    b.add_argument("--video-window", type=positive_int, default=6,
                   help="rolling KV window of the video ARM (blocks), plus one sink block")
    b.add_argument("--video-student", metavar="DIR",
                   help="a few-step student of the video ARM (video_student, video_student_acdc)")
    b.add_argument("--video-sf-student", metavar="DIR",
                   help="a self-forcing student of the video ARM (video_sf, video_sf_acdc)")
    b.add_argument("--settings", type=_settings_list,
                   help="comma-separated settings or groups (default, story, long, video, video_students, ablations, "
                        "all; "
                        "default: default); finished settings are skipped")
    b.add_argument("--rescore", action="store_true", help="recompute the metrics from the saved frames only")
    b.add_argument("--seed", type=nonnegative_int, default=0)
    b.add_argument("--device", help="cpu, cuda, ...")
    b.set_defaults(func=cmd_benchmark)

    m = modes.add_parser("make-stories", help="an LLM writes 6-sentence animal stories (the paper's benchmark), "
                                              "JSONL",
                         description="Algorithm 1: an LLM writes six-sentence animal stories from three few-shot "
                                     "examples; invalid answers are retried, failures recorded. Exit status 1 "
                                     "when a story failed every attempt.")
    m.add_argument("--llm", default="smollm2", type=memory_spec,
                   help="smollm2 | transformers:PATH | openai:MODEL@BASE_URL")
    m.add_argument("--num", type=positive_int, default=10, help="stories to write")
    m.add_argument("--attempts", type=positive_int, default=3, help="tries per story before it is recorded as failed")
    m.add_argument("--seed", type=nonnegative_int, default=0)
    m.add_argument("--prompt-file", type=existing_file,
                   help="the system message's template instead of the built-in one (must hold {examples}; "
                        "{n} is the number of sentences)")
    m.add_argument("--out", type=output_file(".jsonl"), default="out/stories.jsonl", help="JSONL file to write")
    m.set_defaults(func=cmd_make_stories)

    for mode in ("story", "video"):
        p = modes.add_parser(mode, help="one prompt per chunk, corrected chunk by chunk" if mode == "story" else
                             "the paper's video experiment: L frames made, corrected as one clip, continued to N",
                             description=__doc__)
        if mode == "story":
            p.add_argument("--prompts", type=existing_file, help="text file, one prompt per chunk (or a .json "
                                                                 "list); default: a 4-sentence built-in story")
            p.add_argument("--memory", type=memory_spec, default="rule", help="memory backend")
            p.add_argument("--memory-prompt", type=existing_file,
                           help="LLM memories: the refiner prompt template to use instead of the built-in one "
                                "(a text file holding {story}, and optionally {n})")
            p.add_argument("--correct", type=nonnegative_int,
                           help="correct only the first K chunks (ACDC #K); default: all")
        else:
            p.add_argument("--prompt", default="a sneaker moving", help="the prompt for every chunk")
            p.add_argument("--num-frames", type=positive_int, default=32, help="frames to generate (N)")
            p.add_argument("--corrected-frames", type=positive_int,
                           help="frames per chunk, corrected as one clip (L; default: the ARM's trained length)")
            p.add_argument("--correct", type=nonnegative_int, help="chunks to correct, from the first (default: 1, "
                                                                   "frames 0..L-1)")
        p.add_argument("--window", type=positive_int,
                       help="ACDiT ARM: a rolling KV window of this many blocks past the trained length (video "
                            "default: the trained blocks - 2)")
        p.add_argument("--sink-blocks", type=nonnegative_int, default=0 if mode == "story" else 1,
                       help="with --window: blocks kept from the start")
        builtin = (f"{BUILTIN_ARM[mode]} / {BUILTIN_CORRECTOR[mode]}")
        p.add_argument("--arm", type=arm_spec, default="builtin",
                       help=f"autoregressive generator (builtin: {BUILTIN_ARM[mode]})")
        p.add_argument("--corrector", type=corrector_spec, default="builtin",
                       help=f"SDEdit corrector (builtin: {BUILTIN_CORRECTOR[mode]})")
        p.add_argument("--t-prime", type=t_prime, default=0.5, help="SDEdit noise level in (0, 1] (paper: 0.4-0.6)")
        p.add_argument("--steps", type=positive_int, default=25, help="corrector denoising steps over the full "
                                                                      "schedule")
        p.add_argument("--cfg", type=guidance_scale, help="corrector guidance scale (default: recorded with a native "
                                                          "model, 7.5 Stable Diffusion)")
        p.add_argument("--arm-steps", type=positive_int, help="ACDiT ARM denoising steps per block (default: "
                                                              "recorded with the model)")
        p.add_argument("--arm-cfg", type=guidance_scale, help="ACDiT ARM guidance scale (default: recorded with the "
                                                              "model)")
        p.add_argument("--color-match", action="store_true", help="match corrected colours to the ARM's chunk")
        p.add_argument("--mask", action="append", type=mask_spec, metavar="IDX:PNG",
                       help="user constraint: only white pixels of chunk IDX may change (repeatable)")
        p.add_argument("--clip", type=existing_dir, help="a local transformers CLIP directory: also score CLIP frame "
                                                         "consistency and text-image similarity")
        p.add_argument("--dry-run", action="store_true", help=f"print the plan (chunks, which are corrected, model "
                                                              f"sizes, memory, steps) and stop; builtin: {builtin}")
        p.add_argument("--seed", type=nonnegative_int, default=0)
        p.add_argument("--device", help="cpu, cuda, ...")
        p.add_argument("--out", type=output_dir, default=f"out/acdc-{mode}", help="output directory")
        p.set_defaults(func=cmd_acdc, flag_names=FLAG_NAMES)
