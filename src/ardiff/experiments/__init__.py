"""Drivers that write reports and tables, on top of the library.

- :mod:`~ardiff.experiments.demo`: ``ardiff demo``, the shipped models sampled and scored.
- :mod:`~ardiff.experiments.analyses`: the paper's block-size and inference-time analyses.
- :mod:`~ardiff.experiments.speed_bench`: ``ardiff bench``, speed against the matmul peak.
- :mod:`~ardiff.experiments.story_benchmark`: ``ardiff acdc benchmark``, ACDC's story
  experiments in the story world (quality, not speed); its settings, as data, in
  :mod:`~ardiff.experiments.benchmark_settings`.
- :mod:`~ardiff.experiments.video_table`: its video table (ACDC's Table 3 at CPU scale).
- :mod:`~ardiff.experiments.story_generation`: stories written by an LLM (Algorithm 1).
- :mod:`~ardiff.experiments.acdc_report`: what an ``ardiff acdc story|video`` run writes and
  measures (strip, page, record, metrics, the dry-run plan).
- :mod:`~ardiff.experiments.common`: what they share.
"""
