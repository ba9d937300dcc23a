"""ACDiT configuration: a typed dataclass, presets, and the derived token geometry."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Network sizes (paper Table 2; S and tiny are ours). depth x hidden x heads.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, hidden_size=64, num_heads=2, input_size=(8, 8), in_channels=3, patch_size=2,
                 block_layout="tiles", block_size=4, num_classes=10),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=18),
    "H": dict(depth=32, hidden_size=1280, num_heads=20),
}

BLOCK_LAYOUTS = ("tiles", "raster")
# paper / official: RoPE-ND; none / absolute: the position-encoding ablation (no rotation;
# absolute adds fixed sine-cosine embeddings to the tokens). Kept equal to ardiff.nn.rope.ROPE_MODES.
ROPE_MODES = ("paper", "official", "none", "absolute")
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class ACDiTConfig:
    """Everything needed to build an :class:`~ardiff.ACDiT`.

    Data geometry. ``input_size`` is ``(H, W)`` for images or ``(F, H, W)`` for video, in
    input pixels (or latent cells). Patches are ``patch_size x patch_size`` spatially
    (frames are never merged). The token grid is cut into blocks of ``block_size`` tokens:

    - ``block_layout="tiles"`` (images): square ``s x s`` tiles, ``s*s == block_size``,
      tiles in raster order and raster order inside a tile (the paper's image setting);
    - ``block_layout="raster"``: contiguous runs of the raster (frame-major) order. A
      multiple of the row length gives row blocks; a multiple of a frame gives blocks
      of k frames; 1 gives token-wise autoregression; the whole grid gives plain DiT.

    The defaults are the paper's ImageNet-256 latent setting (4 x 32 x 32, patch 1,
    four 16 x 16 tiles, 1000 classes).
    """

    input_size: tuple[int, ...] = (32, 32)
    in_channels: int = 4
    patch_size: int = 1
    block_layout: str = "tiles"
    block_size: int = 256

    depth: int = 12
    hidden_size: int = 384
    num_heads: int = 6
    mlp_ratio: float = 4.0

    num_classes: int = 1000  # 0: no class conditioning
    cond_dim: int = 0  # > 0: conditioning by free vectors of this size (e.g. text embeddings)

    rope: str = "paper"
    rope_axis_weights: tuple[int, ...] | None = None
    # Fixed 2-D sine-cosine embeddings of each token's spatial (row, column) position, added
    # to the tokens on top of RoPE. RoPE is relative only: a model drawing from noise cannot
    # tell the top left from the centre except by edge effects, so "at the top left" in a
    # caption goes unlearned. Spatial only: the time axis stays relative (rolling windows).
    spatial_pos_embed: bool = False
    qk_norm: bool = True
    norm_eps: float = 1e-6
    attention_backend: str = "auto"  # auto = sdpa (dense mask); "flex" = FlexAttention BlockMask, CUDA only

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # What the network's output means: "epsilon" (the noise; every trained model) or
    # "v_prediction" (sqrt(a) eps - sqrt(1 - a) x0): few-step students, whose clean-sample
    # prediction at high noise an epsilon output would give only divided by sqrt(a) ~ 0.006.
    prediction_type: str = "epsilon"

    def __post_init__(self):
        self.input_size = tuple(int(v) for v in self.input_size)
        if self.rope_axis_weights is not None:
            self.rope_axis_weights = tuple(int(v) for v in self.rope_axis_weights)
        self.validate()

    # -- presets & (de)serialisation --------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "ACDiTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown ACDiT preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        if self.rope_axis_weights is not None:
            d["rope_axis_weights"] = list(self.rope_axis_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ACDiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ACDiTConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**d)

    # -- derived geometry -------------------------------------------------------
    @property
    def is_video(self) -> bool:
        return len(self.input_size) == 3

    @property
    def token_grid(self) -> tuple[int, ...]:
        *frames, h, w = self.input_size
        return (*frames, h // self.patch_size, w // self.patch_size)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.token_grid)

    @property
    def tokens_per_frame(self) -> int:
        return math.prod(self.token_grid[-2:])

    @property
    def num_blocks(self) -> int:
        return self.num_tokens // self.block_size

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def tile_side(self) -> int:
        return math.isqrt(self.block_size)

    # -- validation ------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str):
            raise ValueError(f"invalid ACDiTConfig: {msg}")

        if len(self.input_size) not in (2, 3) or min(self.input_size) < 1:
            bad(f"input_size={self.input_size} must be (H, W) for images or (F, H, W) for video")
        if self.patch_size < 1:
            bad(f"patch_size={self.patch_size} must be >= 1")
        *_, h, w = self.input_size
        if h % self.patch_size or w % self.patch_size:
            bad(f"input height/width {(h, w)} is not divisible by patch_size={self.patch_size}")
        if self.block_layout not in BLOCK_LAYOUTS:
            bad(f"block_layout={self.block_layout!r}; choose one of {BLOCK_LAYOUTS}")
        if self.block_size < 1:
            bad(f"block_size={self.block_size} must be >= 1 token")
        n = self.num_tokens
        if self.block_layout == "tiles":
            if self.is_video:
                bad("block_layout='tiles' is for images; video uses block_layout='raster' "
                    "with block_size = frames_per_block * tokens_per_frame")
            s = self.tile_side
            gh, gw = self.token_grid
            if s * s != self.block_size:
                bad(f"tiles are not square: block_size={self.block_size} is not a perfect square "
                    f"(use e.g. {s * s} or {(s + 1) ** 2}, or block_layout='raster')")
            if gh % s or gw % s:
                bad(f"square tiles of {s}x{s} tokens do not divide the token grid {gh}x{gw} "
                    f"(input {self.input_size}, patch {self.patch_size})")
        elif n % self.block_size:
            bad(f"block_size={self.block_size} does not divide the sequence of {n} tokens "
                f"(token grid {self.token_grid})")
        if self.hidden_size % self.num_heads:
            bad(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            bad(f"head dim {self.head_dim} (hidden_size/num_heads) must be even for RoPE")
        if self.rope not in ROPE_MODES:
            bad(f"rope={self.rope!r}; choose one of {ROPE_MODES}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            bad(f"attention_backend={self.attention_backend!r}; choose one of {ATTENTION_BACKENDS}")
        if self.prediction_type not in PREDICTION_TYPES:
            bad(f"prediction_type={self.prediction_type!r}; choose one of {PREDICTION_TYPES}")
        if self.num_classes < 0 or self.cond_dim < 0:
            bad(f"num_classes={self.num_classes} and cond_dim={self.cond_dim} must be >= 0")
        # RoPE split errors are raised by RopeND with the exact head dim and weights.
        from ardiff.nn.rope import RopeND, split_head_dim

        if self.rope == "absolute":  # the embedding splits the hidden size over the axes, like RoPE the head
            try:
                split_head_dim(self.hidden_size, self.rope_axis_weights or (1,) * len(self.token_grid))
            except ValueError as e:
                bad(f"rope='absolute': {e}".replace("head dim", "hidden size"))
        if self.spatial_pos_embed:
            if self.rope == "absolute":
                bad("spatial_pos_embed=True with rope='absolute': the absolute embeddings already hold the spatial "
                    "position; set one of them")
            if self.hidden_size % 4:
                bad(f"spatial_pos_embed needs hidden_size divisible by 4 (sine and cosine per spatial axis), "
                    f"got {self.hidden_size}")
        RopeND(self.head_dim, self.token_grid, self.rope, self.rope_axis_weights)
