from ardiff.models.acdit import ACDiT
from ardiff.models.config import PRESETS, ACDiTConfig

__all__ = ["ACDiT", "ACDiTConfig", "PRESETS"]
