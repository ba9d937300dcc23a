"""Block-autoregressive sampling: the KV cache, the context schedule and the block loop."""

from ardiff.generate.cache import KVCache
from ardiff.generate.context import blocks_to_input, context_schedule
from ardiff.generate.sampler import BlockEvent, BlockHook, sample
from ardiff.generate.settings import SamplingSettings
from ardiff.utils.seeding import make_generators

__all__ = ["BlockEvent", "BlockHook", "KVCache", "SamplingSettings", "blocks_to_input", "context_schedule",
           "make_generators", "sample"]
