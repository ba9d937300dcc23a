"""ACDCPipeline: any ARM, any corrector, any memory, joined chunk by chunk.

For chunk i: the ARM samples it from its (corrected) context -> decode -> correct with the
memory's prompt i (for the chunks selected) -> encode -> the corrected chunk becomes the
ARM's context. Story mode: one prompt per frame. Video mode: one prompt; the first chunk
(L frames) is corrected, then generation continues from it (the paper's video experiment).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ardiff.acdc.base import ARM, Corrector, IdentityMemory, Memory, check_frames
from ardiff.utils.seeding import chunk_seed


@dataclass
class ChunkRecord:
    index: int
    arm_prompt: str  # what the ARM was conditioned on (the user's prompt)
    corrector_prompt: str | None  # the memory's rewrite, given to the corrector
    corrected: bool
    t_prime: float | None  # exact noise level used (fraction of the training timesteps)
    timesteps: list[int] = field(default_factory=list)
    seed: int | None = None  # the corrector's seed for this chunk
    seconds_decode: float = 0.0
    seconds_correct: float = 0.0
    seconds_encode: float = 0.0


@dataclass
class ACDCResult:
    uncorrected: torch.Tensor  # (N, F, C, H, W): each chunk as the ARM made it, decoded
    corrected: torch.Tensor  # (N, F, C, H, W): what entered the context (== uncorrected where not corrected)
    records: list[ChunkRecord]
    prompts: list[str]
    rewritten_prompts: list[str]
    seconds_total: float = 0.0

    def frames(self, corrected: bool = True) -> torch.Tensor:
        """All frames in order, (N * F, C, H, W)."""
        x = self.corrected if corrected else self.uncorrected
        return x.flatten(0, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "rewritten_prompts": self.rewritten_prompts,
                "seconds_total": self.seconds_total, "chunks": [asdict(r) for r in self.records]}


def select_chunks(correct: int | Sequence[int] | None, num_chunks: int) -> set[int]:
    """None -> all chunks; an int k -> the first k ("ACDC #k"); a sequence -> those indices."""
    if correct is None:
        return set(range(num_chunks))
    if isinstance(correct, int):
        if correct < 0:
            raise ValueError(f"correct={correct}: the number of leading chunks to correct must be >= 0")
        return set(range(min(correct, num_chunks)))
    chosen = {int(i) for i in correct}
    bad = sorted(i for i in chosen if not 0 <= i < num_chunks)
    if bad:
        raise ValueError(f"correct={list(correct)}: chunk indices {bad} outside 0..{num_chunks - 1}")
    return chosen


class ACDCPipeline:
    """``ACDCPipeline(arm, corrector, memory)``; ``corrector=None`` runs the ARM alone (the baseline).

    t_prime: SDEdit noise level in (0, 1] (the paper uses 0.4-0.6: higher fixes structure and
    motion, lower only local artefacts). color_match: after correction, match each channel's
    mean and std to the chunk's input (off by default; see :func:`match_color`).
    """

    def __init__(self, arm: ARM, corrector: Corrector | None = None, memory: Memory | None = None,
                 t_prime: float = 0.5, color_match: bool = False, progress: bool = True):
        if not 0 < t_prime <= 1:
            raise ValueError(f"t_prime={t_prime} must be in (0, 1] (fraction of the diffusion timesteps)")
        self.arm = arm
        self.corrector = corrector
        self.memory = memory or IdentityMemory()
        self.t_prime = t_prime
        self.color_match = color_match
        self.progress = progress

    # -- modes ------------------------------------------------------------------------
    def story(self, prompts: Sequence[str], seed: int = 0, correct: int | Sequence[int] | None = None,
              masks: dict[int, torch.Tensor] | None = None) -> ACDCResult:
        """One chunk (frame) per prompt. ``correct``: all (None), the first k, or indices.
        ``masks``: chunk index -> (1, 1, H, W) mask of the pixels the corrector may change."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise ValueError("story mode needs at least one prompt")
        rewritten = self.memory.rewrite(prompts)
        if len(rewritten) != len(prompts):
            raise ValueError(f"memory returned {len(rewritten)} prompts for {len(prompts)}")
        return self._run(prompts, rewritten, seed, select_chunks(correct, len(prompts)), masks or {})

    def video(self, prompt: str, num_chunks: int = 2, seed: int = 0, correct: int | Sequence[int] | None = 1,
              masks: dict[int, torch.Tensor] | None = None) -> ACDCResult:
        """One prompt for every chunk (the ARM's chunk is L frames, e.g. 16); by default the
        first chunk is corrected and generation continues from it, as in the paper."""
        if num_chunks < 1:
            raise ValueError(f"num_chunks={num_chunks} must be >= 1")
        prompts = [str(prompt)] * num_chunks
        return self._run(prompts, prompts, seed, select_chunks(correct, num_chunks), masks or {})

    # -- the loop -----------------------------------------------------------------------
    def _run(self, prompts, rewritten, seed, selected, masks) -> ACDCResult:
        if selected and self.corrector is None:
            selected = set()  # the baseline: no corrector, nothing to correct
        t_start = time.perf_counter()
        records: list[ChunkRecord] = []
        before: list[torch.Tensor] = []
        after: list[torch.Tensor] = []
        bar = None

        def on_chunk(index: int, chunk: Any):
            nonlocal bar
            if self.progress and bar is None:  # opened by the first chunk: an ARM that refuses prints no bar
                from tqdm.auto import tqdm

                bar = tqdm(total=len(prompts), desc="ACDC chunks", unit="chunk", dynamic_ncols=True)
            t0 = time.perf_counter()
            frames = check_frames(self.arm.decode(chunk), f"{type(self.arm).__name__}.decode")
            record = ChunkRecord(index=index, arm_prompt=prompts[index], corrector_prompt=rewritten[index],
                                 corrected=index in selected, t_prime=None, seconds_decode=time.perf_counter() - t0)
            before.append(frames.detach().cpu())
            replacement = None
            if record.corrected:
                record.seed = chunk_seed(seed, index)  # per-chunk stream: chunk i's noise ignores the others
                t0 = time.perf_counter()
                result = self.corrector.correct(frames, rewritten[index], self.t_prime,
                                                torch.Generator().manual_seed(record.seed), mask=masks.get(index))
                fixed = check_frames(result.frames, f"{type(self.corrector).__name__}.correct").to(frames)
                if self.color_match:
                    fixed = match_color(fixed, frames, masks.get(index))
                record.t_prime, record.timesteps = result.t_prime, list(result.timesteps)
                record.seconds_correct = time.perf_counter() - t0
                t0 = time.perf_counter()
                replacement = self.arm.encode(fixed)
                record.seconds_encode = time.perf_counter() - t0
                # What the context holds is the re-encoded chunk: report that, not the corrector's pixels.
                after.append(check_frames(self.arm.decode(replacement), "decode").detach().cpu())
            else:
                after.append(frames.detach().cpu())
            records.append(record)
            if bar is not None:
                bar.update(1)
            return replacement

        generator = torch.Generator().manual_seed(seed)
        chunks = self.arm.generate(list(prompts), on_chunk, generator)
        if bar is not None:
            bar.close()
        if len(chunks) != len(prompts) or len(records) != len(prompts):
            raise RuntimeError(f"{type(self.arm).__name__} made {len(chunks)} chunks and reported {len(records)} "
                               f"for {len(prompts)} prompts; an ARM must call on_chunk once per chunk")
        return ACDCResult(uncorrected=torch.stack(before), corrected=torch.stack(after), records=records,
                          prompts=list(prompts), rewritten_prompts=list(rewritten),
                          seconds_total=time.perf_counter() - t_start)


def match_color(frames: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel mean/std of ``frames`` matched to ``reference`` (both (F, C, H, W)).

    Repeated SDEdit drifts in colour; this pins the first two moments of each channel to the
    chunk as the ARM made it. Pixels outside ``mask`` are left untouched.
    """
    dims = (0, 2, 3)
    mu, sd = frames.mean(dims, keepdim=True), frames.std(dims, keepdim=True).clamp_min(1e-6)
    rmu, rsd = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True)
    out = ((frames - mu) / sd * rsd + rmu).clamp(-1, 1)
    if mask is not None:
        out = torch.where(mask.bool().expand_as(out), out, frames)
    return out
