"""The story world, whole: a synthetic world with exact ground truth, for measuring what
generators get right.

- :mod:`~ardiff.worlds.story`: the grammar and the renderer (stories, frame states, frames).
- :mod:`~ardiff.worlds.text`: the story text encoder (sentences -> condition vectors).
- :mod:`~ardiff.worlds.reader`: the attribute reader (frames -> the six attributes).
- :mod:`~ardiff.worlds.defects`: missing / duplicated items and the masks that repair them.
- :mod:`~ardiff.worlds.datasets`: its training data (stories for the ARM, captioned frames).
- :mod:`~ardiff.worlds.checkpoint`: its small networks' model directories.
"""

from ardiff.worlds.story import FrameState, Story, StoryWorld, make_story, render_frame

__all__ = ["FrameState", "Story", "StoryWorld", "make_story", "render_frame"]
