"""ACDC: training-free diffusion correction of autoregressive generators, with an LLM memory.

- :mod:`ardiff.acdc.base`: the ARM / Corrector / Memory interfaces.
- :mod:`ardiff.acdc.pipeline`: :class:`ACDCPipeline` (story and video modes).
- :mod:`ardiff.acdc.native`: ACDiT as the ARM (correction inside the block loop) and any
  ardiff image model as an SDEdit corrector.
- :mod:`ardiff.acdc.correctors`: Stable-Diffusion-family and AnimateDiff SDEdit correctors (diffusers).
- :mod:`ardiff.acdc.memory`: rule-based, local-LLM (transformers, GGUF) and OpenAI-compatible memories.
- :mod:`ardiff.acdc.transformers_arms`: Emu3 and Janus (transformers) as ARMs.
"""

from ardiff.acdc.base import ARM, Correction, Corrector, IdentityMemory, Memory
from ardiff.acdc.native import ACDiTARM, ClassPrompts, NativeCorrector
from ardiff.acdc.pipeline import ACDCPipeline, ACDCResult, ChunkRecord, match_color
from ardiff.acdc.sdedit import SDEditSchedule, sdedit_schedule

__all__ = [
    "ARM", "Correction", "Corrector", "IdentityMemory", "Memory",
    "ACDiTARM", "ClassPrompts", "NativeCorrector", "SDEditSchedule", "sdedit_schedule",
    "ACDCPipeline", "ACDCResult", "ChunkRecord", "match_color",
]
