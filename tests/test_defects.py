"""Defect detection and repair masks for story-world frames."""

import torch

from ardiff.worlds.defects import components, detect_defect, foreground, repair_mask
from ardiff.worlds.story import FrameState, StoryWorld, render_frame
from helpers import needs_fmnist

DEFAULT_STATE = FrameState("bag", "yellow", "teal", "small", 0, 0)


def _frame(state=DEFAULT_STATE):
    world = StoryWorld("test")
    item = world.images[world.item_indices[0]]
    return render_frame(item, state), state


def test_components_labels_separate_blobs():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0:2, 0:2] = True
    mask[5:8, 5:7] = True
    labels = components(mask)
    assert labels[0, 0] != labels[6, 6] and labels[0, 0] == labels[1, 1] and (labels[~mask] == 0).all()
    assert len(labels.unique()) == 3


@needs_fmnist
def test_clean_missing_and_duplicated_items():
    frame, state = _frame()
    assert detect_defect(frame) is None
    background = frame[:, :1, :1].expand_as(frame).clone()
    assert detect_defect(background) == "missing"
    doubled = frame.clone()
    doubled[:, 16:32, 16:32] = frame[:, 0:16, 0:16]  # a second copy of the item
    assert detect_defect(doubled) == "duplicate"
    mask = repair_mask(doubled, "duplicate")
    assert mask.shape == (1, 1, 32, 32) and mask[0, 0, 20:28, 20:28].any() and not mask[0, 0, :12, :12].any()
    # erasing under the mask (painting background there) removes the defect
    fixed = torch.where(mask[0].bool(), background, doubled)
    assert detect_defect(fixed) is None
    missing = repair_mask(background, "missing", state)
    assert missing[0, 0, :16, :16].all() and missing.sum() == 16 * 16


@needs_fmnist
def test_true_renders_are_rarely_flagged():
    world = StoryWorld("test", seed=2)
    flagged = sum(detect_defect(world.random_frame(i)[0]) is not None for i in range(200))
    assert flagged <= 6  # about 1% on 1000 renders (dark items on a similar background)
    assert foreground(world.random_frame(0)[0]).any()
