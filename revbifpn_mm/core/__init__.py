"""Reversible machinery (pure PyTorch): invertible ops, couplings and the container."""
from .couplings import RevBlockGroup, RevResidualBlock, RevSilo, TriangularCoupling
from .memory import SavedTensorCounter, saved_bytes
from .op import RevOp, vjp
from .sequential import MemoryMode, RecomputedPerScale, RevSequential
from .state import CallState, frozen_bn_statistics, is_recomputing
from .tensor_ops import SpaceToDepth, depth_to_space, space_to_depth

__all__ = [
    "CallState", "MemoryMode", "RecomputedPerScale", "RevBlockGroup", "RevOp",
    "RevResidualBlock", "RevSequential", "RevSilo", "SavedTensorCounter", "SpaceToDepth",
    "TriangularCoupling", "saved_bytes",
    "depth_to_space", "frozen_bn_statistics", "is_recomputing", "space_to_depth", "vjp",
]
