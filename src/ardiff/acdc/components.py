"""ACDC's parts from specs: the ARM, the corrector and the memory a run names.

A spec is ``KIND`` or ``KIND:ARG`` (``builtin``, ``acdit:DIR``, ``emu3:DIR``, ``native:DIR``,
``sd:DIR``, ``smollm2``, ``transformers:PATH``, ``openai:MODEL@BASE_URL``, ...). ardiff's own
models load through :class:`~ardiff.generate.Pipeline` with their recorded sampling settings.
"""

from __future__ import annotations

from pathlib import Path

# What "builtin" means in each mode: story mode corrects each 2-frame block with the image
# model; video mode makes 16-frame chunks and corrects them with the full-sequence video model.
BUILTIN_ARM = {"story": "moving-fmnist", "video": "moving-fmnist-16"}
BUILTIN_CORRECTOR = {"story": "fmnist", "video": "moving-fmnist-16-dit"}


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"KIND:ARG"`` -> ``(kind, arg)``; ``arg`` is None when the spec has none."""
    kind, _, arg = spec.partition(":")
    return kind.strip().lower(), (arg or None)


def model_path(spec: str, builtin: str) -> Path:
    """The directory a component spec names (the shipped model for ``builtin``)."""
    from ardiff.models.resolve import resolve_model_dir

    kind, arg = split_spec(spec)
    return resolve_model_dir(builtin) if kind == "builtin" else Path(arg.partition(",motion=")[0])


def build_arm(spec: str, device, mode: str = "story", steps: int | None = None, cfg: float | None = None,
              window: int | None = None, sink_blocks: int = 0, chunk_blocks: int = 1):
    """The ARM and a record of it (what record.json says of the ARM). An ACDiT ARM samples with
    its recorded settings (the ones its numbers were measured with), ``steps``/``cfg`` overriding."""
    kind, arg = split_spec(spec)
    if kind in ("builtin", "acdit"):
        from ardiff.acdc.native import ACDiTARM
        from ardiff.generate.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(BUILTIN_ARM[mode] if kind == "builtin" else arg, device=device,
                                        num_steps=steps, cfg_scale=cfg)
        arm = ACDiTARM.from_pipeline(pipe, window=window, sink_blocks=sink_blocks, chunk_blocks=chunk_blocks)
        s = pipe.settings
        record = {"spec": spec, "path": pipe.source, "num_steps": s.num_steps, "cfg_scale": s.cfg_scale,
                  "sampler": s.sampler, "clip_denoised": s.clip_denoised, "history_scale": s.history_scale,
                  **({"guidance_interval": list(s.guidance_interval)} if s.guidance_interval else {}),
                  "window": window, "sink_blocks": sink_blocks, "chunk_blocks": chunk_blocks}
        return arm, record
    if window is not None or chunk_blocks != 1:
        raise ValueError(f"arm {spec}: window= and multi-block chunks need an ACDiT ARM (builtin or acdit:DIR)")
    from ardiff.acdc import transformers_arms

    cls = transformers_arms.Emu3ARM if kind == "emu3" else transformers_arms.JanusARM
    return cls.from_pretrained(arg, device=device), {"spec": spec, "path": arg}


def build_corrector(spec: str, device, mode: str = "story", steps: int = 25, cfg: float | None = None):
    """The corrector (None for ``none``) and its record. An ardiff model corrects with SDEdit
    (DPM-Solver++ from t') at its recorded guidance unless ``cfg`` is given."""
    kind, arg = split_spec(spec)
    if kind == "none":
        return None, {"spec": spec}
    if kind in ("builtin", "native"):
        from ardiff.acdc.native import NativeCorrector
        from ardiff.generate.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(BUILTIN_CORRECTOR[mode] if kind == "builtin" else arg, device=device,
                                        num_steps=steps, cfg_scale=cfg)
        s = pipe.settings
        corrector = NativeCorrector(pipe.model, num_steps=s.num_steps, cfg_scale=s.cfg_scale)
        return corrector, {"spec": spec, "path": pipe.source, "num_steps": s.num_steps, "cfg_scale": s.cfg_scale,
                           "sampler": "dpmsolver++ (SDEdit from t')"}
    from ardiff.acdc import correctors

    cls = correctors.SDEditCorrector if kind == "sd" else correctors.AnimateDiffCorrector
    kwargs = {"num_inference_steps": steps, "device": device}
    arg, _, adapter = arg.partition(",motion=")
    if adapter:  # a Stable Diffusion directory plus a MotionAdapter directory
        kwargs["motion_adapter"] = adapter
    if cfg is not None:
        kwargs["guidance_scale"] = cfg
    record = {"spec": spec, "path": arg, "num_steps": steps, "cfg_scale": cfg if cfg is not None else "default"}
    return cls.from_pretrained(arg, **kwargs), record


def build_memory_from_spec(spec: str, template: str | None = None):
    """The memory a spec names; ``template``: a refiner prompt for the LLM memories."""
    from ardiff.acdc.memory import build_memory

    kind, arg = split_spec(spec)
    options = {}
    if template is not None:
        if kind not in ("smollm2", "transformers", "openai"):
            raise ValueError(f"a memory prompt template applies to LLM memories (smollm2, transformers:PATH, "
                             f"openai:MODEL@BASE_URL), not memory {spec}")
        options["template"] = template
    if kind in ("rule", "none", "smollm2"):
        return build_memory(kind, **options)
    if kind == "transformers":
        return build_memory("transformers", path=arg, **options)
    model, _, base_url = arg.partition("@")
    return build_memory("openai", model=model, base_url=base_url, **options)
