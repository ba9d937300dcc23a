"""Building blocks of ACDiT: normalisation, RoPE-ND, SCAM attention, embedders."""

from ardiff.nn.attention import Attention, ScamLayout, Span, dense_scam_mask, flex_scam_mask
from ardiff.nn.embed import LabelEmbedder, TimestepEmbedder, VectorEmbedder
from ardiff.nn.norm import RMSNorm
from ardiff.nn.rope import RopeND

__all__ = [
    "Attention",
    "LabelEmbedder",
    "RMSNorm",
    "RopeND",
    "ScamLayout",
    "Span",
    "TimestepEmbedder",
    "VectorEmbedder",
    "dense_scam_mask",
    "flex_scam_mask",
]
