"""Streaming: a video generated block after block under a prompt schedule, each block's frames
handed out as soon as the block is made.

- :class:`PromptSchedule`: ``"0:sneaker, 48:bag, 96:trouser"``, the class each frame is to show.
  It becomes per-block class labels, the block loop's own way of conditioning blocks apart, so
  a switch changes the condition of the next block and nothing else.
- :class:`StreamSettings`: how many frames and clips, the rolling KV window that goes past the
  trained length (``window`` + ``sink_blocks``), re-caching at switches.
- :func:`stream`: runs a :class:`~ardiff.generate.Pipeline` and calls ``on_frames(frames,
  first_frame)`` after every block; returns a :class:`StreamResult` with the frames and the
  timings (first-frame latency, frames per second).
- :class:`LiveSchedule`: a schedule edited while its stream runs (a page's prompt box): the
  next block not yet begun and all later ones follow the latest schedule; ``stop()`` ends the
  stream after the block under way.
- :class:`ChunkCorrection`: ACDC correction of every finished chunk (SDEdit from t' by a
  full-sequence model); the corrected frames replace the chunk in the context and the output,
  and frames are then handed out a chunk at a time.

Re-caching (LongLive's KV re-cache: recompute the window's K/V under the new prompt at a
switch) is exactly a no-op for ACDiT: the condition enters through adaLN on noisy tokens
only, so the clean context's K/V are the same under every prompt. ``recache=True`` rebuilds the
cache at each switch anyway (tests check the frames are bit-identical to keeping it); it is off
by default because it only costs time.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from ardiff.data.class_prompts import FMNIST_PROMPT_NAMES, ClassPrompts
from ardiff.generate.context import block_to_frames, check_frame_blocks, context_schedule, frames_to_block
from ardiff.generate.pipeline import Pipeline
from ardiff.generate.sampler import BlockEvent
from ardiff.utils.seeding import make_generators

__all__ = ["ChunkCorrector", "ClassVocabulary", "FramesCallback", "LiveSchedule", "PromptSchedule", "PromptSwitch",
           "StreamResult", "StreamSettings", "check_num_frames", "check_stream_model", "frames_per_block", "stream"]

# Called with each block's frames (num_clips, k, C, H, W), CPU float32 in [-1, 1], and the
# index of the first of them in the stream.
FramesCallback = Callable[[torch.Tensor, int], None]

FASHION_MNIST_DATA = ("fashion_mnist", "moving_fashion_mnist")


class ChunkCorrector(Protocol):
    """What :func:`stream` needs of a correction (ACDC's is
    :class:`ardiff.acdc.stream_correction.ChunkCorrection`)."""

    def chunk_blocks(self, per_block: int) -> int: ...

    def check_for(self, arm_config, num_frames: int, schedule: "PromptSchedule") -> None: ...

    def correct(self, frames: torch.Tensor, prompt: int, seeds: Sequence[int], chunk: int,
                first_frame: int) -> torch.Tensor: ...
SWITCH_MODES = ("continue", "cut")


# ---------------------------------------------------------------------------
#                          Prompts -> class ids
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassVocabulary:
    """How a prompt names a class of a class-conditional model: by id ("7"), or, for a model
    trained on Fashion-MNIST, by name as a prompt says it ("sneaker", "a red bag")."""

    num_classes: int
    names: tuple[str, ...] = ()  # prompt name of each class id; empty: ids only

    @classmethod
    def for_model(cls, num_classes: int, data: dict | None = None) -> "ClassVocabulary":
        """The vocabulary of a model with ``num_classes`` trained on ``data`` (its ``_data`` record)."""
        fashion = (data or {}).get("name") in FASHION_MNIST_DATA and num_classes == len(FMNIST_PROMPT_NAMES)
        return cls(num_classes, tuple(FMNIST_PROMPT_NAMES) if fashion else ())

    @classmethod
    def for_pipeline(cls, pipe: Pipeline) -> "ClassVocabulary":
        return cls.for_model(pipe.config.num_classes, pipe.data)

    def name(self, class_id: int) -> str:
        return self.names[class_id] if self.names else f"class {class_id}"

    def __call__(self, prompt: str) -> int:
        text = prompt.strip()
        if text.isdigit():
            class_id = int(text)
            if class_id >= self.num_classes:
                raise ValueError(f"class {class_id} is out of range: the model has {self.num_classes} classes "
                                 f"(0..{self.num_classes - 1})")
            return class_id
        if not self.names:
            raise ValueError(f"{text!r}: this model's classes have no names; give a class id 0..{self.num_classes - 1}")
        try:
            return ClassPrompts(self.names)(text)
        except ValueError:
            raise ValueError(f"{text!r} names none of the model's classes ({', '.join(self.names)}) and is not a "
                             f"class id 0..{self.num_classes - 1}") from None


# ---------------------------------------------------------------------------
#                              The schedule
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptSwitch:
    frame: int  # the first frame of this prompt
    prompt: str  # as written
    class_id: int


@dataclass(frozen=True)
class PromptSchedule:
    """Which class each frame is to show: prompt i from its frame up to the next switch.

    Grammar: ``FRAME:PROMPT, FRAME:PROMPT, ...``; the first FRAME is 0, frames increase, each
    is below the stream's length and on a block boundary (a multiple of the model's frames per
    block: a block is denoised under one condition). A PROMPT names a class (see
    :class:`ClassVocabulary`).
    """

    switches: tuple[PromptSwitch, ...]

    @classmethod
    def parse(cls, text: str, vocabulary: ClassVocabulary, num_frames: int, frames_per_block: int) -> "PromptSchedule":
        entries = [entry.strip() for entry in text.split(",")]
        if not any(entries):
            raise ValueError("the schedule is empty; give FRAME:PROMPT entries, e.g. '0:sneaker, 48:bag'")
        switches = []
        for entry in entries:
            frame, colon, prompt = entry.partition(":")
            if not colon or not frame.strip().lstrip("-").isdigit():
                raise ValueError(f"{entry!r} is not FRAME:PROMPT (e.g. 0:sneaker); entries are separated by commas")
            if not prompt.strip():
                raise ValueError(f"{entry!r} gives no prompt after the frame")
            switches.append(PromptSwitch(int(frame), prompt.strip(), vocabulary(prompt)))
        schedule = cls(tuple(switches))
        schedule.check(num_frames, frames_per_block)
        return schedule

    def check(self, num_frames: int, frames_per_block: int) -> None:
        """Raise unless the schedule fits a stream of ``num_frames`` frames, ``frames_per_block`` a block."""
        if not self.switches:
            raise ValueError("the schedule has no prompt")
        first = self.switches[0]
        if first.frame != 0:
            raise ValueError(f"the schedule must start at frame 0; it starts with {first.frame}:{first.prompt}")
        for before, switch in zip(self.switches, self.switches[1:]):
            if switch.frame <= before.frame:
                raise ValueError(f"frame {switch.frame} ({switch.prompt}) comes after frame {before.frame} "
                                 f"({before.prompt}): give the switches in increasing frame order, each frame once")
        for switch in self.switches:
            if switch.frame >= num_frames:
                raise ValueError(f"the switch at frame {switch.frame} ({switch.prompt}) is past the last frame of "
                                 f"{num_frames} (frames 0..{num_frames - 1})")
            if switch.frame % frames_per_block:
                below = switch.frame - switch.frame % frames_per_block
                raise ValueError(f"the switch at frame {switch.frame} is not on a block boundary: the model makes "
                                 f"{frames_per_block} frames a block, so prompts switch at multiples of "
                                 f"{frames_per_block} (here {below} or {below + frames_per_block})")

    def frame_classes(self, num_frames: int) -> list[int]:
        """The class asked of every frame."""
        starts = [s.frame for s in self.switches] + [num_frames]
        return [s.class_id for s, start, end in zip(self.switches, starts, starts[1:]) for _ in range(start, end)]

    def block_classes(self, num_blocks: int, frames_per_block: int) -> list[int]:
        """The class label of every block (the schedule's class at the block's first frame)."""
        return [s.class_id for s in self.block_prompts(num_blocks, frames_per_block)]

    def block_prompts(self, num_blocks: int, frames_per_block: int) -> list[PromptSwitch]:
        """The entry in force at every block's first frame."""
        starts = [s.frame // frames_per_block for s in self.switches[1:]]
        return [self.switches[bisect.bisect_right(starts, b)] for b in range(num_blocks)]

    def switch_blocks(self, frames_per_block: int) -> tuple[int, ...]:
        """The first block of every prompt after the first."""
        return tuple(s.frame // frames_per_block for s in self.switches[1:])

    def settling_frames(self, frames_per_block: int) -> tuple[int, ...]:
        """The frames of the first block after each switch, made while the stream turns to the new
        class (its context still shows the old one)."""
        return tuple(f for s in self.switches[1:] for f in range(s.frame, s.frame + frames_per_block))

    def to_text(self) -> str:
        """The schedule in its grammar, as :meth:`parse` reads it."""
        return ", ".join(f"{s.frame}:{s.prompt}" for s in self.switches)

    def describe(self, num_frames: int, vocabulary: ClassVocabulary | None = None) -> str:
        """"frames 0-47 sneaker (7), 48-95 bag (8), ..." for reports."""
        ends = [s.frame - 1 for s in self.switches[1:]] + [num_frames - 1]
        name = (lambda s: f"{vocabulary.name(s.class_id)} ({s.class_id})") if vocabulary else (lambda s: s.prompt)
        return "frames " + ", ".join(f"{s.frame}-{end} {name(s)}" for s, end in zip(self.switches, ends))


# ---------------------------------------------------------------------------
#                              Settings and layout
# ---------------------------------------------------------------------------

class LiveSchedule:
    """A prompt schedule that may change while its stream runs (LongLive's interactive prompts).

    The stream claims blocks before it begins them; a block once begun keeps the class it was
    asked for, and the next block not yet begun and every later one follow the latest schedule.
    A change costs one clean pass over the context (the block loop restarts from the blocks
    made, with the same noise streams), the same as a window slide. Thread-safe: a server
    thread may call :meth:`update` or :meth:`stop` while the stream runs in another.
    """

    def __init__(self, schedule: PromptSchedule, num_frames: int, frames_per_block: int):
        schedule.check(num_frames, frames_per_block)
        self.num_frames, self.frames_per_block = num_frames, frames_per_block
        self._schedule, self._version, self._stopped = schedule, 0, False
        self._checks: list[Callable[[PromptSchedule], None]] = []
        self._next_frame = 0  # the first frame of the first block not yet begun
        self.made_prompts: list[PromptSwitch] = []  # the entry each block begun was made under (by the stream)
        self._lock = threading.Lock()

    @property
    def schedule(self) -> PromptSchedule:
        with self._lock:
            return self._schedule

    @property
    def stopped(self) -> bool:
        return self._stopped

    def add_check(self, check: Callable[[PromptSchedule], None]) -> None:
        """Run ``check`` (raising ValueError) on the current schedule and on every update."""
        check(self.schedule)
        self._checks.append(check)

    def update(self, schedule: PromptSchedule) -> int:
        """Replace the schedule; returns the first frame it can still change (frames before it
        were already begun under the old one and keep their classes)."""
        schedule.check(self.num_frames, self.frames_per_block)
        for check in self._checks:
            check(schedule)
        with self._lock:
            self._schedule, self._version = schedule, self._version + 1
            return self._next_frame

    @property
    def next_frame(self) -> int:
        """The first frame of the first block not yet begun: where an update takes effect."""
        with self._lock:
            return self._next_frame

    def stop(self) -> None:
        """End the stream after the block (or chunk) under way; its frames are handed out."""
        self._stopped = True

    def begin(self, first_block: int, end_block: int) -> tuple[PromptSchedule, int]:
        """Claim blocks ``first_block .. end_block - 1`` for the stream; the schedule they are
        made under and its version."""
        with self._lock:
            self._next_frame = max(self._next_frame, end_block * self.frames_per_block)
            return self._schedule, self._version


class _Replan(Exception):
    """Raised from the block hook when the live schedule changed before the next block."""


class _Stop(Exception):
    """Raised from the block hook when the live schedule was stopped."""


def frames_per_block(config) -> int:
    """Frames in one block of a video model whose blocks are whole frames."""
    check_frame_blocks(config, "streaming")
    return config.block_size // config.tokens_per_frame


def check_num_frames(num_frames: int, per_block: int) -> None:
    """A stream is whole blocks: ``num_frames`` >= 1 and a multiple of the frames per block."""
    if num_frames < 1:
        raise ValueError(f"{num_frames} frames: a stream is at least one block ({per_block} frames)")
    if num_frames % per_block:
        below = num_frames - num_frames % per_block
        nearest = f"{below} or {below + per_block}" if below else f"{per_block}"
        raise ValueError(f"{num_frames} frames are not whole blocks: the model makes {per_block} frames a block "
                         f"(give {nearest})")


def check_stream_model(config) -> None:
    """Streaming needs a class-conditional video model of whole-frame blocks, trained on >= 2 blocks."""
    frames_per_block(config)
    if not config.num_classes:
        raise ValueError("streaming a prompt schedule needs a class-conditional model (num_classes > 0)")
    if config.num_blocks < 2:
        raise ValueError(f"this model was trained on {config.num_blocks} block: a stream needs a model that "
                         f"continues from context (trained on >= 2 blocks)")


@dataclass(frozen=True)
class StreamSettings:
    """What to stream; how each block is sampled are the pipeline's :class:`SamplingSettings`.

    Past the trained length of T blocks each block sees the first ``sink_blocks`` blocks and the
    last ``window`` ones (:func:`~ardiff.generate.context_schedule`), with ``sink_blocks +
    window <= T - 1`` so the new block stays at a trained position. Defaults: one sink block (as
    the rolling-window experiments use; none for a model of 2 blocks) and the widest window
    that fits, ``T - 1 - sink_blocks``. Within the trained length every block sees all earlier
    ones whatever the window.
    """

    num_frames: int
    window: int | None = None
    sink_blocks: int | None = None
    recache: bool = False  # rebuild the KV cache at every prompt switch (a no-op for ACDiT: see the module doc)
    seed: int = 0  # clip b uses seed + b
    num_clips: int = 1
    # At a prompt switch: "cut" starts the new prompt's blocks afresh, like a new clip (its own
    # sink); "continue" keeps the context, and the old class's frames in it outweigh the new
    # condition (moving-fmnist, 4 clips: 0.00-0.41 of settled frames follow the new prompt,
    # against 1.00 with "cut"; docs/streaming.md).
    switch: str = "cut"

    def for_model(self, config) -> "StreamSettings":
        """These settings with the window and sink blocks chosen for ``config`` and checked."""
        check_stream_model(config)
        check_num_frames(self.num_frames, frames_per_block(config))
        if self.num_clips < 1 or self.seed < 0:
            raise ValueError(f"num_clips={self.num_clips} must be >= 1 and seed={self.seed} >= 0")
        if self.switch not in SWITCH_MODES:
            raise ValueError(f"switch={self.switch!r}; choose one of {', '.join(SWITCH_MODES)}")
        if self.switch == "cut" and self.recache:
            raise ValueError("recache re-caches the context kept at a switch; switch='cut' keeps none")
        T = config.num_blocks
        sink = self.sink_blocks if self.sink_blocks is not None else (1 if T > 2 else 0)
        window = self.window if self.window is not None else T - 1 - sink
        if window < 1 or sink < 0:
            raise ValueError(f"window={window} must be >= 1 and sink_blocks={sink} >= 0")
        if window + sink > T - 1:
            raise ValueError(f"window={window} + sink_blocks={sink} context blocks put each new block at position "
                             f"{window + sink}, past the model's trained positions 0..{T - 1}; use window + "
                             f"sink_blocks <= {T - 1}")
        return replace(self, window=window, sink_blocks=sink)

    def describe(self, config) -> str:
        s = self.for_model(config)
        at_switch = ("cut (each prompt starts afresh)" if s.switch == "cut" else
                     f"context kept, re-cache {'on' if s.recache else 'off'}")
        return (f"{s.sink_blocks} sink block{'s' * (s.sink_blocks != 1)} + a window of {s.window} "
                f"block{'s' * (s.window != 1)} (trained on {config.num_blocks} blocks); at a switch: {at_switch}")


# ---------------------------------------------------------------------------
#                                The stream
# ---------------------------------------------------------------------------
@dataclass
class StreamResult:
    frames: torch.Tensor  # (num_clips, num_frames, C, H, W), CPU float32 in [-1, 1], as handed out
    frame_classes: tuple[int, ...]  # the class every frame was made under (a live schedule's latest at the time)
    settings: StreamSettings  # as run: window and sink blocks resolved
    frames_per_block: int
    first_frame_seconds: float | None  # start -> the first block's (or chunk's) frames in hand (None: none made)
    total_seconds: float  # start of generation -> the last frames handed out (on_frames included)
    recaches: int = 0  # cache rebuilds at switches (recache=True)
    recache_seconds: float = 0.0
    correction_seconds: float = 0.0  # decoding, correcting and re-encoding chunks (with a correction)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    @property
    def frames_per_second(self) -> float:
        """Frames of one clip per second of generation (the whole batch's time)."""
        return self.num_frames / self.total_seconds if self.total_seconds > 0 else float("inf")


class _Clock:
    """Seconds since the start; synchronises CUDA first, so a reading covers the work queued before it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.start = self.now()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def elapsed(self) -> float:
        return self.now() - self.start


class _Recache:
    """An ``on_block_end`` hook: before the first block of a new prompt, rebuild the KV cache of
    its context from the clean blocks in one clean pass (LongLive's re-cache). The pass takes no
    condition at all (``ACDiT.run`` gives clean tokens none), which is why it changes nothing.

    Only when the next block keeps the cached context: where the window slides, the sampler
    rebuilds the cache from the kept blocks itself before that block. The main model's cache
    only; an autoguidance model's clean K/V are just as condition-free.
    """

    def __init__(self, contexts: list[tuple[int, ...]], switch_blocks: tuple[int, ...], clock: _Clock):
        self.contexts, self.switch_blocks, self.clock = contexts, set(switch_blocks), clock
        self.count, self.seconds = 0, 0.0

    def __call__(self, event: BlockEvent) -> None:
        following = event.index + 1
        if following not in self.switch_blocks or event.cache is None:
            return
        cached = self.contexts[event.index]
        if self.contexts[following][:-1] != cached or not cached:
            return
        t0 = self.clock.now()
        event.cache.reset()
        event.model.run(clean=event.blocks[:, list(cached)], clean_first_block=0, cache=event.cache)
        self.seconds += self.clock.now() - t0
        self.count += 1


@torch.no_grad()
def stream(pipe: Pipeline, schedule: PromptSchedule | LiveSchedule, settings: StreamSettings, *,
           on_frames: FramesCallback | None = None, correction: ChunkCorrector | None = None) -> StreamResult:
    """Generate ``settings.num_clips`` clips of ``settings.num_frames`` frames under ``schedule``,
    block after block, with the pipeline's sampling settings.

    ``on_frames(frames, first_frame)`` is called as soon as each block's frames exist: frames
    (num_clips, k, C, H, W), CPU float32 in [-1, 1] (latent models decoded by the pipeline's
    VAE), in order, covering the stream exactly once. With a ``correction`` they come a chunk
    at a time, corrected. Clip b draws from seed ``settings.seed + b``; the noise of a block
    does not depend on the batch or on how the stream is cut into chunks.

    A :class:`LiveSchedule` may change or stop while the stream runs: later blocks follow the
    latest schedule (with a correction, later chunks), and a stopped stream returns the frames
    made so far. The result's ``frame_classes`` are the classes each frame was made under.
    """
    cfg, model = pipe.config, pipe.model
    settings = settings.for_model(cfg)
    per_block = frames_per_block(cfg)
    num_frames, B = settings.num_frames, settings.num_clips
    live = schedule if isinstance(schedule, LiveSchedule) else LiveSchedule(schedule, num_frames, per_block)
    if live.made_prompts:
        raise ValueError("this live schedule has already run a stream; give each stream its own LiveSchedule")
    if (live.num_frames, live.frames_per_block) != (num_frames, per_block):
        raise ValueError(f"the live schedule is for {live.num_frames} frames of {live.frames_per_block} a block; "
                         f"the stream makes {num_frames} frames of {per_block}")
    if not pipe.decodes:
        raise ValueError("a stream is handed out in pixels: this model generates VAE latents; load its VAE")
    if correction is not None:
        if pipe.vae_record is not None:
            raise ValueError("ACDC correction re-encodes corrected pixels into the context: it needs a pixel-space "
                             "model")
        live.add_check(lambda s: correction.check_for(cfg, num_frames, s))
        if settings.switch != "continue":
            raise ValueError("ACDC correction streams chunk by chunk through every switch: use switch='continue'")
    N = num_frames // per_block
    seeds = list(range(settings.seed, settings.seed + B))
    generators = make_generators(seeds)  # one stream of noise per clip, through every call
    contexts = context_schedule(N, cfg.num_blocks, settings.window, settings.sink_blocks)
    window = dict(window=settings.window, sink_blocks=settings.sink_blocks)

    clock = _Clock(model.device)
    recache = _Recache(contexts, (), clock) if settings.recache else None
    pieces: list[torch.Tensor] = []
    first_frame_seconds = None
    made_prompts = live.made_prompts  # the schedule entry every block begun was made under

    def hand_out(frames: torch.Tensor, first_frame: int) -> None:
        nonlocal first_frame_seconds
        frames = frames.float().clamp(-1, 1).cpu()
        if first_frame_seconds is None:
            first_frame_seconds = clock.elapsed()
        pieces.append(frames)
        if on_frames is not None:
            on_frames(frames, first_frame)

    def to_pixels(blocks: torch.Tensor) -> torch.Tensor:
        """(B, n, S, P) blocks -> (B, n * per_block, C, H, W) frames."""
        frames = torch.cat([block_to_frames(model, blocks[:, j]) for j in range(blocks.shape[1])], dim=1)
        if pipe.vae is not None:
            frames = pipe.decode(frames.transpose(1, 2)).transpose(1, 2)
        return frames

    def begin(first: int, end: int, plan: PromptSchedule) -> None:
        """Record blocks first..end-1 as begun under ``plan``."""
        made_prompts.extend(plan.block_prompts(N, per_block)[first:end])

    def planned(plan: PromptSchedule) -> tuple[list[PromptSwitch], list[int]]:
        """Every block's entry (those begun as made, the rest as ``plan`` says) and the blocks where
        a new entry starts: a switch of the schedule, or a change that reaches blocks already begun."""
        prompts = made_prompts + plan.block_prompts(N, per_block)[len(made_prompts):]
        return prompts, [b for b in range(1, N) if prompts[b] != prompts[b - 1]]

    blocks = torch.empty(B, N, cfg.block_size, cfg.patch_dim, device=model.device, dtype=model.dtype)
    made = 0  # blocks finished and handed out
    plan, version = live.begin(0, 1)
    correction_seconds = 0.0
    if correction is None:
        # One block loop from the last cut (or from block 0 when the context is kept through
        # switches) to the next; a schedule change restarts the loop at the next block with
        # the blocks made as its prefix, and the generators run on, so the noise of every
        # block is the same as in one uncut run.
        while made < N and not live.stopped:
            prompts, switches = planned(plan)
            cuts = switches if settings.switch == "cut" else []
            start = max([0, *(b for b in cuts if b <= made)])
            end = min([N, *(b for b in cuts if b > made)])
            labels = torch.tensor([p.class_id for p in prompts[start:end]])
            if recache is not None:  # "continue" only: the loop starts at block 0
                recache.switch_blocks = set(switches)
            begin(made, made + 1, plan)

            def on_block_end(event: BlockEvent, start=start, end=end) -> None:
                nonlocal made, plan, version
                index = start + event.index
                blocks[:, index] = event.block
                hand_out(to_pixels(event.block[:, None]), index * per_block)
                made = index + 1
                if recache is not None:
                    recache(event)
                if made == N:
                    return
                if live.stopped:
                    raise _Stop
                latest, latest_version = live.begin(made, made + 1)
                if latest_version != version:
                    plan, version = latest, latest_version
                    raise _Replan
                if made < end:
                    begin(made, made + 1, plan)

            try:
                pipe(labels[None].repeat(B, 1), generator=generators, num_blocks=end - start,
                     prefix=blocks[:, start:made] if made > start else None, on_block_end=on_block_end,
                     output="blocks", **window)
            except (_Replan, _Stop):
                continue
    else:
        # Chunk by chunk: chunk i is sampled with the chunks before it, as corrected, as its clean
        # prefix; the generators run on through every call, so block j's noise is the same as
        # in one uncut run. A schedule change applies from the next chunk.
        k = correction.chunk_blocks(per_block)
        for chunk, start in enumerate(range(0, N, k)):
            if live.stopped:
                break
            end = start + k
            plan, version = live.begin(start, end)
            begin(start, end, plan)
            prompts, switches = planned(plan)
            if recache is not None:
                recache.switch_blocks = set(switches)
            labels = torch.tensor([p.class_id for p in prompts[:end]])[None].repeat(B, 1)
            blocks[:, :end] = pipe(labels, generator=generators, num_blocks=end, prefix=blocks[:, :start] if start
                                   else None, on_block_end=recache, output="blocks", **window)
            t0 = clock.now()
            frames = to_pixels(blocks[:, start:end]).clamp(-1, 1)
            fixed = correction.correct(frames, prompts[start].class_id, seeds, chunk, start * per_block)
            per_block_frames = fixed.to(model.device, model.dtype).unflatten(1, (k, per_block))
            blocks[:, start:end] = torch.stack([frames_to_block(model, per_block_frames[:, j]) for j in range(k)], 1)
            correction_seconds += clock.now() - t0
            hand_out(to_pixels(blocks[:, start:end]), start * per_block)  # what the context now holds
            made = end
    total_seconds = clock.elapsed()
    frame_classes = tuple(p.class_id for p in made_prompts[:made] for _ in range(per_block))
    frames = torch.cat(pieces, dim=1) if pieces else torch.empty(B, 0, cfg.in_channels, *cfg.input_size[-2:])
    return StreamResult(frames=frames, frame_classes=frame_classes,
                        settings=settings, frames_per_block=per_block, first_frame_seconds=first_frame_seconds,
                        total_seconds=total_seconds, recaches=recache.count if recache else 0,
                        recache_seconds=recache.seconds if recache else 0.0, correction_seconds=correction_seconds)
