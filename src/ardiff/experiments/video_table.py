"""The video table of `ardiff acdc benchmark` (ACDC's Table 3, at CPU scale).

A video ACDiT trained on clips of ``trained`` frames (Moving Fashion-MNIST, blocks of whole
frames) makes clips twice as long with the rolling KV window. Two settings share every noise
draw, so they differ only by the correction:

  video_arm     the ARM alone, 2x its trained length
  video_acdc    the first ``trained`` frames are made, decoded, corrected as one clip by SDEdit
                with a full-sequence video diffusion model (one block of ``trained`` frames,
                prompted with the clip's class), re-encoded, and the ARM continues from the
                corrected frames (``sample(prefix=...)``)

and the same two with a few-step student (``video_student``, ``video_student_acdc``) or a
self-forcing student (``video_sf``, ``video_sf_acdc``) in the ARM's place: drift corrected at
inference time against drift trained away (``ardiff.train.dmd``). Every row draws clip k from
the same seed, so differences against the ARM get paired bootstrap intervals.

A third row, ``real``, scores real test clips the same way: the floor of every metric.

Metrics per half (frames 1..trained and trained+1..2x trained), with the offline
Fashion-MNIST network (:mod:`ardiff.eval`): per-frame class accuracy (does the frame's item
classify as the clip's class), frame consistency (mean cosine of consecutive frames'
features), the FVD proxy (Frechet distance of the concatenated per-frame features against
real test clips' halves), and the frame-wise FID-FMNIST.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ardiff.experiments.benchmark_settings import ALL_VIDEO_SETTINGS, VIDEO_LABELS
from ardiff.experiments.common import (
    CorrectionSettings,
    check_reusable,
    paired_cell,
    pyplot,
    write_json,
)
from ardiff.utils.seeding import generator, item_seed, make_generators


@dataclass
class VideoBenchConfig(CorrectionSettings):
    arm: str = "moving-fmnist-16"
    corrector: str = "moving-fmnist-16-dit"
    clips: int = 100  # class-balanced: clip k has class k % 10
    real_clips: int = 1000  # the reference set of the FVD proxy and frame FID
    window: int = 6  # 1 sink + 6 blocks of context: the new block at position 7, the last trained one
    student: str | None = None  # video_student*: a few-step student of the ARM's layout
    sf_student: str | None = None  # video_sf*: a self-forcing student of the ARM's layout


# setting -> (whose clips: the config field naming the model, corrected by ACDC)
VIDEO_ROLES = {"video_arm": ("arm", False), "video_acdc": ("arm", True), "video_student": ("student", False),
               "video_student_acdc": ("student", True), "video_sf": ("sf_student", False),
               "video_sf_acdc": ("sf_student", True)}
ROLE_FLAGS = {"student": "--video-student", "sf_student": "--video-sf-student"}


def score_halves(clips: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, network) -> dict:
    """clips/real: (N, C, 2F, H, W). Metrics of frames 1..F, F+1..2F and all, plus per-frame accuracy."""
    from ardiff.eval.evaluate import video_metrics

    F = clips.shape[2] // 2
    out = {}
    for name, part in (("first", slice(0, F)), ("second", slice(F, 2 * F)), ("all", slice(None))):
        m = video_metrics(clips[:, :, part], labels, real[:, :, part], network, per_clip=True)
        out[name] = {"class_accuracy": m["class_accuracy_frames"], "consistency": m["frame_consistency"],
                     "fvd_proxy": m[f"fvd_proxy_{network.name}"], "fid_frames": m[f"fid_{network.name}_frames"],
                     "class_accuracy_by_clip": m["class_accuracy_by_clip"],
                     "consistency_by_clip": m["frame_consistency_by_clip"],
                     "within_class_spread": m["within_class_spread"]}
    out["per_frame_accuracy"] = m["class_accuracy_by_frame"]  # m: the last part scored, all frames
    return out


class VideoBench:
    def __init__(self, config: VideoBenchConfig, device: str = "cpu"):
        from ardiff.acdc.native import FMNIST_PROMPT_NAMES, NativeCorrector
        from ardiff.generate.pipeline import Pipeline

        self.config, self.device = config, device
        # The models with their recorded sampling settings, the configured overrides over them.
        self.arm_pipe = Pipeline.from_pretrained(config.arm, device=device, cfg_scale=config.arm_cfg,
                                                 num_steps=config.arm_steps)
        self.arm = self.arm_pipe.model
        self.arm_data = self.arm_pipe.data  # what it was trained on: the reference clips match it
        corrector = Pipeline.from_pretrained(config.corrector, device=device).model
        a, c = self.arm.config, corrector.config
        if not a.is_video or a.block_size % a.tokens_per_frame:
            raise ValueError(f"video_arm={config.arm!r} must be a video ACDiT whose blocks are whole frames")
        if not c.is_video or tuple(c.input_size) != tuple(a.input_size) or c.num_blocks != 1:
            raise ValueError(f"video_corrector={config.corrector!r} must be a full-sequence video model (one block) "
                             f"of the ARM's clip size {tuple(a.input_size)}; got input_size={tuple(c.input_size)} "
                             f"with {c.num_blocks} blocks")
        self.arm_settings = self.arm_pipe.settings
        self.pipes = {"arm": self.arm_pipe}
        self.arm_cfg = self.arm_settings.cfg_scale
        # The corrector is guided as strongly as the ARM unless told otherwise: on the shipped
        # models CFG 6 (the ARM's) beat the corrector's own recorded 4 in class accuracy, FVD proxy
        # and frame FID (100 clips, docs/story_world.md).
        self.corrector_cfg = self.arm_cfg if config.corrector_cfg is None else config.corrector_cfg
        self.corrector = NativeCorrector(corrector, num_steps=config.corrector_steps, cfg_scale=self.corrector_cfg)
        self.trained_frames = a.input_size[0]
        self.labels = torch.arange(config.clips) % a.num_classes
        self.prompts = [f"a {FMNIST_PROMPT_NAMES[int(k)]} moving" for k in self.labels]

    def pipe(self, role: str):
        """The pipeline whose model makes a role's clips: the ARM, or a student of its layout."""
        from ardiff.generate.pipeline import Pipeline

        if role not in self.pipes:
            source = getattr(self.config, role)
            if source is None:
                raise ValueError(f"the video table's {role.replace('_', '-')} rows need the model: pass "
                                 f"{ROLE_FLAGS[role]} DIR (a student of {self.config.arm}'s layout)")
            pipe = Pipeline.from_pretrained(source, device=self.device)
            a, b = self.arm.config, pipe.model.config
            differ = [f for f in ("input_size", "in_channels", "patch_size", "block_size", "num_classes")
                      if getattr(a, f) != getattr(b, f)]
            if differ:
                raise ValueError(f"{ROLE_FLAGS[role]} {source}: its layout differs from the ARM's "
                                 f"({', '.join(f'{f} {getattr(b, f)} vs {getattr(a, f)}' for f in differ)}); "
                                 f"name a student of {self.config.arm}")
            self.pipes[role] = pipe
        return self.pipes[role]

    def made_with(self, name: str) -> dict:
        """The run parameters a setting's clips depend on (see ``check_reusable``)."""
        c = self.config
        role, corrected = VIDEO_ROLES[name]
        s = self.pipe(role).settings
        out = dict(seed=c.seed, num_clips=c.clips, arm=getattr(c, role), arm_cfg=s.cfg_scale, arm_steps=s.num_steps,
                   arm_sampler=s.sampler, window=c.window, sink_blocks=c.sink_blocks)
        if corrected:
            out.update(corrector=c.corrector, corrector_cfg=self.corrector_cfg, corrector_steps=c.corrector_steps,
                       t_prime=c.t_prime)
        return out

    @torch.no_grad()
    def run(self, name: str) -> tuple[torch.Tensor, float]:
        """Setting ``name``'s (N, C, 2F, H, W) clips and seconds per clip."""
        from tqdm.auto import tqdm

        from ardiff.generate.context import blocks_to_input

        role, corrected = VIDEO_ROLES[name]
        c, pipe = self.config, self.pipe(role)
        model = pipe.model
        T = model.config.num_blocks
        seeds = [item_seed(c.seed, k) for k in range(c.clips)]
        labels = self.labels.to(self.device)
        t0 = time.perf_counter()
        out = []
        for start in tqdm(range(0, c.clips, 50), desc=name, unit="batch"):
            batch = slice(start, start + 50)
            generators = make_generators(seeds[batch])  # one stream per clip through both calls
            head = pipe(labels[batch], generator=generators, num_blocks=T, output="blocks")
            if corrected:
                clips = model.from_blocks(head).transpose(1, 2).clamp(-1, 1)  # (B, F, C, H, W)
                fixed = self.corrector.correct(clips, self.prompts[batch], c.t_prime,
                                               [generator(s) for s in seeds[batch]]).frames
                head = model.to_blocks(fixed.transpose(1, 2).to(model.device, model.dtype))
            blocks = pipe(labels[batch], generator=generators, num_blocks=2 * T, window=c.window,
                          sink_blocks=c.sink_blocks, prefix=head, output="blocks")
            out.append(blocks_to_input(model, blocks).clamp(-1, 1).cpu())
        return torch.cat(out), (time.perf_counter() - t0) / c.clips


