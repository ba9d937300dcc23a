"""Import the released ACDiT checkpoints (thunlp/ACDiT ``*.pt`` pickles) as model directories.

The release stores ``{"model": state_dict, "args": argparse.Namespace, ...}`` with
``torch.save``. Unpickling can run arbitrary code, so loading one is opt-in
(``allow_pickle=True``, CLI ``--allow-pickle``) and even then goes through
``torch.load(weights_only=True)`` with an allow-list of ``argparse.Namespace`` alone.

Our :class:`~ardiff.ACDiT` uses the release's state-dict key names, so conversion is a
strict ``load_state_dict`` once the configuration is rebuilt from ``args`` (falling back
to tensor shapes) with ``rope="official"``, the released RoPE variant the weights were
trained with. The result is an ordinary ``config.json`` + ``model.safetensors`` directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ardiff.models.acdit import ACDiT
from ardiff.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ardiff.models.config import PRESETS, ACDiTConfig
from ardiff.nn.rope import OFFICIAL_HEAD_DIM
from ardiff.utils.io import atomic_write_bytes

ARGS_NAME = "official_args.json"
SAFE_GLOBALS = [argparse.Namespace]  # everything else a pickle may hold is refused
KEY_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers
# Registry entries of the release ("ACDiT-XL", "ACDiT-H", ...) -> our size presets S/B/L/XL/H.
_REGISTRY_RE = re.compile(r"^acdit[-_/]?(xl|s|b|l|h)(?:$|[-_/])", re.IGNORECASE)
_MAX_LISTED = 12


# ---------------------------------------------------------------------------
#                          Loading the pickle (opt-in)
# ---------------------------------------------------------------------------
def _refuse_pickle(path: Path) -> ValueError:
    return ValueError(
        f"{path} is a pickle (torch.save) file; unpickling an untrusted file can run arbitrary code. "
        f"Loading it is opt-in: pass allow_pickle=True (CLI: --allow-pickle) if you trust its source. "
        f"Even then it is read with torch.load(weights_only=True), which accepts only tensors, plain "
        f"containers and argparse.Namespace."
    )


def _unpickling_error(path: Path, err: Exception) -> ValueError:
    """Rephrase torch's weights-only failure without its advice to use weights_only=False."""
    text = str(err)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused:
        return ValueError(
            f"{path} contains objects outside the allow-list (tensors, plain containers, "
            f"argparse.Namespace): it pickles {refused.group(1)}. ardiff loads pickles only with "
            f"torch.load(weights_only=True) and will not run that object's code; re-save the "
            f"checkpoint as a plain dict of tensors (e.g. {{'model': state_dict, 'args': vars(args)}}) "
            f"from a trusted environment."
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, re.DOTALL)
    reason = detail.group(1).strip() if detail else text.splitlines()[0] if text else type(err).__name__
    return ValueError(
        f"{path} could not be loaded with torch.load(weights_only=True): {reason}. It is not a torch "
        f"checkpoint, is corrupt, or holds objects outside the allow-list (tensors, plain containers, "
        f"argparse.Namespace)."
    )


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state-dict entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in KEY_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        if name in out:
            raise ValueError(f"state dict has key {name!r} twice once prefixes {KEY_PREFIXES} are stripped")
        out[name] = value
    return out


def _args_dict(args: Any, path: Path) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    raise ValueError(f"{path}: 'args' is a {type(args).__name__}; expected an argparse.Namespace or a dict")


