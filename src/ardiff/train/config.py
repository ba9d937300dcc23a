"""Run configuration: YAML files in ``configs/`` plus dotted command-line overrides.

A run file has four sections: ``model`` (an ACDiT preset name plus ACDiTConfig fields),
``data``, ``train`` and ``sample``. Unknown keys and ill-typed values are errors that name
the key and list what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ardiff.models.config import ACDiTConfig


@dataclass
class DataConfig:
    # fashion_mnist | moving_fashion_mnist | stories | story_frames | image_folder | video_folder | latents
    name: str = "fashion_mnist"
    root: str | None = None  # dataset directory (None: the dataset's default location)
    split: str = "train"
    image_size: int | None = None  # folders: centre crop + resize to this size; fashion_mnist: pad to it
    hflip: bool = True  # random horizontal flip (image/video folders)
    num_frames: int = 16  # video: frames per clip; stories: sentences (frames) per story
    frame_stride: int = 1  # video: keep every k-th frame
    canvas_size: int = 64  # moving Fashion-MNIST
    num_items: int = 1
    speed: float = 2.0
    num_videos: int = 10000  # moving Fashion-MNIST: clips; stories: stories; story_frames: frames
    text_encoder: str | None = None  # stories / story_frames: text encoder directory (None: the shipped one)
    skip_corrupt: bool = False  # skip unreadable files (counted and reported) instead of failing
    vae: str | None = None  # latents: a local diffusers AutoencoderKL directory
    seed: int = 0


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 64  # global batch, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay_fraction: float = 0.15  # WSD: linear decay to 0 over the last fraction of steps
    ema_decay: float = 0.9999
    ema_warmup_steps: int = 0  # > 0: decay min(ema_decay, (1 + step) / (ema_warmup_steps + step)); 0: constant
    class_dropout: float = 0.1
    # Per-class sampling weights (one per class): examples are drawn with replacement, class c
    # with probability proportional to class_weights[c], to spend more steps on classes the
    # model confuses. None: every epoch is a permutation of the dataset.
    class_weights: tuple[float, ...] | None = None
    # Per-block loss weights (one per autoregressive block, normalised to mean 1): e.g. more
    # weight on block 0, the only block drawn from the condition alone. None: plain mean.
    block_loss_weights: tuple[float, ...] | None = None
    # Weight of each timestep's loss: uniform (plain epsilon-MSE, DiT's) or p2
    # ((p2_k + SNR) ** -p2_gamma, normalised to mean 1): more of the loss on the high-noise
    # steps, where what to draw is decided from the condition.
    timestep_weighting: str = "uniform"
    p2_k: float = 1.0
    p2_gamma: float = 1.0
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA)
    tf32: bool = True
    compile: bool = False  # torch.compile each transformer layer
    activation_checkpointing: bool = False
    distributed: str = "ddp"  # ddp | fsdp (under torchrun)
    tensorboard: bool = True
    init_from: str | None = None  # model directory (save_pretrained) whose weights start a fresh run


@dataclass
class SampleConfig:
    """Preview grids during training, and the sampling settings recorded with the exported model."""

    num_steps: int = 25
    cfg_scale: float = 1.5
    num_images: int = 16
    sampler: str = "dpmsolver++"  # a key of ardiff.diffusion.SAMPLERS
    clip_denoised: bool = False  # clip predicted clean samples to [-1, 1]: pixel-space runs only
    history_scale: float = 1.0  # history guidance: video models with whole-frame blocks (1 = off)
    guidance_interval: tuple[float, float] | None = None  # guide only LOW <= t/T <= HIGH (None: every step)

    def __post_init__(self):
        self.settings()  # every setting is checked once, by SamplingSettings; errors name the section

    def settings(self):
        """The :class:`~ardiff.SamplingSettings` this section records with the exported model."""
        from ardiff.generate.settings import SamplingSettings

        fields = {k: getattr(self, k) for k in ("cfg_scale", "num_steps", "sampler", "clip_denoised",
                                                "history_scale", "guidance_interval")}
        settings = SamplingSettings.from_record(fields, "sample")
        self.guidance_interval = settings.guidance_interval
        return settings


@dataclass
class RunConfig:
    model: ACDiTConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    model_preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {**({"preset": self.model_preset} if self.model_preset else {}), **self.model.to_dict()},
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "sample": dataclasses.asdict(self.sample),
        }


SECTIONS = {"data": DataConfig, "train": TrainConfig, "sample": SampleConfig}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _section(cls, values: dict[str, Any], name: str):
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                         f"valid keys in '{name}': {', '.join(sorted(hints))}")
    return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    if not isinstance(raw, dict):
        raise ValueError("a run config must be a mapping with sections model, data, train, sample")
    unknown = sorted(set(raw) - {"model", *SECTIONS})
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; valid sections: model, data, train, sample")
    for name, section in raw.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"section {name!r} holds a {type(section).__name__}; each section is a mapping of "
                             f"keys to values (e.g. {name}:\n  key: value)")
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.pop("preset", None)
    hints = typing.get_type_hints(ACDiTConfig)
    unknown = sorted(set(model_raw) - set(hints))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join('model.' + k for k in unknown)}; "
                         f"valid keys in 'model': preset, {', '.join(sorted(hints))}")
    model_values = {k: _coerce(v, hints[k], f"model.{k}") for k, v in model_raw.items()}
    model = ACDiTConfig.preset(preset, **model_values) if preset else ACDiTConfig(**model_values)
    sections = {name: _section(cls, dict(raw.get(name) or {}), name) for name, cls in SECTIONS.items()}
    run = RunConfig(model=model, model_preset=preset, **sections)
    _validate(run)
    return run


def _validate(run: RunConfig) -> None:
    from ardiff.diffusion.schedule import TIMESTEP_WEIGHTINGS

    t = run.train
    checks = [
        (t.steps > 0, f"train.steps={t.steps} must be > 0"),
        (t.batch_size > 0, f"train.batch_size={t.batch_size} must be > 0"),
        (t.grad_accum > 0, f"train.grad_accum={t.grad_accum} must be > 0"),
        (t.lr > 0, f"train.lr={t.lr} must be > 0"),
        (0 <= t.ema_decay < 1, f"train.ema_decay={t.ema_decay} must be in [0, 1)"),
        (0 <= t.class_dropout < 1, f"train.class_dropout={t.class_dropout} must be in [0, 1)"),
        (0 <= t.decay_fraction <= 1, f"train.decay_fraction={t.decay_fraction} must be in [0, 1]"),
        (t.precision in ("fp32", "bf16"), f"train.precision={t.precision!r}; use 'fp32' or 'bf16'"),
        (t.distributed in ("ddp", "fsdp"), f"train.distributed={t.distributed!r}; use 'ddp' or 'fsdp'"),
        (t.checkpoint_every > 0, f"train.checkpoint_every={t.checkpoint_every} must be > 0"),
        (t.class_weights is None or len(t.class_weights) == run.model.num_classes,
         f"train.class_weights has {len(t.class_weights or [])} entries but model.num_classes="
         f"{run.model.num_classes}; give one weight per class"),
        (t.class_weights is None or (all(w >= 0 for w in t.class_weights) and sum(t.class_weights) > 0),
         f"train.class_weights={t.class_weights} must be >= 0 with a positive sum"),
        (t.block_loss_weights is None or len(t.block_loss_weights) == run.model.num_blocks,
         f"train.block_loss_weights has {len(t.block_loss_weights or [])} entries but the model has "
         f"{run.model.num_blocks} blocks; give one weight per block"),
        (t.block_loss_weights is None
         or (all(w >= 0 for w in t.block_loss_weights) and sum(t.block_loss_weights) > 0),
         f"train.block_loss_weights={t.block_loss_weights} must be >= 0 with a positive sum"),
        (t.timestep_weighting in TIMESTEP_WEIGHTINGS,
         f"train.timestep_weighting={t.timestep_weighting!r}; choose one of {', '.join(TIMESTEP_WEIGHTINGS)}"),
        (t.p2_k > 0 and t.p2_gamma >= 0, f"train.p2_k={t.p2_k} must be > 0 and train.p2_gamma={t.p2_gamma} >= 0"),
        (not (run.sample.clip_denoised and (run.data.vae or run.data.name == "latents")),
         "sample.clip_denoised clips to the pixel range [-1, 1], but this run trains on VAE latents "
         f"(data.name={run.data.name!r}, data.vae={run.data.vae!r}); set sample.clip_denoised=false"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"invalid run config: {msg}")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value (e.g. train.lr=1e-4)")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2:
        raise ValueError(f"override key {key!r} must be section.key (e.g. train.lr, model.depth)")
    return path, yaml.safe_load(value)


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            builtin = Path(__file__).resolve().parents[3] / "configs" / f"{path}.yaml"
            if builtin.is_file():
                path = builtin
            else:
                raise FileNotFoundError(f"run config {path} not found (give a YAML path or a name from configs/)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a text file; a run config is YAML") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} holds a YAML {type(raw).__name__}; a run config is a mapping with the "
                             f"sections model, data, train, sample (see configs/fmnist.yaml)")
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in ("model", *SECTIONS):
            raise ValueError(f"override {text!r}: unknown section {section!r}; valid: model, data, train, sample")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return build_run_config(raw)
