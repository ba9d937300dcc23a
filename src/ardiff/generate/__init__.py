"""Block-autoregressive sampling: settings, the KV cache, the block loop and the pipeline."""

from ardiff.generate.cache import KVCache
from ardiff.generate.context import blocks_to_input, context_schedule
from ardiff.generate.pipeline import Guide, Pipeline, class_balanced_labels
from ardiff.generate.sampler import BlockEvent, BlockHook, draw_noise, sample
from ardiff.generate.settings import SamplingSettings

__all__ = ["BlockEvent", "BlockHook", "Guide", "KVCache", "Pipeline", "SamplingSettings", "blocks_to_input",
           "class_balanced_labels", "context_schedule", "draw_noise", "sample"]
