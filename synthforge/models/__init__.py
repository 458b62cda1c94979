"""Stage-B network modules: trunk, heads, and the multi-task wrapper (plain ``nn.Module``s)."""

from synthforge.models.heads import DenseHead, HourglassLandmarkHead, soft_argmax
from synthforge.models.multitask import MultiTaskNet, TaskOutputs, build_default_net
from synthforge.models.trunk import UNetTrunk

__all__ = [
    "DenseHead",
    "HourglassLandmarkHead",
    "MultiTaskNet",
    "TaskOutputs",
    "UNetTrunk",
    "build_default_net",
    "soft_argmax",
]
