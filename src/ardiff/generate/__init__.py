from ardiff.generate.cache import KVCache
from ardiff.generate.sampler import BlockEvent, make_generators, sample

__all__ = ["BlockEvent", "KVCache", "make_generators", "sample"]
