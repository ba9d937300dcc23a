"""`Pipeline`: a model with everything it is sampled with, the one way anything samples.

A pipeline holds the ACDiT, its :class:`SamplingSettings` (recorded with the model, with the
caller's overrides), the VAE that turns latents into pixels (recorded, or a local override)
and an optional autoguidance model. ``Pipeline.from_pretrained("fmnist")`` reads all of it
from a model directory; ``pipe(labels, seeds=...)`` returns samples; ``pipe.settings`` says
exactly what will run; ``pipe.save_pretrained(dir)`` writes a model directory that records
them. ``ardiff sample``, ``eval``, ``sample-npz``, the demo, ACDC's ACDiT parts and the
experiments all sample through it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ardiff.data.latents import VAERecord
from ardiff.generate.sampler import BlockHook, check_guide_model, sample
from ardiff.generate.settings import SamplingSettings
from ardiff.models.acdit import ACDiT
from ardiff.models.checkpoint import load_config, load_extras
from ardiff.models.resolve import resolve_model_dir
from ardiff.utils.devices import default_device
from ardiff.utils.seeding import make_generators

__all__ = ["Guide", "Pipeline", "class_balanced_labels"]

SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))


@dataclasses.dataclass(frozen=True)
class Guide:
    """Autoguidance: a weaker model of the same layout and its weight (> 1); see
    :class:`ardiff.generate.sampler.Autoguide`."""

    model: ACDiT
    scale: float
    source: str = ""  # where it was loaded from, for reports


def class_balanced_labels(num: int, num_classes: int) -> torch.Tensor | None:
    """Label ``i % num_classes`` for sample i (None for an unconditional model): the order
    every evaluation, sample file and the demo use, so sample i has the same class and seed."""
    return torch.arange(num) % num_classes if num_classes else None


def check_student_guidance(distillation: dict | None, settings: SamplingSettings, guide, source: str = "") -> None:
    """A few-step student has its teacher's guidance distilled into its weights and samples with one
    branch; guiding it again (CFG or autoguidance) would run an unconditional branch it was never
    trained for. Raise, saying what it does instead."""
    if not distillation or not (settings.guided or guide is not None or settings.history_scale != 1.0):
        return
    name = Path(source).name if source else "this model"
    asked = (f"cfg_scale={settings.cfg_scale:g}" if settings.guided else
             "history guidance" if settings.history_scale != 1.0 else "autoguidance")
    teacher = distillation.get("teacher", "its teacher")
    raise ValueError(f"{name} is a few-step student with its teacher's classifier-free guidance (CFG "
                     f"{distillation.get('teacher_cfg_scale', '?')}) distilled into its weights: it samples guided "
                     f"with one branch, and {asked} would add a branch it was never trained for. Sample it without "
                     f"guidance flags (cfg 1), or sample the teacher {teacher} at any scale")


class Pipeline:
    """A model, its sampling settings, its VAE and its guide.

    ``pipe(cond, seeds=...)`` returns samples on the CPU as float32: images (B, C, H, W) or
    clips (B, C, F, H, W) in [-1, 1] (latent models decoded by the VAE; ``vae=False`` keeps
    the raw latents, then :attr:`decodes` is False).
    """

    def __init__(self, model: ACDiT, settings: SamplingSettings | None = None, vae=None,
                 vae_record: VAERecord | None = None, guide: Guide | None = None,
                 extras: dict | None = None, source: str = ""):
        c = model.config
        conditional = bool(c.num_classes or c.cond_dim)
        if settings is None:
            settings = SamplingSettings(cfg_scale=SamplingSettings.cfg_scale if conditional else 1.0)
        settings.check_for(c, latent=vae_record is not None, source=f"{source}/config.json" if source else "")
        if vae is not None and vae_record is None:
            raise ValueError("a VAE needs its VAERecord (scaling and shift of the latents)")
        if guide is not None:
            if not guide.scale > 1.0:
                raise ValueError(f"guide_scale={guide.scale:g} must be > 1 with a guide model (e.g. 2)")
            check_guide_model(model, guide.model)
        check_student_guidance((extras or {}).get("distillation"), settings, guide, source)
        self.model = model.eval()
        self.settings = settings
        self.vae, self.vae_record = vae, vae_record
        self.guide = guide
        self.extras = dict(extras or {})  # the model directory's other records (_data, ...)
        self.source = source  # the model directory it was loaded from ("" when built in code)

    # -- loading and saving ------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, device=None, vae: str | os.PathLike | bool | None = None,
                        guide: str | os.PathLike | None = None, guide_scale: float | None = None,
                        dtype: torch.dtype | None = None, **overrides) -> "Pipeline":
        """Load a shipped model by name or a model directory with what it records.

        device: default CUDA when available, else the CPU. vae: None loads the recorded VAE (latent
        models), a path loads that local AutoencoderKL with the recorded scaling, False loads
        none (samples stay latents). guide, guide_scale: autoguidance by a weaker model (a name
        or directory) with weight > 1. overrides: :class:`SamplingSettings` fields (``None``
        keeps the recorded value), e.g. ``num_steps=10, cfg_scale=2.0``.

        Every setting is checked against the model's config before any weights load.
        """
        unknown = sorted(set(overrides) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; the settings are {', '.join(SETTING_NAMES)}")
        directory = resolve_model_dir(name_or_dir)
        source = str(directory)
        config = load_config(directory)
        extras = load_extras(directory)
        settings = SamplingSettings.recorded(directory)
        if not (config.num_classes or config.cond_dim) and overrides.get("cfg_scale") is None:
            settings = settings.but(cfg_scale=1.0)  # nothing to guide: the model has no condition
        settings = settings.but(**overrides)
        vae_record = VAERecord.recorded(directory)
        if isinstance(vae, (str, os.PathLike)):
            vae_record = VAERecord(str(vae), *((vae_record.scaling_factor, vae_record.shift_factor)
                                               if vae_record else (1.0,)))
        settings.check_for(config, latent=vae_record is not None, source=f"{directory / 'config.json'}")
        if guide is None and guide_scale is not None:
            raise ValueError(f"guide_scale={guide_scale:g} needs a guide model (the weaker model to guide with)")
        if guide is not None and (guide_scale is None or not guide_scale > 1.0):
            raise ValueError(f"a guide model needs guide_scale > 1 (e.g. 2), got {guide_scale}")
        device = default_device(device)
        model = ACDiT.from_pretrained(directory, device=device, dtype=dtype)
        loaded_guide = None
        if guide is not None:
            guide_dir = resolve_model_dir(guide)
            guide_model = ACDiT.from_pretrained(guide_dir, device=model.device, dtype=model.dtype)
            try:
                check_guide_model(model, guide_model)
            except ValueError as e:
                raise ValueError(f"guide model {guide}: {e}") from None
            loaded_guide = Guide(guide_model, float(guide_scale), str(guide))
        vae_model = None
        if vae_record is not None and vae is not False:
            try:
                vae_model = vae_record.load(device)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e}; this model generates VAE latents: pass vae=DIR, or vae=False to "
                                        f"keep the latents") from None
        return cls(model, settings, vae_model, vae_record, loaded_guide, extras=extras, source=source)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """A model directory with the weights and, recorded, the settings, the VAE and the data."""
        extra = {f"_{k}": v for k, v in self.extras.items() if k not in ("sampling", "vae")}
        extra["_sampling"] = self.settings.to_dict()
        if self.vae_record is not None:
            extra["_vae"] = self.vae_record.to_dict()
        return self.model.save_pretrained(directory, extra_config=extra)

    # -- what it is ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def config(self):
        return self.model.config

    @property
    def decodes(self) -> bool:
        """Whether samples come out as pixels (a pixel model, or a latent model with its VAE loaded)."""
        return self.vae_record is None or self.vae is not None

    @property
    def data(self) -> dict | None:
        """The data section the model was trained on (``_data``), if recorded."""
        return self.extras.get("data")

    def describe(self) -> str:
        guide = f", autoguided by {self.guide.source} at {self.guide.scale:g}" if self.guide is not None else ""
        return self.settings.describe() + guide

    def __repr__(self) -> str:
        vae = "loaded" if self.vae is not None else self.vae_record
        guide = self.guide and self.guide.source
        return f"Pipeline({self.source or 'model'}, {self.settings}, device={self.device}, vae={vae}, guide={guide})"

    # -- sampling ------------------------------------------------------------------
    def __call__(self, cond=None, seeds: int | Sequence[int] | None = None, *, generator=None,
                 batch_size: int | None = None, num_blocks: int | None = None, window: int | None = None,
                 sink_blocks: int = 0, prefix: torch.Tensor | None = None, on_block_end: BlockHook | None = None,
                 use_cache: bool = True, context_pass: str = "ride", progress: bool = False,
                 output: str = "samples") -> torch.Tensor:
        """Sample with these settings.

        cond: class ids (a list or a (B,) / (B, N) tensor), condition vectors, or None for an
            unconditional model (then the batch size comes from ``seeds``).
        seeds: one per sample (sample i is a function of its seed alone, on every device), or
            an int s for seeds s, s+1, ...; default 0, 1, ... . ``generator``: a generator (or
            one per sample) to draw from instead (ACDC runs one stream through many calls).
        batch_size: samples per block-loop run (default: all at once); each run's samples are
            moved to the CPU before the next one starts.
        num_blocks, window, sink_blocks, prefix, on_block_end, use_cache, context_pass: the block loop's
            options (see :func:`ardiff.generate.sample`).
        output: ``"samples"`` (decoded, CPU float32), ``"latents"`` (the model's own output,
            CPU float32) or ``"blocks"`` ((B, N, S, P) on the model's device, not decoded).
        """
        if output not in ("samples", "latents", "blocks"):
            raise ValueError(f"output={output!r}; use 'samples', 'latents' or 'blocks'")
        cond = self._condition(cond)
        B = self._batch_size(cond, seeds, generator)
        if generator is None:
            first = 0 if seeds is None else seeds
            seeds = list(range(first, first + B)) if isinstance(first, int) else [int(s) for s in first]
        step = batch_size or B
        guide = self.guide
        pieces = []
        starts = range(0, B, step)
        block_progress = progress and len(starts) == 1
        if progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="sampling", unit="batch")
        for start in starts:
            part = slice(start, min(start + step, B))
            gen = make_generators(seeds[part]) if generator is None else (
                generator[part] if isinstance(generator, (list, tuple)) else generator)
            x = sample(self.model, None if cond is None else cond[part], self.settings, generator=gen,
                       batch_size=part.stop - part.start, num_blocks=num_blocks, window=window,
                       sink_blocks=sink_blocks, prefix=None if prefix is None else prefix[part],
                       on_block_end=on_block_end, use_cache=use_cache, context_pass=context_pass,
                       progress=block_progress,
                       output="blocks" if output == "blocks" else "input",
                       guide_model=None if guide is None else guide.model,
                       guide_scale=1.0 if guide is None else guide.scale)
            if output == "samples":
                x = self.decode(x)
            pieces.append(x if output == "blocks" else x.float().cpu())
        return torch.cat(pieces)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Model output -> pixels in [-1, 1] (unchanged for pixel models or without a loaded VAE)."""
        if self.vae is None:
            return latents
        pieces = [self.vae_record.decode(self.vae, latents[i : i + chunk]) for i in range(0, len(latents), chunk)]
        return torch.cat(pieces)

    def _condition(self, cond):
        if cond is None:
            return None
        if not torch.is_tensor(cond):
            cond = torch.as_tensor(cond)
        if cond.dim() == 0:
            raise ValueError("cond must hold one condition per sample, e.g. [3] not 3")
        c = self.model.config
        if not cond.is_floating_point():
            if not c.num_classes:
                raise ValueError("this model is not class-conditional: give cond=None (or condition vectors)")
            bad = cond[(cond < 0) | (cond >= c.num_classes)].unique().tolist()
            if bad:
                raise ValueError(f"class ids {bad} out of range: the model has {c.num_classes} classes "
                                 f"(0..{c.num_classes - 1})")
        return cond.to(self.model.device)

    @staticmethod
    def _batch_size(cond, seeds, generator) -> int:
        if cond is not None:
            B = len(cond)
        elif isinstance(generator, (list, tuple)):
            B = len(generator)
        elif seeds is not None and not isinstance(seeds, int):
            B = len(seeds)
        else:
            raise ValueError("give cond, or for an unconditional model one seed per sample (seeds=[...])")
        if seeds is not None and not isinstance(seeds, int) and len(seeds) != B:
            raise ValueError(f"got {len(seeds)} seeds for {B} samples")
        if isinstance(generator, (list, tuple)) and len(generator) != B:
            raise ValueError(f"got {len(generator)} generators for {B} samples")
        return B
