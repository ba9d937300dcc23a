"""What every command shares: the parser class, argument types checked at parse time, and
the error boundary that turns expected failures into one line.

Nothing here imports torch: ``ardiff --help`` and a rejected argument answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

# Sampler names (ardiff.diffusion.SAMPLERS), listed here so that `--help` does not import torch.
SAMPLER_CHOICES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver++-karras", "sde-dpmsolver++-karras", "ddim", "ddpm",
                   "consistency")
DEBUG_ENV = "ARDIFF_DEBUG"


class CommandError(Exception):
    """An expected failure of a command (bad input, a missing or corrupt file): printed as
    ``ardiff <command>: error: <message>`` with exit status 2, without a traceback."""


# ---------------------------------------------------------------------------
#                                 Parser
# ---------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; every option with a real default shows it."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "%(default)" in text or "default:" in text or hidden or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like the commands' own errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser that runs a command (those without subcommands)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for sub in subs:
        for child in dict.fromkeys(sub.choices.values()):
            yield from leaf_parsers(child)


# ---------------------------------------------------------------------------
#                       Argument types (checked at parse time)
# ---------------------------------------------------------------------------
def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a whole number >= 1")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a whole number >= 0")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def guidance_scale(text: str) -> float:
    """A classifier-free guidance scale: finite and >= 0 (1 = no guidance)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a guidance scale is >= 0 (1 turns guidance off)")
    return value


def history_scale(text: str) -> float:
    """A history guidance scale: finite and >= 1 (1 = off)."""
    value = _float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a history guidance scale is >= 1 (1 turns it off; e.g. 1.5)")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def t_prime(text: str) -> float:
    """SDEdit's noise level t' in (0, 1]."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: t' is a noise level in (0, 1] (the paper uses 0.4-0.6)")
    return value


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    return text


def _check_writable_parent(path: Path, text: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write into {parent} (permission denied)")


def output_file(*suffixes: str):
    """An argparse type for a file to write: one of ``suffixes``, not a directory, in a
    writable place. The path is used exactly as given, never rewritten."""

    def check(text: str) -> str:
        path = Path(text)
        if text.endswith(("/", os.sep)) or path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name, e.g. "
                                             f"{Path(text) / ('samples' + suffixes[0])}")
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: the file name must end in {' or '.join(suffixes)}")
        _check_writable_parent(path, text)
        return text

    check.__name__ = "output file"
    return check


def output_dir(text: str) -> str:
    """A directory to write into (created when missing)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a directory")
    _check_writable_parent(path / "x", text)
    return text


BUILTIN_REFERENCES = ("fmnist-test", "moving-fmnist-test")  # ardiff.eval.reference, without importing torch
FEATURE_NETWORKS = ("fmnist", "inception", "i3d")


def reference_spec(text: str) -> str:
    """``--reference``: a built-in set, an image folder, or an .npz file."""
    if text in BUILTIN_REFERENCES or Path(text).is_dir():
        return text
    if Path(text).is_file():
        if Path(text).suffix.lower() != ".npz":
            raise argparse.ArgumentTypeError(f"{text}: a reference file is an .npz (arr_0 images, or mu/sigma)")
        return text
    raise argparse.ArgumentTypeError(f"{text}: no such folder or .npz file, and not a built-in reference "
                                     f"({', '.join(BUILTIN_REFERENCES)})")


def feature_spec(text: str) -> str:
    """``--features``: fmnist | inception:PATH | i3d:PATH, the weight file existing."""
    name, _, path = text.partition(":")
    if name not in FEATURE_NETWORKS:
        raise argparse.ArgumentTypeError(f"{text!r}: use fmnist, inception:PATH or i3d:PATH")
    if name == "fmnist" and path:
        raise argparse.ArgumentTypeError("fmnist takes no path (--classifier FILE names another classifier)")
    if name != "fmnist":
        if not path:
            raise argparse.ArgumentTypeError(f"{name} needs its local weight file: {name}:PATH")
        if not Path(path).is_file():
            raise argparse.ArgumentTypeError(f"{path}: no such file (the {name} weights are read locally, never "
                                             f"downloaded)")
    return text


def eval_source(text: str) -> str:
    """What ``ardiff eval`` scores: a model (checked when the command runs) or an existing .npz."""
    if text.lower().endswith(".npz") and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such sample file")
    return text


def represent_data(text: str) -> str:
    if text == "fmnist" or Path(text).is_dir():
        return text
    raise argparse.ArgumentTypeError(f"{text}: give fmnist or a folder of class subfolders")


def add_sampling_flags(parser, cfg_help: str = "classifier-free guidance scale (default: recorded with the "
                                               "model, else 1.5)") -> None:
    parser.add_argument("--cfg", type=guidance_scale, help=cfg_help)
    parser.add_argument("--steps", type=positive_int,
                        help="denoising steps per block (default: recorded with the model, else 25)")
    parser.add_argument("--sampler", choices=SAMPLER_CHOICES,
                        help="default: recorded with the model, else dpmsolver++ (the deterministic ODE solver)")
    parser.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                        help="clip each step's predicted clean sample to [-1, 1] (pixel-space models; default: "
                             "recorded with the model, else off)")
    parser.add_argument("--history-scale", type=history_scale, metavar="H",
                        help="history guidance (video models whose blocks are whole frames): guided steps also add "
                             "(H - 1)(m(c, frames before) - m(c, the block alone)), pulling each block towards its "
                             "history (default: recorded with the model, else 1 = off)")


def add_guidance_interval_flag(parser) -> None:
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="guide only the steps with LOW <= t / training timesteps <= HIGH (0 = clean, 1 = pure "
                             "noise); the others run the conditional branch alone (default: the interval recorded "
                             "with the model, else every step; 0 1 guides every step)")


