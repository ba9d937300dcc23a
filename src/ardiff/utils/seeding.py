"""Named random streams.

Every random draw in ardiff comes from a generator that is a pure function of a few integer
keys, never from hidden global state, so a sample, a training step or a benchmark story is
the same whatever batch, worker or process it lands in, and runs resume exactly. The stream
constants below name what each key space is for; their values are part of every recorded
result (changing one changes the numbers), so they never change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Keys mixed by :func:`seeded_generator` (the first key is a dataset's or world's seed).
STORY_STREAM = 7919  # the story world: which story index i is
RANDOM_FRAME_STREAM = 104729  # the story world: random single frames (reader and corrector training)
STORY_FRAME_STREAM = 31337  # story datasets: which story and frame a training index shows

# Keys mixed by :func:`hashed_seed` (the first key is a training run's seed).
EXAMPLE_DRAW_STREAM = 77  # class-weighted example draws of a training step
TRAINING_NOISE_STREAM = 1_000_003  # a training step's timesteps, noise and condition dropout
POSTERIOR_STREAM = 2_000_029  # a training step's VAE posterior samples (latent caches with moments)

# Multipliers of the per-item and per-chunk streams (an affine map keeps seeds readable).
ITEM_STRIDE = 100_003  # story / clip k of a batch run with seed s: s * ITEM_STRIDE + k
CHUNK_STRIDE = 1_000_003  # chunk i of an item with seed s: s * CHUNK_STRIDE + i


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch generator that is a pure function of ``keys`` (e.g. dataset seed and index).

    ``SeedSequence`` mixes the keys, so neighbouring indices get unrelated streams; random
    choices made per sample (flip, clip start, moving items) are then the same whichever
    worker loads it and in whatever order.
    """
    state = np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def hashed_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (FNV-1a style), e.g. (run seed, stream, step)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` (a story, a clip) of a batch run with ``seed``."""
    return seed * ITEM_STRIDE + index


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index`` of an item whose own seed is ``seed``: chunk i's noise
    does not depend on the other chunks."""
    return seed * CHUNK_STRIDE + index


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator("cpu").manual_seed(int(seed))


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample: sample i then does not depend on the rest of the batch,
    nor on the device the model runs on (the sampler draws noise on the CPU and moves it)."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
