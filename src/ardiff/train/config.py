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
    timesteps: list[int] | None = None  # a few-step student's timesteps (sampler "consistency")

    def __post_init__(self):
        self.settings()  # every setting is checked once, by SamplingSettings; errors name the section

    def settings(self):
        """The :class:`~ardiff.SamplingSettings` this section records with the exported model."""
        from ardiff.generate.settings import SamplingSettings

        fields = {k: getattr(self, k) for k in ("cfg_scale", "num_steps", "sampler", "clip_denoised",
                                                "history_scale", "guidance_interval", "timesteps")}
        settings = SamplingSettings.from_record(fields, "sample")
        self.guidance_interval = settings.guidance_interval
        return settings


@dataclass
class DistillConfig:
    """A few-step student distilled from a teacher (``ardiff distill``; see ardiff.train.distill).

    The teacher's deterministic ODE solver (DPM-Solver++ with its recorded guidance) draws
    ``num_trajectories`` trajectories through the student's ``timesteps``; the student, which
    starts from the teacher's weights, learns to jump from each trajectory's state at those
    timesteps to its end. Guidance is distilled in: the student samples with one branch.
    """

    teacher: str = ""  # a shipped model name or a model directory
    timesteps: tuple[int, ...] = (999, 749, 499, 249)  # the student's, highest first
    teacher_steps: int | None = None  # the teacher's ODE steps (default: its recorded num_steps)
    teacher_cfg: float | None = None  # the guidance distilled in (default: the teacher's recorded cfg_scale)
    teacher_guidance_interval: tuple[float, float] | None = None  # default: recorded; [0, 1] guides every step
    num_trajectories: int = 4096
    trajectory_batch: int = 256  # trajectories per teacher run (and per file written)
    # method "dmd" (Self-Forcing): the student rolls out whole samples on its own blocks and a
    # distribution-matching loss pulls them towards ``real_score``'s distribution, against a
    # fake score trained on the rollouts beside it (see ardiff.train.dmd).
    method: str = "ode-regression"  # or "dmd"
    init_student: str | None = None  # dmd: the few-step student to start from (default: the teacher)
    real_score: str | None = None  # dmd: the model whose score is the target (default: the teacher)
    real_cfg: float | None = None  # dmd: the real score's guidance (default: teacher_cfg, else recorded)
    critic_updates: int = 5  # dmd: fake-score updates per student update (Self-Forcing, DMD2: 5)
    critic_lr: float | None = None  # dmd: the fake score's learning rate (default: train.lr)
    regression_weight: float = 0.0  # dmd: + this x the ODE-regression loss on the teacher's trajectories
    dmd_t_range: tuple[float, float] = (0.02, 0.98)  # dmd: the fraction of T the score matching noises to
    # dmd past the trained length (LongLive's streaming long tuning): rollouts of this many blocks
    # with the rolling KV window, scored on a window of the trained length around the chosen block
    rollout_blocks: int | None = None  # default: the trained length
    rollout_window: int | None = None
    rollout_sink_blocks: int = 1


@dataclass
class RunConfig:
    model: ACDiTConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    model_preset: str | None = None
    distill: DistillConfig | None = None  # set: a few-step student of distill.teacher

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {**({"preset": self.model_preset} if self.model_preset else {}), **self.model.to_dict()},
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "sample": dataclasses.asdict(self.sample),
            **({"distill": dataclasses.asdict(self.distill)} if self.distill is not None else {}),
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
    unknown = sorted(set(raw) - {"model", "distill", *SECTIONS})
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; valid sections: model, data, train, sample, distill")
    for name, section in raw.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"section {name!r} holds a {type(section).__name__}; each section is a mapping of "
                             f"keys to values (e.g. {name}:\n  key: value)")
    if raw.get("distill") is not None:
        return student_run_config(raw, _section(DistillConfig, dict(raw["distill"]), "distill"))
    preset, model_values = model_section(raw.get("model"))
    model = ACDiTConfig.preset(preset, **model_values) if preset else ACDiTConfig(**model_values)
    sections = {name: _section(cls, dict(raw.get(name) or {}), name) for name, cls in SECTIONS.items()}
    run = RunConfig(model=model, model_preset=preset, **sections)
    _validate(run)
    return run


def model_section(section: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """The ``model`` section's preset and its typed values (unknown keys raise)."""
    model_raw = dict(section or {})
    preset = model_raw.pop("preset", None)
    hints = typing.get_type_hints(ACDiTConfig)
    unknown = sorted(set(model_raw) - set(hints))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join('model.' + k for k in unknown)}; "
                         f"valid keys in 'model': preset, {', '.join(sorted(hints))}")
    return preset, {k: _coerce(v, hints[k], f"model.{k}") for k, v in model_raw.items()}


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
        if section not in ("model", "distill", *SECTIONS):
            raise ValueError(f"override {text!r}: unknown section {section!r}; valid: model, data, train, sample, "
                             f"distill")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return build_run_config(raw)


