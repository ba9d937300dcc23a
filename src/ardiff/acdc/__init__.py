"""ACDC: training-free diffusion correction of autoregressive generators, with an LLM memory.

- :mod:`ardiff.acdc.base`: the ARM / Corrector / Memory interfaces.
- :mod:`ardiff.acdc.pipeline`: :class:`ACDCPipeline` (story and video modes).
- :mod:`ardiff.acdc.native`: ACDiT as the ARM (correction inside the block loop) and any
  ardiff image model as an SDEdit corrector.
- :mod:`ardiff.acdc.correctors`: Stable-Diffusion-family and AnimateDiff SDEdit correctors (diffusers).
- :mod:`ardiff.acdc.memory`: rule-based, local-LLM (transformers, GGUF) and OpenAI-compatible memories.
- :mod:`ardiff.acdc.transformers_arms`: Emu3 and Janus (transformers) as ARMs.
- :mod:`ardiff.acdc.components`: the ARM, corrector and memory a run's specs name.

The names below load on first use, so that the command line can read component specs
without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "ARM": "base", "Correction": "base", "Corrector": "base", "IdentityMemory": "base", "Memory": "base",
    "ACDiTARM": "native", "ClassPrompts": "native", "NativeCorrector": "native",
    "ACDCPipeline": "pipeline", "ACDCResult": "pipeline", "ChunkRecord": "pipeline", "match_color": "pipeline",
    "SDEditSchedule": "sdedit", "sdedit_schedule": "sdedit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"ardiff.acdc.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ardiff.acdc' has no attribute {name!r}")
