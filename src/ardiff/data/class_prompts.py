"""Prompts that name classes: "a photo of a sneaker" -> the class id of "sneaker"."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["FMNIST_PROMPT_NAMES", "ClassPrompts"]


class ClassPrompts:
    """Maps a prompt to the class whose name it mentions ("a photo of a sneaker" -> 7).

    Longest name first, case-insensitive, on word boundaries. A prompt naming no class is an
    error that lists the names, or, with ``allow_none``, None: the null class, the model's
    unconditional mode (trained by class dropout), so an ARM block then follows its context.
    """

    def __init__(self, class_names: Sequence[str], allow_none: bool = False):
        self.class_names = list(class_names)
        self.allow_none = allow_none
        order = sorted(range(len(self.class_names)), key=lambda k: -len(self.class_names[k]))
        self._patterns = [(k, re.compile(rf"(?<!\w){re.escape(self.class_names[k].lower())}s?(?!\w)"))
                          for k in order]

    def __call__(self, prompt: str) -> int | None:
        text = prompt.lower()
        for k, pattern in self._patterns:
            if pattern.search(text):
                return k
        if self.allow_none:
            return None
        raise ValueError(f"prompt {prompt!r} names none of the model's classes: {', '.join(self.class_names)}")


# Fashion-MNIST class names as a prompt would say them ("T-shirt/top" -> "t-shirt").
FMNIST_PROMPT_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle boot")