# ---------------------------------------------------------------------------
#                     The student's run config, from its teacher
# ---------------------------------------------------------------------------
def distill_teacher(teacher: str):
    """The teacher's directory, config and records."""
    from ardiff.models.checkpoint import load_config, load_extras
    from ardiff.models.resolve import resolve_model_dir

    if not teacher:
        raise ValueError("distill.teacher is not set: name the model to distil (ardiff distill TEACHER ...)")
    try:
        directory = resolve_model_dir(teacher)
        return directory, load_config(directory), load_extras(directory)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"distill.teacher={teacher!r}: {e}") from None


def student_run_config(raw: dict, distill: DistillConfig) -> RunConfig:
    """The run config of a student of ``distill.teacher``: the teacher's architecture (the
    config's ``model`` section, if any, must describe the same layout), predicting v; its
    data record; started from its weights; its sample section the few-step sampler."""
    from ardiff.generate.settings import SamplingSettings
    from ardiff.models.checkpoint import load_config

    directory, teacher, extras = distill_teacher(distill.teacher)
    preset, given = model_section(raw.get("model"))
    if preset:
        raise ValueError("a distill config takes its architecture from the teacher: drop model.preset")
    own = {"prediction_type": given.pop("prediction_type", "v_prediction"),
           "attention_backend": given.pop("attention_backend", teacher.attention_backend)}
    differ = [f"model.{k}={_comparable(v)!r} (teacher: {_comparable(getattr(teacher, k))!r})" for k, v in given.items()
              if _comparable(v) != _comparable(getattr(teacher, k))]
    if differ:
        raise ValueError(f"distill.teacher {distill.teacher} has another layout than this config: "
                         f"{'; '.join(differ)}. Use a config written for this teacher (or a teacher of this layout)")
    start_dir, start_name = check_dmd_settings(distill, teacher, directory)
    if start_dir != directory:  # a DMD run from a few-step student predicts what the student predicts
        own["prediction_type"] = load_config(start_dir).prediction_type
    model = dataclasses.replace(teacher, **own)
    check_student_timesteps(distill, teacher)
    if distill.num_trajectories < 1 or distill.trajectory_batch < 1:
        raise ValueError(f"distill.num_trajectories={distill.num_trajectories} and distill.trajectory_batch="
                         f"{distill.trajectory_batch} must be >= 1")
    teacher_ode_settings(distill, teacher, SamplingSettings.recorded(directory))  # raises on bad teacher_* values

    data_raw = dict(raw.get("data") or extras.get("data") or {})
    train_raw = dict(raw.get("train") or {})
    if train_raw.setdefault("init_from", str(start_dir)) not in (str(start_dir), start_name):
        raise ValueError(f"train.init_from={train_raw['init_from']!r}: a student starts from its teacher "
                         f"({distill.teacher}) or, with method dmd, from distill.init_student; drop train.init_from")
    train_raw["init_from"] = str(start_dir)
    train_raw.setdefault("class_dropout", 0.0)  # guidance is distilled in: the null branch is never used
    sample_raw = dict(raw.get("sample") or {})
    student = {"sampler": "consistency", "num_steps": len(distill.timesteps), "timesteps": list(distill.timesteps),
               "cfg_scale": 1.0, "clip_denoised": SamplingSettings.recorded(directory).clip_denoised,
               "guidance_interval": None, "history_scale": 1.0}
    for key, value in student.items():
        sample_raw.setdefault(key, value)
    sections = {"data": _section(DataConfig, data_raw, "data"), "train": _section(TrainConfig, train_raw, "train"),
                "sample": _section(SampleConfig, sample_raw, "sample")}
    run = RunConfig(model=model, distill=distill, **sections)
    _validate(run)
    return run


DISTILL_METHODS = ("ode-regression", "dmd")


