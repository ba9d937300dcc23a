"""The settings of `ardiff acdc benchmark`, as data: one row each, read by the benchmark, its
report and the command line (this module imports nothing heavy, so ``--help`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StorySetting:
    """One row of the story table: how its frames are made."""

    name: str
    label: str
    memory: str | None = None  # None: no correction; "rule", "smollm2" or "none" (the raw sentences)
    corrected_frames: int | None = None  # ACDC #k: correct only the first k frames (None: all)
    long: bool = False  # stories of ``long_length`` frames, past the trained length (rolling window)
    corrector_alone: bool = False  # the corrector draws every frame from noise (no ARM)
    story_limit: str | None = None  # a BenchmarkConfig field that caps the number of stories


SETTINGS_TABLE = (
    StorySetting("dm_alone", "Diffusion model alone (per frame)", memory="rule", corrector_alone=True),
    StorySetting("arm", "ARM alone"),
    StorySetting("acdc_rule", "ARM + ACDC (rule memory)", memory="rule"),
    StorySetting("acdc_smollm2", "ARM + ACDC (SmolLM2 memory)", memory="smollm2", story_limit="smollm2_stories"),
    StorySetting("acdc_raw", "ARM + ACDC (no memory: raw sentences)", memory="none"),
    StorySetting("acdc2_rule", "ACDC #2 (first two frames, rule memory)", memory="rule", corrected_frames=2),
    StorySetting("long_arm", "ARM alone, 12 frames", long=True),
    StorySetting("long_acdc_rule", "ARM + ACDC (rule memory), 12 frames", memory="rule", long=True),
)
STORY_TABLE = {s.name: s for s in SETTINGS_TABLE}
STORY_SETTINGS = tuple(s.name for s in SETTINGS_TABLE if not s.long)
LONG_SETTINGS = tuple(s.name for s in SETTINGS_TABLE if s.long)
LABELS = {s.name: s.label for s in SETTINGS_TABLE}

INPAINT_SETTING = "inpaint"  # the ARM's defective frames repaired under masks (needs the arm setting)
VIDEO_SETTINGS = ("video_arm", "video_acdc")
VIDEO_LABELS = {"video_arm": "ARM alone", "video_acdc": "ARM + ACDC (first half corrected)",
                "real": "real test clips"}
ALL_SETTINGS = STORY_SETTINGS + LONG_SETTINGS + (INPAINT_SETTING,) + VIDEO_SETTINGS

BENCHMARK_HELP = f"""\
ACDC's story experiments in the story world, where every frame has a truth (the paper's
Tables 1-3 at CPU scale): the story table, error accumulation on 12-frame stories, user
constraints by inpainting, and the video table. Settings (--settings, comma-separated):

{chr(10).join(f"  {s.name:<16}{s.label}" for s in SETTINGS_TABLE)}
  {INPAINT_SETTING:<16}the ARM's frames with a missing or duplicated item, repaired under a mask
{chr(10).join(f"  {name:<16}video table: {VIDEO_LABELS[name]}" for name in VIDEO_SETTINGS)}

Cost: the defaults (200 stories, 100 long stories, 100 clips) take about 2 hours on a 2-core
CPU, the SmolLM2 row about 40 minutes of it. Finished settings are skipped on a rerun, so the
settings can run in separate processes. A quick run (a few minutes):

  ardiff acdc benchmark --num-stories 8 --long-stories 4 --smollm2-stories 2 --video-clips 4 \\
      --out out/acdc-benchmark-quick
"""
