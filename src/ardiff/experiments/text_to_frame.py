"""`ardiff world score-corrector`: how well a single-frame story model draws what a caption says.

Each of ``num`` test-split frames has every attribute drawn at random (the same draw as the
reader's test set); the model draws a frame from noise given the frame's full caption ("a
small red bag at the top left of a navy floor."), and the shipped reader reads it back.
Reported per attribute: the fraction read as the caption says, with a 95% interval, and the
fraction with every attribute right.
"""

from __future__ import annotations

import time

import torch

from ardiff.eval.evaluate import proportion_interval
from ardiff.worlds.reader import READ_ATTRIBUTES, AttributeReader, render_batch, state_labels
from ardiff.worlds.story import StoryWorld

_ATTRIBUTE_ORDER = tuple(READ_ATTRIBUTES)


@torch.no_grad()
def score_text_to_frame(pipe, encoder, num: int = 200, seed: int = 1, batch_size: int = 50,
                        reader: AttributeReader | None = None, progress: bool = True) -> dict:
    """Draw ``num`` frames from noise with full captions; per-attribute accuracy read back.

    Frame i uses test-split random frame i (index offset by ``seed`` * 100000, so seeds draw
    different frames) and noise seeded by (seed, i): a result does not depend on the batch size.
    """
    from tqdm.auto import tqdm

    from ardiff.utils.seeding import item_seed

    model = pipe.model
    if model.config.num_blocks != 1:
        raise ValueError(f"score-corrector scores a single-frame model (one block); this one has "
                         f"{model.config.num_blocks} blocks. Score a story ARM with `ardiff acdc benchmark`.")
    reader = reader or AttributeReader.from_pretrained()
    world = StoryWorld("test", seed=0)
    indices = [seed * 100_000 + i for i in range(num)]
    truth_frames, states = render_batch(world, indices)
    captions = [s.caption(with_layout=True) for s in states]
    t0 = time.perf_counter()
    frames = []
    for start in tqdm(range(0, num, batch_size), desc="drawing", unit="batch", disable=not progress):
        chunk = captions[start:start + batch_size]
        cond = encoder.encode(chunk).to(pipe.device)
        frames.append(pipe(cond, seeds=[item_seed(seed, i) for i in range(start, start + len(chunk))]))
    frames = torch.cat(frames).clamp(-1, 1)
    seconds = time.perf_counter() - t0
    preds, _ = reader.read(frames)
    truth = state_labels(states)
    right = {a: preds[a] == truth[a] for a in _ATTRIBUTE_ORDER}
    accuracy = {a: right[a].float().mean().item() for a in _ATTRIBUTE_ORDER}
    every = torch.stack([right[a] for a in _ATTRIBUTE_ORDER]).all(0).float().mean().item()
    # The reader on the true renders: the ceiling a perfect model would reach.
    ceiling_preds, _ = reader.read(truth_frames)
    ceiling = {a: (ceiling_preds[a] == truth[a]).float().mean().item() for a in _ATTRIBUTE_ORDER}
    return {
        "num": num, "seed": seed,
        "accuracy": accuracy,
        "interval95": {a: proportion_interval(v, num) for a, v in accuracy.items()},
        "position": (right["row"] & right["col"]).float().mean().item(),
        "all_attributes": every,
        "reader_on_true_renders": ceiling,
        "seconds": seconds,
        "frames": frames, "captions": captions,
    }


def format_scores(result: dict) -> str:
    acc, half, ceil = result["accuracy"], result["interval95"], result["reader_on_true_renders"]
    lines = [f"{result['num']} frames drawn from noise with full captions (seed {result['seed']}), read by the "
             f"story reader; 'true renders' is the reader on the real frames of the same captions:",
             f"{'attribute':<12}{'drawn':>16}{'true renders':>14}"]
    for a in _ATTRIBUTE_ORDER:
        lines.append(f"{a:<12}{acc[a]:>9.3f} +-{half[a]:.3f}{ceil[a]:>14.3f}")
    lines.append(f"{'row and col':<12}{result['position']:>9.3f}")
    lines.append(f"{'all six':<12}{result['all_attributes']:>9.3f}")
    return "\n".join(lines)
