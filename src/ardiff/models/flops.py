"""Model FLOP counts (multiply-add = 2 FLOPs), the figures `ardiff bench` divides by time.

Forward FLOPs of one :meth:`ACDiT.run` call, summed over layers, with
``L`` = tokens in the call, ``Lq`` = tokens that are queries (the last layer queries
only the noisy tokens), ``Lk`` = keys (cache + tokens), ``G`` = noisy groups, D = hidden:

    per layer   2 L (3 D^2)              qkv projection (every token, keys included)
              + 4 Lq Lk D                attention scores and weighted values, dense
                                         (what SDPA with a boolean mask computes)
              + 2 Lq D^2 + 16 Lq D^2     output projection and the 4x MLP
              + 12 G D^2                 adaLN modulation (once per group, broadcast)
    embed       2 L P D   final   2 G S D P + 4 G D^2   timestep MLP  2 G (256 D + D^2)

A training step is 3x the forward (backward = 2x forward), the convention of PaLM and
nanoGPT. Elementwise work (norms, RoPE, softmax) is not counted.
"""

from __future__ import annotations


def run_flops(config, num_clean_blocks: int, groups: int, cached_blocks: int = 0) -> int:
    D, P, S = config.hidden_size, config.patch_dim, config.block_size
    L = (num_clean_blocks + groups) * S
    Lk = cached_blocks * S + L
    noisy = groups * S
    total = 2 * L * P * D
    for layer in range(config.depth):
        Lq = L if layer < config.depth - 1 else noisy
        total += 2 * L * 3 * D * D + 4 * Lq * Lk * D + 18 * Lq * D * D + 12 * groups * D * D
    if groups:
        total += 2 * noisy * D * P + 4 * groups * D * D + 2 * groups * (256 * D + D * D)
    return total


def training_step_flops(config, batch_size: int) -> int:
    T = config.num_blocks
    return 3 * batch_size * run_flops(config, T - 1, T)


def sampling_flops(config, batch_size: int, num_steps: int, cfg: bool, use_cache: bool = True,
                   groups: list[int] | None = None) -> int:
    """Forward FLOPs of :func:`ardiff.sample` (riding context pass when cached). ``groups``: the
    noisy groups of every step (2 on guided steps, 1 elsewhere), instead of ``cfg`` on all."""
    T = config.num_blocks
    groups = groups if groups is not None else [2 if cfg else 1] * num_steps
    total = 0
    for i in range(T):
        for step, G in enumerate(groups):
            if use_cache:
                ride = 1 if (i > 0 and step == 0) else 0
                total += run_flops(config, ride, G, cached_blocks=i - ride)
            else:
                total += run_flops(config, i, G)
    return batch_size * total
