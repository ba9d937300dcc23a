"""Story-world training data: stories for the ARM, captioned frames for the corrector.

Conditions are the frozen story text encoder's vectors (``data.text_encoder``), computed
once per distinct sentence and cached, so the trainer sees ordinary float conditions.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ardiff.utils.seeding import STORY_FRAME_STREAM, seeded_generator
from ardiff.worlds.story import StoryWorld


def _encoder(text_encoder):
    from ardiff.worlds.text import StoryTextEncoder

    if isinstance(text_encoder, StoryTextEncoder):
        return text_encoder
    return StoryTextEncoder.from_pretrained(text_encoder)


class StoryDataset(Dataset):
    """(3, length, 32, 32) ground-truth frames and (length, E) sentence vectors, one per frame.

    Each frame is conditioned on its own sentence only; earlier frames reach the model
    through the clean context, as the ARM is meant to use them.
    """

    def __init__(self, split: str = "train", root=None, length: int = 6, num_stories: int = 60000,
                 text_encoder=None, seed: int = 0):
        self.world = StoryWorld(split, root=root, length=length, seed=seed)
        self.encoder = _encoder(text_encoder)
        self.num_stories = num_stories

    def __len__(self) -> int:
        return self.num_stories

    def __getitem__(self, index: int):
        story = self.world.story(index % self.num_stories)
        return self.world.render(story), self.encoder.encode(story.sentences)


class StoryFrameDataset(Dataset):
    """(3, 32, 32) frames with every attribute at random, and the (E,) vector of a caption.

    Captions: the full caption with layout (50%), without layout (30%, what SDEdit needs:
    the layout comes from the noised input), or a story sentence rewritten to name the
    subject fully (20%, the form a memory module writes).
    """

    def __init__(self, split: str = "train", root=None, num_frames: int = 200000, text_encoder=None, seed: int = 0):
        self.world = StoryWorld(split, root=root, seed=seed)
        self.encoder = _encoder(text_encoder)
        self.num_frames = num_frames
        self.seed = seed

    def __len__(self) -> int:
        return self.num_frames

    def caption(self, state, index: int) -> str:
        from ardiff.worlds.story import _ACTION_PHRASES, ACTIONS, NAMES

        g = seeded_generator(self.seed, STORY_FRAME_STREAM, index)
        u = float(torch.rand((), generator=g))
        if u < 0.5:
            return state.caption(with_layout=True)
        if u < 0.8:
            return state.caption(with_layout=False)
        name = NAMES[int(torch.randint(len(NAMES), (1,), generator=g))]
        phrases = _ACTION_PHRASES[ACTIONS[int(torch.randint(len(ACTIONS), (1,), generator=g))]]
        phrase = phrases[int(torch.randint(len(phrases), (1,), generator=g))]
        return f"{name}, the {state.colour} {state.kind} on the {state.background} floor, {phrase}."

    def __getitem__(self, index: int):
        frame, state = self.world.random_frame(index % self.num_frames)
        return frame, self.encoder.encode(self.caption(state, index))
