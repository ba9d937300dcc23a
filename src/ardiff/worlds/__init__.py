"""Synthetic worlds with exact ground truth, for measuring what generators get right."""

from ardiff.worlds.story import FrameState, Story, StoryWorld, make_story, render_frame

__all__ = ["FrameState", "Story", "StoryWorld", "make_story", "render_frame"]
