"""Reversible machinery (pure PyTorch): invertible ops, couplings and the container."""
from .couplings import RevBlockGroup, RevResidualBlock, RevSilo, TriangularCoupling
from .op import RevOp, vjp
from .sequential import MemoryMode, RecomputedPerScale, RevSequential
from .state import CallState, frozen_bn_statistics
from .tensor_ops import SpaceToDepth, depth_to_space, space_to_depth

__all__ = [
    "CallState", "MemoryMode", "RecomputedPerScale", "RevBlockGroup", "RevOp",
    "RevResidualBlock", "RevSequential", "RevSilo", "SpaceToDepth", "TriangularCoupling",
    "depth_to_space", "frozen_bn_statistics", "space_to_depth", "vjp",
]
