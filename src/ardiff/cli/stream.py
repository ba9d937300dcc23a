"""`ardiff stream`: a video generated block after block under a prompt schedule, each block's
frames written to an MP4 as soon as the block is made."""

from __future__ import annotations

import argparse
from pathlib import Path

from ardiff.cli.common import (
    CommandError,
    add_guidance_interval_flag,
    add_guide_model_flags,
    add_sampling_flags,
    check_guide_flags,
    checked_guidance_interval,
    load_pipeline,
    nonnegative_int,
    output_file,
    positive_int,
    read_model_summary,
    t_prime,
)

# Library argument names in error messages, as this command's flags.
FLAG_NAMES = {"sink_blocks": "--sink-blocks", "window": "--window", "t_prime": "--t-prime",
              "num_clips": "--num-clips"}

DESCRIPTION = """\
Generate a video block after block under a prompt schedule and write each block's frames to an
MP4 as soon as the block is made; print the first-frame latency, the frames per second and the
settings used.

The schedule is FRAME:PROMPT entries separated by commas, e.g. "0:sneaker, 48:bag, 96:trouser":
the first at frame 0, frames increasing and below --frames, each on a block boundary (a multiple
of the model's frames per block, 2 for moving-fmnist). A prompt names a class (Fashion-MNIST
models: t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot) or
gives its id (0..9). Past the model's trained length each block sees --sink-blocks blocks from
the start and the last --window blocks (default: 1 sink block and the widest window that keeps
new blocks at trained positions, trained blocks - 2). See docs/streaming.md."""


def _check(what: str, check, *args):
    """Run a library check; its ValueError becomes this command's one-line error about ``what``."""
    try:
        return check(*args)
    except ValueError as e:
        raise CommandError(f"{what}: {e}") from None