def write_video_table(results: dict, trained: int) -> list[str]:
    """The video table in Markdown. The Frechet distances stand beside their floor: the real
    held-out clips (the ``real`` row) scored against the same reference at the same N."""
    F = trained
    real = results.get("real")

    def frechet(r: dict, half: str, key: str) -> str:
        digits = 0 if key == "fvd_proxy" else 1
        value = f"{r[half][key]:.{digits}f}"
        return value if real is None or r is real else f"{value} [{real[half][key]:.{digits}f}]"

    lines = [f"| setting | class acc. 1-{F} | class acc. {F + 1}-{2 * F} | consistency 1-{F} "
             f"| consistency {F + 1}-{2 * F} | FVD proxy 1-{F} [floor] | FVD proxy {F + 1}-{2 * F} [floor] "
             f"| frame FID 1-{F} [floor] | frame FID {F + 1}-{2 * F} [floor] | drift: frame FID {F + 1}-{2 * F} "
             f"minus 1-{F} [95% interval] | s / clip |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in (*ALL_VIDEO_SETTINGS, "real"):
        if name not in results:
            continue
        r = results[name]
        first, second = r["first"], r["second"]
        seconds = f"{r['s_per_clip']:.2f}" if r.get("s_per_clip") is not None else "-"
        cells = [frechet(r, half, key) for key in ("fvd_proxy", "fid_frames") for half in ("first", "second")]
        label = VIDEO_LABELS[name]
        if name == "video_acdc" and r.get("t_prime") is not None:  # the correction's settings, as run
            label = f"{label[:-1]}, t'={r['t_prime']:g}, CFG {r['corrector_cfg']:g})"
        elif name.endswith("_acdc") and r.get("t_prime") is not None:
            label = f"{label} (t'={r['t_prime']:g}, CFG {r['corrector_cfg']:g})"
        drift = f"{second['fid_frames'] - first['fid_frames']:+.1f}"
        if r.get("drift_interval"):
            drift += " [{1:+.1f}, {2:+.1f}]".format(*r["drift_interval"])
        lines.append(f"| {label} (N={r['num_clips']}) | {first['class_accuracy']:.3f} "
                     f"| {second['class_accuracy']:.3f} | {first['consistency']:.3f} | {second['consistency']:.3f} "
                     f"| {' | '.join(cells)} | {drift} | {seconds} |")
    lines += paired_difference_lines(results, F)
    lines += spread_lines(results, F)
    return lines


def spread_lines(results: dict, trained: int) -> list[str]:
    """The mode-collapse check: how far apart two clips of one class are (frame features averaged
    per clip), per half; real clips give the level to expect."""
    cells = [f"{VIDEO_LABELS[name]} {results[name]['first']['within_class_spread']:.2f} / "
             f"{results[name]['second']['within_class_spread']:.2f}"
             for name in (*ALL_VIDEO_SETTINGS, "real")
             if name in results and "within_class_spread" in results[name]["first"]]
    if not cells:
        return []
    return ["", f"Within-class spread of clips, frames 1-{trained} / {trained + 1}-{2 * trained} (mode-collapse "
                f"check: lower than real clips' means clips of a class look alike): {'; '.join(cells)}"]


def paired_difference_lines(results: dict, trained: int) -> list[str]:
    """Every row minus the ARM alone in class accuracy and frame consistency, per half, with a
    paired bootstrap interval over clips (every setting draws clip k from the same seed), for
    rows that ran on the same clips."""
    arm = results.get("video_arm")
    if arm is None or "class_accuracy_by_clip" not in arm["first"]:
        return []
    lines = []
    for name in ALL_VIDEO_SETTINGS[1:]:
        other = results.get(name)
        if other is None or other["num_clips"] != arm["num_clips"] or "class_accuracy_by_clip" not in other["first"]:
            continue
        cells = []
        for key, what in (("class_accuracy_by_clip", "class accuracy"), ("consistency_by_clip", "consistency")):
            if key not in arm["first"] or key not in other["first"]:
                continue
            cells += [f"{what} {frames} {paired_cell(arm[half][key], other[half][key])}"
                      for half, frames in (("first", f"1-{trained}"), ("second", f"{trained + 1}-{2 * trained}"))]
        if other.get("drift_minus_arm"):
            cells.append("drift {:+.1f} [{:+.1f}, {:+.1f}]".format(*other["drift_minus_arm"]))
        lines.append(f"- {VIDEO_LABELS[name]}: {'; '.join(cells)}")
    if not lines:
        return []
    return ["", f"Minus the ARM alone, on the same {arm['num_clips']} clips (paired bootstrap 95% intervals):", *lines]


def plot_video_accuracy(results: dict, trained: int, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    styles = {"video_arm": "o-", "video_acdc": "s-", "video_student": "^--", "video_student_acdc": "v--",
              "video_sf": "D-", "video_sf_acdc": "x-", "real": "k:"}
    for name, style in styles.items():
        if name in results:
            acc = results[name]["per_frame_accuracy"]
            ax.plot(range(1, len(acc) + 1), acc, style, label=VIDEO_LABELS[name], markersize=3)
    ax.axvline(trained + 0.5, color="grey", linestyle=":", linewidth=1)  # end of the trained length
    ax.set_xlabel("frame")
    ax.set_ylabel("class accuracy of the frame")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_video_settings(config: VideoBenchConfig, names, directory, device: str = "cpu", log=print,
                       rescore: bool = False) -> dict:
    """Run (or load, or rescore) the video settings; results by name, plus the ``real`` row.
    Clips are saved to ``<directory>/<name>.safetensors`` and metrics to ``<name>.json``."""
    from safetensors.torch import load_file, save_file

    from ardiff.eval.evaluate import moving_fmnist_motion, moving_fmnist_test_clips
    from ardiff.eval.features import FMNISTFeatures

    directory = Path(directory)
    bench = VideoBench(config, device)
    for name in names:  # every row's model loads (or a missing one is named) before anything is written
        bench.pipe(VIDEO_ROLES[name][0])
    directory.mkdir(parents=True, exist_ok=True)  # after the models load: a bad path writes nothing
    F, H = bench.trained_frames, bench.arm.config.input_size[1]
    network = FMNISTFeatures(device=device)
    motion = moving_fmnist_motion(bench.arm_data)
    reference, _ = moving_fmnist_test_clips(config.real_clips, 2 * F, H, **motion)
    results = {}
    for name in names:
        path, clips_path = directory / f"{name}.json", directory / f"{name}.safetensors"
        finished = json.loads(path.read_text()) if path.is_file() and clips_path.is_file() else None
        if finished is not None:
            check_reusable(path, finished, bench.made_with(name))
        if finished is not None and not rescore:
            results[name] = finished
            log(f"{name}: already done ({path})")
            continue
        if finished is not None:
            clips, seconds = load_file(str(clips_path))["clips"], finished["s_per_clip"]
        else:
            clips, seconds = bench.run(name)
            save_file({"clips": clips.float().contiguous()}, str(clips_path))
        metrics = score_halves(clips, bench.labels, reference, network)
        metrics.update(setting=name, label=VIDEO_LABELS[name], s_per_clip=seconds, num_clips=len(clips),
                       trained_frames=F, t_prime=config.t_prime, arm_cfg=bench.arm_cfg,
                       corrector_cfg=bench.corrector_cfg, window=config.window, sink_blocks=config.sink_blocks,
                       made_with=bench.made_with(name))
        write_json(path, metrics)
        results[name] = metrics
        first, second = metrics["first"], metrics["second"]
        log(f"{name}: class accuracy {first['class_accuracy']:.3f} / {second['class_accuracy']:.3f}"
            f" (frames 1-{F} / {F + 1}-{2 * F}), FVD proxy {metrics['first']['fvd_proxy']:.0f} / "
            f"{metrics['second']['fvd_proxy']:.0f}, {seconds:.2f} s/clip")
    # Real clips that are not in the reference set: what a perfect generator would score.
    held_out, held_labels = moving_fmnist_test_clips(config.clips, 2 * F, H, first=config.real_clips, **motion)
    real = score_halves(held_out, held_labels, reference, network)
    real.update(setting="real", label=VIDEO_LABELS["real"], s_per_clip=None, num_clips=len(held_out), trained_frames=F)
    results["real"] = real
    add_drift_intervals(results, {name: load_file(str(directory / f"{name}.safetensors"))["clips"] for name in names},
                        held_out, reference, network, F)
    return results


def add_drift_intervals(results: dict, clips: dict, held_out: torch.Tensor, reference: torch.Tensor, network,
                        trained: int, num: int = 1000) -> None:
    """Every row's drift (frame FID of the second half minus the first) with a bootstrap 95%
    interval over clips, and every row's drift minus the ARM's with a paired one (the rows draw
    clip k from the same seed); the held-out real clips' drift is the floor."""
    from ardiff.eval.features import FrameFeatures
    from ardiff.eval.metrics import drift_bootstrap

    frames = FrameFeatures(network)
    reference_features = frames.per_frame(reference)[0].cpu()
    features = {name: frames.per_frame(c.float())[0].cpu() for name, c in clips.items()}
    baseline = "video_arm" if "video_arm" in features else None
    drift = drift_bootstrap(features, reference_features, trained, baseline=baseline, num=num)
    drift["real"] = drift_bootstrap({"real": frames.per_frame(held_out)[0].cpu()}, reference_features, trained,
                                    num=num)["real"]
    for name, d in drift.items():
        results[name]["drift_interval"] = list(d["drift"])
        if d["minus_baseline"] is not None:
            results[name]["drift_minus_arm"] = list(d["minus_baseline"])


def write_video_strips(directory, out, trained: int, count: int = 3) -> None:
    """Per clip: a PNG with one row per setting (ARM alone, then ARM + ACDC), all frames."""
    from safetensors.torch import load_file

    from ardiff.utils.media import save_image_grid

    directory = Path(directory)
    rows = {n: load_file(str(directory / f"{n}.safetensors"))["clips"] for n in ALL_VIDEO_SETTINGS
            if (directory / f"{n}.safetensors").is_file()}
    if not rows:
        return
    for k in range(min(count, *(len(clips) for clips in rows.values()))):
        frames = torch.cat([clips[k].transpose(0, 1) for clips in rows.values()])  # (rows * 2F, C, H, W)
        save_image_grid(frames.float(), Path(out) / f"strip_video_{k}.png", nrow=2 * trained)
        (Path(out) / f"strip_video_{k}.txt").write_text("rows: " + ", ".join(rows) + "\n")
