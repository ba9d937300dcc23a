"""The settings of `ardiff acdc benchmark`, as data: one row each, read by the benchmark, its
report and the command line (this module imports nothing heavy, so ``--help`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StorySetting:
    """One row of the story table: how its frames are made."""

    name: str
    label: str
    # None: no correction; "rule", "smollm2", "state" (each frame's full caption, tracked from the
    # text: StoryStateMemory) or "none" (the raw sentences)
    memory: str | None = None
    corrected_frames: int | None = None  # ACDC #k: correct only the first k frames (None: all)
    long: bool = False  # stories of ``long_length`` frames, past the trained length (rolling window)
    corrector_alone: bool = False  # the corrector draws every frame from noise (no ARM)
    story_limit: str | None = None  # a BenchmarkConfig field that caps the number of stories
    t_prime: float | None = None  # None: the benchmark's --t-prime


SETTINGS_TABLE = (
    StorySetting("dm_alone", "Diffusion model alone (per frame)", memory="rule", corrector_alone=True),
    StorySetting("arm", "ARM alone"),
    StorySetting("acdc_rule", "ARM + ACDC (rule memory)", memory="rule"),
    StorySetting("acdc_smollm2", "ARM + ACDC (SmolLM2 memory)", memory="smollm2", story_limit="smollm2_stories"),
    StorySetting("acdc_raw", "ARM + ACDC (no memory: raw sentences)", memory="none"),
    StorySetting("acdc_state", "ARM + ACDC (state memory: full captions from the text)", memory="state"),
    StorySetting("acdc2_rule", "ACDC #2 (first two frames, rule memory)", memory="rule", corrected_frames=2),
    StorySetting("long_arm", "ARM alone, 12 frames", long=True),
    StorySetting("long_acdc_rule", "ARM + ACDC (rule memory), 12 frames", memory="rule", long=True),
)
# The paper's ablations of where correction matters (not run by default): ACDC #k, the first k
# frames corrected, with the rule memory and without memory; and a t' sweep.
ACDC_K = {1: ("acdc1_rule", "acdc1_raw"), 2: ("acdc2_rule", "acdc2_raw"), 3: ("acdc3_rule", "acdc3_raw"),
          4: ("acdc4_rule", "acdc4_raw"), 5: ("acdc5_rule", "acdc5_raw"), 6: ("acdc_rule", "acdc_raw")}
T_PRIME_SWEEP = {0.3: "acdc_rule_t03", 0.4: "acdc_rule_t04", 0.5: "acdc_rule", 0.6: "acdc_rule_t06",
                 0.7: "acdc_rule_t07"}
ABLATION_TABLE = (
    *(StorySetting(f"acdc{k}_rule", f"ACDC #{k} (rule memory)", memory="rule", corrected_frames=k)
      for k in (1, 3, 4, 5)),  # #2 is acdc2_rule, #6 (all frames) acdc_rule
    *(StorySetting(f"acdc{k}_raw", f"ACDC #{k} (no memory)", memory="none", corrected_frames=k)
      for k in range(1, 6)),  # #6 is acdc_raw
    *(StorySetting(f"acdc_rule_t{round(10 * t):02d}", f"ARM + ACDC (rule memory), t'={t}", memory="rule", t_prime=t)
      for t in (0.3, 0.4, 0.6, 0.7)),
    *(StorySetting(f"acdc_state_t{round(10 * t):02d}", f"ARM + ACDC (state memory), t'={t}", memory="state",
                   t_prime=t) for t in (0.3, 0.7)),
    StorySetting("long_acdc_state", "ARM + ACDC (state memory), 12 frames", memory="state", long=True),
    StorySetting("dm_alone_state", "Diffusion model alone (state memory's captions)", memory="state",
                 corrector_alone=True),
)
STORY_TABLE = {s.name: s for s in SETTINGS_TABLE + ABLATION_TABLE}
STORY_SETTINGS = tuple(s.name for s in SETTINGS_TABLE if not s.long)
LONG_SETTINGS = tuple(s.name for s in SETTINGS_TABLE if s.long)
ABLATION_SETTINGS = tuple(s.name for s in ABLATION_TABLE)
LABELS = {s.name: s.label for s in SETTINGS_TABLE + ABLATION_TABLE}

INPAINT_SETTING = "inpaint"  # the ARM's defective frames repaired under masks (needs the arm setting)
VIDEO_SETTINGS = ("video_arm", "video_acdc")
# Training time against inference time (the few-step issue's students): each needs its model
# (--video-student, --video-sf-student), so none runs by default.
VIDEO_STUDENT_SETTINGS = ("video_student", "video_student_acdc", "video_sf", "video_sf_acdc")
VIDEO_LABELS = {"video_arm": "ARM alone", "video_acdc": "ARM + ACDC (first half corrected)",
                "video_student": "few-step student", "video_student_acdc": "few-step student + ACDC",
                "video_sf": "self-forcing student", "video_sf_acdc": "self-forcing student + ACDC",
                "real": "real test clips"}
ALL_VIDEO_SETTINGS = VIDEO_SETTINGS + VIDEO_STUDENT_SETTINGS
DEFAULT_SETTINGS = STORY_SETTINGS + LONG_SETTINGS + (INPAINT_SETTING,) + VIDEO_SETTINGS
ALL_SETTINGS = DEFAULT_SETTINGS + ABLATION_SETTINGS + VIDEO_STUDENT_SETTINGS
# Names that stand for several settings in --settings.
SETTING_GROUPS = {"default": DEFAULT_SETTINGS, "story": STORY_SETTINGS, "long": LONG_SETTINGS,
                  "video": VIDEO_SETTINGS, "video_students": VIDEO_STUDENT_SETTINGS, "ablations": ABLATION_SETTINGS,
                  "all": ALL_SETTINGS}


def expand_settings(names) -> tuple[str, ...]:
    """Setting and group names -> setting names, in table order, each once."""
    chosen = set()
    for name in names:
        if name in SETTING_GROUPS:
            chosen.update(SETTING_GROUPS[name])
        elif name in ALL_SETTINGS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown benchmark setting {name!r}; choose from {', '.join(ALL_SETTINGS)} or the "
                             f"groups {', '.join(SETTING_GROUPS)}")
    return tuple(n for n in ALL_SETTINGS if n in chosen)

BENCHMARK_HELP = f"""\
ACDC's story experiments in the story world, where every frame has a truth (the paper's
Tables 1-3 at CPU scale): the story table, error accumulation on 12-frame stories, user
constraints by inpainting, and the video table. Settings (--settings, comma-separated):

