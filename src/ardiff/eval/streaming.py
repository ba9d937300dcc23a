"""Class accuracy of a streamed video, segment by segment.

Every frame is read by the project's Fashion-MNIST classifier (as video evaluation's per-frame
class accuracy is: :class:`~ardiff.eval.features.FrameFeatures` over
:class:`~ardiff.eval.features.FMNISTFeatures`, scored by
:func:`~ardiff.eval.metrics.class_accuracy`) against the class the schedule asked of it. The
first block after a prompt switch is "settling" (its context still shows the old class): each
segment reports its accuracy with and without those frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ardiff.eval.features import FeatureNetwork, FMNISTFeatures, FrameFeatures
from ardiff.eval.metrics import class_accuracy

__all__ = ["SegmentAccuracy", "StreamAccuracy", "stream_class_accuracy"]


@dataclass(frozen=True)
class SegmentAccuracy:
    first_frame: int
    last_frame: int  # inclusive
    classes: tuple[int, ...]  # the classes asked in the segment, in order
    accuracy: float  # every frame of every clip
    settled_accuracy: float | None  # the settling frames left out (None: the segment is all settling)
    settling_frames: tuple[int, ...]  # the segment's frames of a first block after a switch


@dataclass(frozen=True)
class StreamAccuracy:
    segments: tuple[SegmentAccuracy, ...]
    accuracy: float  # every frame
    settled_accuracy: float | None  # every frame but the settling ones
    num_clips: int

    @property
    def lowest_settled(self) -> float | None:
        """The lowest settled accuracy of a segment: what "at least X in every segment" checks."""
        values = [s.settled_accuracy for s in self.segments if s.settled_accuracy is not None]
        return min(values) if values else None


def stream_class_accuracy(frames: torch.Tensor, frame_classes: Sequence[int], settling_frames: Sequence[int] = (),
                          segment_frames: int = 16, network: FeatureNetwork | None = None) -> StreamAccuracy:
    """Per-frame class accuracy of streamed clips ``frames`` (B, F, C, H, W) in [-1, 1] against
    ``frame_classes`` (F,), in segments of ``segment_frames`` frames. ``network``: a feature
    network with Fashion-MNIST logits (default: the shipped classifier, on the CPU)."""
    if frames.dim() != 5 or frames.shape[1] != len(frame_classes):
        raise ValueError(f"frames must be (clips, {len(frame_classes)} frames, C, H, W), got {tuple(frames.shape)}")
    if segment_frames < 1:
        raise ValueError(f"segment_frames={segment_frames} must be >= 1")
    network = network or FMNISTFeatures()
    if not network.predicts_fmnist_classes:
        raise ValueError(f"the {network.name} network does not predict Fashion-MNIST classes")
    _, logits = FrameFeatures(network).per_frame(frames.transpose(1, 2))  # (B, F, K)
    targets = torch.as_tensor(list(frame_classes))
    B, F = logits.shape[:2]
    settling = set(settling_frames)

    def accuracy(indices: list[int]) -> float | None:
        if not indices:
            return None
        return class_accuracy(logits[:, indices].flatten(0, 1), targets[indices].repeat(B))

    segments = []
    for first in range(0, F, segment_frames):
        indices = list(range(first, min(first + segment_frames, F)))
        classes = tuple(dict.fromkeys(int(targets[i]) for i in indices))
        segments.append(SegmentAccuracy(first, indices[-1], classes, accuracy(indices),
                                        accuracy([i for i in indices if i not in settling]),
                                        tuple(i for i in indices if i in settling)))
    everything = list(range(F))
    return StreamAccuracy(tuple(segments), accuracy(everything), accuracy([i for i in everything if i not in settling]),
                          B)
