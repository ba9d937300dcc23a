"""Sample-quality metrics over features from an injectable feature network."""

from ardiff.eval.metrics import (
    FeatureStats,
    class_accuracy,
    frame_consistency,
    frame_consistency_by_pair,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    paired_bootstrap,
    precision_recall,
)

__all__ = [
    "FeatureStats",
    "class_accuracy",
    "frame_consistency",
    "frame_consistency_by_pair",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "paired_bootstrap",
    "precision_recall",
]