def load_official_checkpoint(
    path: str | os.PathLike, allow_pickle: bool = False, use_ema: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a released ``.pt`` file -> ``(state_dict, args)``; refuses unless ``allow_pickle``.

    ``use_ema`` picks the ``ema`` weights when the file has them (training checkpoints),
    else ``model``. ``module.`` / ``_orig_mod.`` key prefixes are stripped.
    """
    path = Path(path)
    if path.is_dir():
        hint = " (it is already a model directory: use ACDiT.from_pretrained)" if (path / CONFIG_NAME).is_file() else ""
        raise ValueError(f"{path} is a directory, not an official ACDiT checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"official ACDiT checkpoint {path} not found")
    if path.suffix == ".safetensors":
        raise ValueError(
            f"{path} is a safetensors file, not an official (pickle) checkpoint: put it in a model "
            f"directory with {CONFIG_NAME} as {WEIGHTS_NAME} and use ACDiT.from_pretrained"
        )
    if not allow_pickle:
        raise _refuse_pickle(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError) as e:
        # A text file or a truncated download fails deep inside the unpickler (e.g. KeyError: 101).
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e}); the official "
                         f"release files are ACDiT-{{XL,H}}-{{img,vid}}.pt") from None

    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}; an official checkpoint is a dict with 'model' "
                         f"and 'args'")
    keys = sorted(map(str, ckpt))
    if use_ema and "ema" in ckpt:
        which = "ema"
    elif "model" in ckpt:
        which = "model"
        if use_ema:
            warnings.warn(f"{path} has no 'ema' weights (keys: {keys}); using 'model'", stacklevel=2)
    elif "ema" in ckpt:
        which = "ema"
        warnings.warn(f"{path} has no 'model' weights; using 'ema'", stacklevel=2)
    else:
        shown = keys[:_MAX_LISTED] + ([f"... {len(keys) - _MAX_LISTED} more"] if len(keys) > _MAX_LISTED else [])
        raise ValueError(
            f"{path} has neither 'model' nor 'ema' weights; its top-level keys are {shown}. "
            f"An official checkpoint is {{'model': state_dict, 'args': Namespace, ...}}"
        )
    if not isinstance(ckpt[which], Mapping):
        raise ValueError(f"{path}: {which!r} is a {type(ckpt[which]).__name__}, not a state dict")
    return _strip_prefixes(ckpt[which]), _args_dict(ckpt.get("args"), path)


# ---------------------------------------------------------------------------
#                      Rebuilding the configuration
# ---------------------------------------------------------------------------
def _missing(field: str, why: str) -> ValueError:
    return ValueError(f"official checkpoint: cannot determine {field}: {why}")


def _int_arg(args: Mapping[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"official checkpoint: args.{name}={value!r} is not an integer") from None
    if as_int != value and not isinstance(value, str):
        raise ValueError(f"official checkpoint: args.{name}={value!r} is not an integer")
    return as_int


def registry_size(name: Any) -> str | None:
    """Size preset ("XL", "H", ...) of a release registry name like ``ACDiT-XL``; None if unknown."""
    if not isinstance(name, str):
        return None
    m = _REGISTRY_RE.match(name.strip())
    return m.group(1).upper() if m else None


def _network_size(state_dict: Mapping[str, torch.Tensor], args: Mapping[str, Any]) -> tuple[dict[str, int], str]:
    """depth / hidden_size / num_heads from the registry name, else from tensor shapes."""
    size = registry_size(args.get("model"))
    if size is not None:
        preset = PRESETS[size]
        return ({k: preset[k] for k in ("depth", "hidden_size", "num_heads")},
                f"args.model={args.get('model')!r} (preset {size})")
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise _missing("depth", "args.model is unknown or missing and the state dict has no 'blocks.<i>.' keys")
    if "x_embedder.weight" not in state_dict:
        raise _missing("hidden_size", "args.model is unknown or missing and 'x_embedder.weight' is absent")
    hidden = int(state_dict["x_embedder.weight"].shape[0])
    q_norm = state_dict.get("blocks.0.attn.q_norm.weight")
    head_dim = int(q_norm.shape[0]) if q_norm is not None else OFFICIAL_HEAD_DIM
    if head_dim < 1 or hidden % head_dim:
        raise _missing("num_heads", f"hidden size {hidden} is not a multiple of the head dim {head_dim} "
                                    f"(blocks.0.attn.q_norm.weight)")
    return (dict(depth=max(layers) + 1, hidden_size=hidden, num_heads=hidden // head_dim),
            f"tensor shapes (args.model={args.get('model')!r} is not a known registry name)")


def _parse_nd_split(nd_split: Any) -> tuple[int, ...] | None:
    """args.nd_split ("2_3_3", or a sequence) -> RoPE axis weights; None when unset."""
    if nd_split is None or nd_split == "":
        return None
    try:
        parts = nd_split.split("_") if isinstance(nd_split, str) else list(nd_split)
        weights = tuple(int(p) for p in parts)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"official checkpoint: args.nd_split={nd_split!r} is not like '2_3_3'") from None
    if not weights or min(weights) < 1:
        raise ValueError(f"official checkpoint: args.nd_split={nd_split!r} must list positive integers like '2_3_3'")
    return weights


def _axis_weights(nd_split: Any, video: bool) -> tuple[int, ...]:
    weights = _parse_nd_split(nd_split)
    if weights is None:
        return (2, 3, 3) if video else (1, 1)  # the release's defaults
    axes = 3 if video else 2
    if len(weights) != axes:
        raise ValueError(
            f"official checkpoint: args.nd_split={nd_split!r} gives {len(weights)} RoPE axis weights, "
            f"but {'a video' if video else 'an image'} model has {axes} axes ({'t, h, w' if video else 'h, w'})"
        )
    return weights


def official_config(state_dict: Mapping[str, torch.Tensor], args: Mapping[str, Any]) -> ACDiTConfig:
    """The :class:`ACDiTConfig` of a released checkpoint, checked against every key and shape.

    Sizes come from ``args.model`` (a release registry name) or, if unknown, from tensor
    shapes; geometry from ``image_size // vae_patch_pixels``, ``num_frames``, ``patch_size``
    and ``block_size``. Images get square tiles, video frame-major raster blocks, and both
    the released RoPE (``rope="official"``).
    """
    args = dict(args)
    net, net_source = _network_size(state_dict, args)

    # -- channels and patches --------------------------------------------------
    in_channels = _int_arg(args, "vae_latent_size") or 4
    patch_size = _int_arg(args, "patch_size")
    if patch_size is None:
        w = state_dict.get("x_embedder.weight")
        if w is None:
            raise _missing("patch_size", "args.patch_size is missing and 'x_embedder.weight' is absent")
        P = int(w.shape[1])
        patch_size = math.isqrt(P // in_channels) if P % in_channels == 0 else 0
        if patch_size < 1 or in_channels * patch_size**2 != P:
            raise _missing("patch_size", f"args.patch_size is missing and the patch dim {P} "
                                         f"(x_embedder.weight) is not {in_channels} channels x p^2")

    # -- classes ------------------------------------------------------------------
    table = state_dict.get("y_embedder.embedding_table.weight")
    num_classes = _int_arg(args, "num_classes")
    if table is not None:
        from_table = int(table.shape[0]) - 1
        if num_classes is not None and num_classes != from_table:
            warnings.warn(f"args.num_classes={num_classes} but the class table has {from_table} classes "
                          f"(+1 null row); using {from_table}", stacklevel=2)
        num_classes = from_table
    if num_classes is None:
        raise _missing("num_classes", "args.num_classes is missing and 'y_embedder.embedding_table.weight' is absent")

    # -- geometry -------------------------------------------------------------------
    block_size = _int_arg(args, "block_size")
    ar_len = _int_arg(args, "ar_len")
    num_frames = _int_arg(args, "num_frames")
    image_size, vae_pixels = _int_arg(args, "image_size"), _int_arg(args, "vae_patch_pixels")
    if image_size is not None and vae_pixels is not None:
        if vae_pixels < 1 or image_size % vae_pixels:
            raise ValueError(f"official checkpoint: args.image_size={image_size} is not a multiple of "
                             f"args.vae_patch_pixels={vae_pixels}")
        latent = image_size // vae_pixels
    else:
        latent = None
    total = block_size * ar_len if block_size is not None and ar_len is not None else None
    if latent is None:
        # The sequence length (ar_len x block_size) and the frame count fix the side.
        field = "image_size" if image_size is None else "vae_patch_pixels"
        if total is None:
            raise _missing(field, f"args.{field} is missing and args.block_size x args.ar_len is not known either")
        per_frame = total // (num_frames or 1)
        side = math.isqrt(per_frame)
        if side * side != per_frame or total % (num_frames or 1):
            raise _missing(field, f"args.{field} is missing and {total} tokens over {num_frames or 1} "
                                  f"frame(s) is not a square grid")
        latent = side * patch_size
    if latent % patch_size:
        raise ValueError(f"official checkpoint: latent side {latent} (image_size // vae_patch_pixels) is not "
                         f"a multiple of args.patch_size={patch_size}")
    per_frame = (latent // patch_size) ** 2
    if num_frames is None:
        if total is not None and total % per_frame == 0:
            num_frames = total // per_frame
        elif len(_parse_nd_split(args.get("nd_split")) or (1, 1)) == 2:  # not a video setting
            num_frames = 1
        else:
            raise _missing("num_frames", "args.num_frames is missing and args.ar_len x args.block_size is unknown")
    if num_frames < 1:
        raise ValueError(f"official checkpoint: args.num_frames={num_frames} must be >= 1")
    if block_size is None:
        if ar_len is None:
            raise _missing("block_size", "args.block_size and args.ar_len are both missing")
        if (num_frames * per_frame) % ar_len:
            raise _missing("block_size", f"args.block_size is missing and args.ar_len={ar_len} does not divide "
                                         f"the {num_frames * per_frame} tokens")
        block_size = num_frames * per_frame // ar_len
    if ar_len is not None and ar_len * block_size != num_frames * per_frame:
        raise ValueError(
            f"official checkpoint: args.ar_len={ar_len} x args.block_size={block_size} = {ar_len * block_size} "
            f"tokens, but the geometry has {num_frames} frame(s) x {per_frame} tokens = {num_frames * per_frame}"
        )

    video = num_frames > 1
    fields = dict(
        input_size=(num_frames, latent, latent) if video else (latent, latent),
        in_channels=in_channels,
        patch_size=patch_size,
        block_layout="raster" if video else "tiles",
        block_size=block_size,
        mlp_ratio=4.0,
        num_classes=num_classes,
        rope="official",
        rope_axis_weights=_axis_weights(args.get("nd_split"), video),
        **net,
    )
    try:
        config = ACDiTConfig(**fields)
    except ValueError as e:
        raise ValueError(f"official checkpoint: its args give an invalid configuration ({e})") from None
    check_state_dict(state_dict, config, source=f"sizes from {net_source}")
    return config


def check_state_dict(state_dict: Mapping[str, torch.Tensor], config: ACDiTConfig, source: str = "") -> None:
    """Raise one error listing every missing, unexpected and mis-shaped key against ``ACDiT(config)``."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: tuple(v.shape) for k, v in ACDiT(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {expected[k]}"
              for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if not (missing or unexpected or shapes):
        return

    def listed(title: str, items: list[str]) -> str:
        more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        return f"\n  {title} ({len(items)}):" + "".join(f"\n    {i}" for i in items[:_MAX_LISTED]) + more

    c = config
    raise ValueError(
        f"the state dict does not match the architecture rebuilt from the checkpoint "
        f"(depth={c.depth}, hidden_size={c.hidden_size}, num_heads={c.num_heads}, patch_dim={c.patch_dim}, "
        f"num_classes={c.num_classes}{'; ' + source if source else ''}):"
        + (listed("missing keys", missing) if missing else "")
        + (listed("unexpected keys", unexpected) if unexpected else "")
        + (listed("shape mismatches", shapes) if shapes else "")
        + "\n  Check that the file is an ACDiT release checkpoint and that its args match its weights."
    )


# ---------------------------------------------------------------------------
#                                 Conversion
# ---------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return str(value)


def convert_official(
    ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, allow_pickle: bool = False, use_ema: bool = False
) -> Path:
    """Released ``.pt`` -> model directory (``config.json``, ``model.safetensors``, ``official_args.json``)."""
    state_dict, args = load_official_checkpoint(ckpt_path, allow_pickle=allow_pickle, use_ema=use_ema)
    config = official_config(state_dict, args)
    model = ACDiT(config)
    model.load_state_dict(state_dict, strict=True)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    record = {str(k): _jsonable(v) for k, v in args.items()}
    atomic_write_bytes(out_dir / ARGS_NAME, json.dumps(record, indent=2, sort_keys=True).encode())
    return out_dir


__all__ = ["check_state_dict", "convert_official", "load_official_checkpoint", "official_config", "registry_size"]