def check_dmd_settings(distill: DistillConfig, teacher, teacher_dir):
    """Raise on DMD settings that cannot work (or that a regression run would ignore); returns
    the directory and name the student starts from."""
    from ardiff.models.checkpoint import load_config
    from ardiff.models.resolve import resolve_model_dir

    if distill.method not in DISTILL_METHODS:
        raise ValueError(f"distill.method={distill.method!r}; choose one of {', '.join(DISTILL_METHODS)}")
    dmd_only = {"init_student": distill.init_student, "real_score": distill.real_score, "real_cfg": distill.real_cfg,
                "critic_lr": distill.critic_lr, "rollout_blocks": distill.rollout_blocks,
                "rollout_window": distill.rollout_window,
                "regression_weight": distill.regression_weight or None}  # 0: the default, nothing asked for
    if distill.method != "dmd":
        given = [k for k, v in dmd_only.items() if v is not None]
        if given:
            raise ValueError(f"distill.{given[0]} applies to method dmd; set distill.method: dmd or drop it")
        return teacher_dir, distill.teacher
    if distill.critic_updates < 1:
        raise ValueError(f"distill.critic_updates={distill.critic_updates} must be >= 1 (fake-score updates per "
                         f"student update; 5 in Self-Forcing)")
    low, high = (float(v) for v in distill.dmd_t_range)
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"distill.dmd_t_range={list(distill.dmd_t_range)} must be 0 <= low < high <= 1 "
                         f"(fractions of the training timesteps, e.g. [0.02, 0.98])")
    if distill.regression_weight < 0:
        raise ValueError(f"distill.regression_weight={distill.regression_weight} must be >= 0")
    if distill.rollout_blocks is not None:
        from ardiff.generate.context import context_schedule

        if distill.rollout_blocks < teacher.num_blocks:
            raise ValueError(f"distill.rollout_blocks={distill.rollout_blocks} is below the trained length "
                             f"({teacher.num_blocks} blocks); leave it unset or set it longer")
        if distill.rollout_blocks > teacher.num_blocks and distill.rollout_window is None:
            raise ValueError(f"distill.rollout_blocks={distill.rollout_blocks} is past the trained length "
                             f"({teacher.num_blocks} blocks): set distill.rollout_window (e.g. "
                             f"{teacher.num_blocks - 1 - distill.rollout_sink_blocks}) to roll the KV window")
        try:
            context_schedule(distill.rollout_blocks, teacher.num_blocks, distill.rollout_window,
                             distill.rollout_sink_blocks)
        except ValueError as e:
            raise ValueError(f"distill.rollout_window / rollout_sink_blocks: {e}") from None
    for key in ("real_score", "init_student"):
        name = getattr(distill, key)
        if name is None:
            continue
        try:
            other = load_config(resolve_model_dir(name))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"distill.{key}={name!r}: {e}") from None
        # a student may come from a model of another length (an 8-frame student for 16-frame clips)
        check_same_data_space(teacher, other, f"distill.{key}={name!r}", length=key == "real_score")
    if distill.init_student is None:
        return teacher_dir, distill.teacher
    return resolve_model_dir(distill.init_student), distill.init_student


def check_same_data_space(teacher, other, what: str, length: bool = True) -> None:
    """Scores and students of one run read and write the same samples under the same noise."""
    fields = (("input_size",) if length else ()) + ("in_channels", "num_classes", "cond_dim", "num_train_timesteps",
                                                    "beta_start", "beta_end")
    differ = [f"{f}: {_comparable(getattr(other, f))!r} vs the teacher's {_comparable(getattr(teacher, f))!r}"
              for f in fields if _comparable(getattr(other, f)) != _comparable(getattr(teacher, f))]
    if differ:
        raise ValueError(f"{what} does not model the teacher's samples ({'; '.join(differ)}); name a model of the "
                         f"same data")


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def check_student_timesteps(distill: DistillConfig, teacher) -> None:
    ts = list(distill.timesteps)
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 1 or ts[0] >= teacher.num_train_timesteps:
        raise ValueError(f"distill.timesteps={ts} must be decreasing timesteps in 1..{teacher.num_train_timesteps - 1} "
                         f"(e.g. [999, 749, 499, 249])")


def teacher_ode_settings(distill: DistillConfig, teacher_config, recorded):
    """The teacher's deterministic solver: DPM-Solver++ (ODE) on the timesteps of its recorded
    schedule with the student's added, with its recorded (or the given) guidance and clipping."""
    from ardiff.diffusion.schedule import sampling_scheduler
    from ardiff.generate.settings import SamplingSettings

    steps = distill.teacher_steps or recorded.num_steps
    schedule = sampling_scheduler(teacher_config, recorded.sampler)
    recorded.but(num_steps=steps).set_timesteps(schedule)
    timesteps = sorted({int(t) for t in schedule.timesteps} | set(distill.timesteps), reverse=True)
    interval = distill.teacher_guidance_interval or recorded.guidance_interval
    return SamplingSettings(cfg_scale=recorded.cfg_scale if distill.teacher_cfg is None else distill.teacher_cfg,
                            num_steps=len(timesteps), sampler="dpmsolver++", clip_denoised=recorded.clip_denoised,
                            history_scale=recorded.history_scale, guidance_interval=interval,
                            timesteps=tuple(timesteps))