{chr(10).join(f"  {s.name:<16}{s.label}" for s in SETTINGS_TABLE)}
  {INPAINT_SETTING:<16}the ARM's frames with a missing or duplicated item, repaired under a mask
{chr(10).join(f"  {name:<18}video table: {VIDEO_LABELS[name]}" for name in ALL_VIDEO_SETTINGS)}

Ablations (not run by default; --settings ablations): ACDC #k, the first k frames corrected,
with the rule memory (acdc1_rule .. acdc5_rule; #2 is acdc2_rule, #6 acdc_rule) and without
memory (acdc1_raw .. acdc5_raw; #6 is acdc_raw), a t' sweep (acdc_rule_t03, _t04, _t06,
_t07; t'=0.5 is acdc_rule), and the state memory at t'=0.3 and 0.7 (acdc_state_t03, _t07),
on 12-frame stories (long_acdc_state) and with the corrector alone (dm_alone_state).
Groups: default, story, long, video, video_students, ablations, all. The student rows
(video_students) set few-step and self-forcing students in the ARM's place, with and without
ACDC, on the same clips: --video-student DIR, --video-sf-student DIR.

Cost: the defaults (200 stories, 100 long stories, 100 clips) take about 2 hours on a 2-core
CPU, the SmolLM2 row about 40 minutes of it. Finished settings are skipped on a rerun, so the
settings can run in separate processes; one made with other run parameters (seed, number of
stories or clips, t', guidance, models) is an error, not a reused row. A quick run (a few
minutes):

  ardiff acdc benchmark --num-stories 8 --long-stories 4 --smollm2-stories 2 --video-clips 4 \\
      --out out/acdc-benchmark-quick
"""