def cmd_stream(args) -> int:
    directory, summary = read_model_summary(args.model_dir)
    checked_guidance_interval(args)
    check_guide_flags(args)
    if args.t_prime is not None and args.correct is None:
        raise CommandError("--t-prime T needs --correct CORRECTOR (the model that corrects each chunk)")
    if args.segment_frames is not None and not args.score:
        raise CommandError("--segment-frames N needs --score")

    from ardiff.acdc.stream_correction import ChunkCorrection, check_corrector
    from ardiff.generate.stream import (
        ClassVocabulary,
        PromptSchedule,
        StreamSettings,
        check_num_frames,
        check_stream_model,
        frames_per_block,
        stream,
    )
    from ardiff.models.checkpoint import load_config

    config = load_config(directory)
    _check(args.model_dir, check_stream_model, config)
    per_block = frames_per_block(config)
    _check("--frames", check_num_frames, args.frames, per_block)
    vocabulary = ClassVocabulary.for_model(config.num_classes, summary.get("_data"))
    schedule = _check("--prompts", PromptSchedule.parse, args.prompts, vocabulary, args.frames, per_block)
    settings = StreamSettings(num_frames=args.frames, window=args.window, sink_blocks=args.sink_blocks,
                              recache=args.recache, seed=args.seed, num_clips=args.num_clips,
                              switch=args.switch or ("continue" if args.recache or args.correct else "cut"),
                              ).for_model(config)
    if args.correct is not None:
        corrector_dir, _ = read_model_summary(args.correct)
        _check("--correct", check_corrector, load_config(corrector_dir), config, args.frames, schedule, args.correct)
    if args.score and not (vocabulary.names and config.in_channels == 1 and min(config.input_size[-2:]) >= 28):
        raise CommandError("--score reads every frame with the Fashion-MNIST classifier: it needs a model trained on "
                           "(Moving) Fashion-MNIST")

    from ardiff.cli.sample import class_names
    from ardiff.utils.media import Mp4Writer, captioned_grid

    pipe = load_pipeline(args, str(directory))
    correction = None
    if args.correct is not None:
        correction = ChunkCorrection.from_pretrained(args.correct, 0.5 if args.t_prime is None else args.t_prime,
                                                     device=pipe.device)

    B, frames = settings.num_clips, settings.num_frames
    print(f"streaming {args.model_dir}: {frames} frames ({frames // per_block} blocks of {per_block} frames), "
          f"{B} clip{'s' * (B > 1)}, seed{'s' * (B > 1)} {settings.seed}"
          + (f"..{settings.seed + B - 1}" if B > 1 else ""))
    print(f"schedule: {schedule.describe(frames, vocabulary)}")
    print(f"context: {settings.describe(config)}")
    print(f"sampling: {pipe.describe()}")
    if correction is not None:
        chunk = f"clips of {correction.chunk_frames} frames" if correction.video else "each block's frames one by one"
        print(f"correction: SDEdit from t'={correction.t_prime:g} by {args.correct}, {chunk}; frames are handed out "
              f"a corrected chunk at a time")

    names = class_names(summary)
    frame_classes = schedule.frame_classes(frames)
    scale = args.scale or max(1, 128 // max(config.input_size[-2:]))

    def write(block_frames, first_frame: int) -> None:
        for j in range(block_frames.shape[1]):
            captions = [names[frame_classes[first_frame + j]]] * B if args.labels else None
            writer.write(captioned_grid(block_frames[:, j], scale=scale, captions=captions))

    # The writer opens before generation starts, and closes (a playable file of the frames so
    # far) also when the stream fails or is interrupted.
    with Mp4Writer(args.out, fps=args.fps) as writer:
        result = stream(pipe, schedule, settings, on_frames=write, correction=correction)
    print(f"first frames after {result.first_frame_seconds:.2f} s; {frames} frames in {result.total_seconds:.2f} s: "
          f"{result.frames_per_second:.2f} frames/s" + (f" ({B} clips at once)" if B > 1 else ""))
    if settings.recache:
        print(f"re-cached the context at {result.recaches} switch{'es' * (result.recaches != 1)} in "
              f"{result.recache_seconds:.3f} s (where the window slides the sampler rebuilds it anyway)")
    if correction is not None:
        print(f"correction took {result.correction_seconds:.2f} s of the total")
    layout = f"a grid of {B} clips" if B > 1 else "one clip"
    print(f"wrote {Path(args.out)} ({writer.frames_written} frames at {args.fps} fps, {layout})")
    if args.score:
        _print_scores(result, schedule, vocabulary, args.segment_frames or 16, pipe.device)
    return 0


def _print_scores(result, schedule, vocabulary, segment_frames: int, device) -> None:
    from ardiff.eval.features import FMNISTFeatures
    from ardiff.eval.streaming import stream_class_accuracy

    settling = schedule.settling_frames(result.frames_per_block)
    scores = stream_class_accuracy(result.frames, result.frame_classes, settling, segment_frames,
                                   FMNISTFeatures(device=device))
    clips = f"{scores.num_clips} clip{'s' * (scores.num_clips > 1)}"
    print(f"class accuracy of frames (Fashion-MNIST classifier, {clips}); settled: without the first block after "
          f"each switch")
    print(f"{'frames':<10} {'asked':<22} {'accuracy':>8} {'settled':>8}")

    def shown(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    for s in scores.segments:
        asked = ", ".join(vocabulary.name(k) for k in s.classes)
        settling = f"  (frames {_ranges(s.settling_frames)} settling)" if s.settling_frames else ""
        print(f"{f'{s.first_frame}-{s.last_frame}':<10} {asked:<22} {s.accuracy:>8.3f} {shown(s.settled_accuracy):>8}"
              f"{settling}")
    print(f"{'overall':<10} {'':<22} {scores.accuracy:>8.3f} {shown(scores.settled_accuracy):>8}")
    print(f"lowest settled segment: {shown(scores.lowest_settled)}")


def _ranges(frames) -> str:
    """(4, 5, 14, 15) -> "4-5, 14-15"."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][-1] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help="generate a video block by block under a prompt schedule, written to an MP4 "
                                      "as it is made",
                       description=DESCRIPTION)
    p.add_argument("model_dir", help="a class-conditional video model: a shipped name (moving-fmnist) or a model "
                                     "directory")
    p.add_argument("--prompts", required=True, metavar="SCHEDULE",
                   help='the prompt schedule, "FRAME:PROMPT, FRAME:PROMPT, ..." (e.g. "0:sneaker, 48:bag, '
                        '96:trouser")')
    p.add_argument("--frames", type=positive_int, default=144, metavar="N",
                   help="frames to generate: a multiple of the model's frames per block")
    p.add_argument("--out", type=output_file(".mp4"), default="stream.mp4",
                   help="the MP4 to write, block by block (MP4 only: a GIF cannot be written incrementally)")
    p.add_argument("--window", type=positive_int, metavar="W",
                   help="past the trained length: the last W blocks each new block sees (default: trained blocks - 1 "
                        "- sink blocks)")
    p.add_argument("--sink-blocks", type=nonnegative_int, metavar="K",
                   help="past the trained length: blocks from the start each new block also sees (default: 1; 0 for "
                        "a model of 2 blocks)")
    p.add_argument("--recache", action="store_true",
                   help="rebuild the KV cache of the context at every prompt switch (LongLive's re-cache). ACDiT's "
                        "clean context carries no condition, so the frames are bit-identical to keeping it; off by "
                        "default as it only costs time")
    p.add_argument("--switch", choices=("cut", "continue"),
                   help="at a prompt switch: cut (the new prompt starts afresh, like a new clip; the default) or "
                        "continue from the context (the old class's frames then outweigh the new prompt: measured "
                        "in docs/streaming.md); --recache and --correct continue")
    add_sampling_flags(p)
    add_guidance_interval_flag(p)
    add_guide_model_flags(p)
    p.add_argument("--correct", metavar="CORRECTOR",
                   help="ACDC: correct every finished chunk by SDEdit with this full-sequence model (a shipped name "
                        "or a model directory, e.g. moving-fmnist-16-dit: chunks of 16 frames; an image model "
                        "such as fmnist corrects each block's frames); corrected frames replace the chunk in the "
                        "context and the MP4")
    p.add_argument("--t-prime", type=t_prime, metavar="T",
                   help="with --correct: the SDEdit noise level in (0, 1] (default: 0.5)")
    p.add_argument("--score", action="store_true",
                   help="score every frame with the Fashion-MNIST classifier against the class asked, per segment "
                        "(with and without the first block after each switch) and overall")
    p.add_argument("--segment-frames", type=positive_int, metavar="N",
                   help="with --score: frames per segment (default: 16)")
    p.add_argument("--num-clips", type=positive_int, default=1, metavar="N",
                   help="clips streamed at once (seeds seed..seed+N-1), shown as a grid; --score averages over them")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="clip i uses seed + i")
    p.add_argument("--fps", type=positive_int, default=8, help="frames per second of the MP4")
    p.add_argument("--scale", type=positive_int, help="enlarge the frames this many times (default: to about 128 px)")
    p.add_argument("--labels", action=argparse.BooleanOptionalAction, default=True,
                   help="caption every frame with the class the schedule asks for")
    p.add_argument("--vae", help="local diffusers AutoencoderKL directory (latent models; default: the recorded one)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=cmd_stream, flag_names=FLAG_NAMES)
