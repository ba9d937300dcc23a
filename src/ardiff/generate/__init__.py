from ardiff.generate.cache import KVCache
from ardiff.generate.sampler import BlockEvent, SamplingSettings, make_generators, sample

__all__ = ["BlockEvent", "KVCache", "SamplingSettings", "make_generators", "sample"]
