"""Reversible machinery (pure PyTorch): invertible ops, couplings, the container and its run policy."""
from .couplings import RevBlockGroup, RevResidualBlock, RevSilo, TriangularCoupling
from .memory import KernelCounter, PeakProbe, SavedTensorCounter, peak_probe_for, saved_bytes
from .op import RevOp, vjp
from .policy import MemoryMode, RunPolicy
from .sequential import RecomputedPerScale, RevSequential
from .state import CallState
from .tensor_ops import SpaceToDepth, depth_to_space, space_to_depth

__all__ = [
    "CallState", "KernelCounter", "MemoryMode", "PeakProbe", "RecomputedPerScale", "RevBlockGroup", "RevOp",
    "RevResidualBlock", "RevSequential", "RevSilo", "RunPolicy", "SavedTensorCounter", "SpaceToDepth",
    "TriangularCoupling", "depth_to_space", "peak_probe_for", "saved_bytes", "space_to_depth", "vjp",
]