def add_guide_model_flags(parser) -> None:
    parser.add_argument("--guide-model", metavar="MODEL_DIR",
                        help="autoguidance (Karras et al. 2024): also guide away from this weaker model of the same "
                             "layout and conditioning (an earlier training stage, or a smaller model); a step is "
                             "m(c) + (cfg - 1)(m(c) - m(null)) + (guide_scale - 1)(m(c) - g(c)). Pass --cfg 1 for "
                             "autoguidance alone")
    parser.add_argument("--guide-scale", type=guidance_scale, metavar="W",
                        help="the autoguidance weight (> 1; needs --guide-model)")


def check_guide_flags(args) -> None:
    """``--guide-model`` and ``--guide-scale`` go together; checked before any model loads."""
    if args.guide_model is None:
        if args.guide_scale is not None:
            raise CommandError("--guide-scale W needs --guide-model MODEL_DIR (the weaker model to guide with)")
        return
    if args.guide_scale is None or args.guide_scale <= 1.0:
        raise CommandError("--guide-model needs --guide-scale W with W > 1 (e.g. --guide-scale 2): the "
                           "autoguidance weight")
    read_model_summary(args.guide_model)


# Library names in sampling errors, as the flags that set them.
SAMPLING_FLAG_NAMES = {"cfg_scale": "--cfg", "num_steps": "--steps", "history_scale": "--history-scale",
                       "clip_denoised": "--clip-denoised", "guidance_interval": "--guidance-interval",
                       "guide_scale": "--guide-scale", "guide model": "--guide-model", "vae=False": "--no-decode",
                       "vae=DIR": "--vae DIR"}


def load_pipeline(args, model_dir: str | None = None, device=None, **overrides):
    """The :class:`~ardiff.generate.Pipeline` a sampling command's flags describe: the model's
    recorded settings with --cfg, --steps, --sampler, --clip-denoised, --history-scale and
    --guidance-interval over them (where the command has them), --vae / --no-decode, the
    --guide-model with its --guide-scale, on --device. ``overrides``: further settings."""
    from ardiff.generate.pipeline import Pipeline

    flags = {"cfg_scale": "cfg", "num_steps": "steps", "sampler": "sampler", "clip_denoised": "clip_denoised",
             "history_scale": "history_scale"}
    settings = {name: getattr(args, flag, None) for name, flag in flags.items()}
    if getattr(args, "guidance_interval", None) is not None:
        settings["guidance_interval"] = checked_guidance_interval(args)
    settings.update(overrides)
    vae = False if getattr(args, "no_decode", False) else getattr(args, "vae", None)
    args.flag_names = {**SAMPLING_FLAG_NAMES, **(getattr(args, "flag_names", None) or {})}
    return Pipeline.from_pretrained(model_dir or args.model_dir, device=device or getattr(args, "device", None),
                                    vae=vae, guide=getattr(args, "guide_model", None),
                                    guide_scale=getattr(args, "guide_scale", None), **settings)


def checked_guidance_interval(args) -> tuple[float, float] | None:
    """``--guidance-interval`` as a tuple, checked before any model loads."""
    if args.guidance_interval is None:
        return None
    from ardiff.generate.settings import check_guidance_interval

    try:
        return check_guidance_interval(args.guidance_interval)
    except ValueError:
        low, high = args.guidance_interval
        raise CommandError(f"--guidance-interval {low:g} {high:g}: give LOW HIGH with 0 <= LOW < HIGH <= 1 "
                           f"(fractions of the training timesteps, e.g. --guidance-interval 0.1 0.7)") from None


# ---------------------------------------------------------------------------
#                              The error boundary
# ---------------------------------------------------------------------------
_EXPECTED_NAMES = {"YAMLError", "SafetensorError", "UnpicklingError", "HeaderTooLarge", "HeaderTooSmall",
                   "InvalidHeaderDeserialization", "MetadataIncompleteBuffer"}


def is_expected(error: BaseException) -> bool:
    """Failures a user can fix (bad input, missing or corrupt files, refused pickles, an
    unreachable memory backend, a missing optional package); anything else is a bug and
    keeps its traceback."""
    if isinstance(error, (CommandError, ValueError, OSError, ImportError)):
        return True
    return any(cls.__name__ in _EXPECTED_NAMES for cls in type(error).__mro__)


def one_line(error: BaseException, flag_names: dict[str, str] | None = None) -> str:
    """The error's message on one line, library argument names replaced by the command's flags."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, ModuleNotFoundError) and error.name:
        text = f"the optional package {error.name!r} is not installed (pip install {error.name})"
    elif isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    for name, flag in (flag_names or {}).items():
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w])", flag, text)
    return re.sub(r"\s*\n\s*", "; ", text)


def run_command(args, func) -> int:
    """Run ``func(args)``; expected failures become one line on stderr and exit status 2."""
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug or not is_expected(error):
            raise
        print(f"{args.prog}: error: {one_line(error, getattr(args, 'flag_names', None))}", file=sys.stderr)
        return 2


def read_model_summary(name_or_path: str) -> tuple[Path, dict]:
    """The model directory and its config.json, read without importing torch."""
    from ardiff.models.resolve import resolve_model_dir

    directory = resolve_model_dir(name_or_path)
    try:
        return directory, json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CommandError(f"{directory / 'config.json'} is not valid JSON ({e}); the model directory is "
                           f"damaged: export it again (ardiff train ... writes runs/NAME/model)") from None


def write_json(path, result: dict) -> None:
    """Write a command's result as JSON (atomically, parent directories created) and say so."""
    from ardiff.utils.io import atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, indent=2)
    print(f"wrote {path}")
