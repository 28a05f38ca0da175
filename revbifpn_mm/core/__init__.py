"""Reversible machinery (pure PyTorch): invertible ops, couplings, the container and its run policy."""
from .couplings import RevBlockGroup, RevResidualBlock, RevSilo, TriangularCoupling
from .backward import recompute
from .op import RevOp
from .policy import MemoryMode, RunPolicy
from .saved_tensors import SavedTensorCounter, saved_bytes
from .sequential import RecomputedPerScale, RevSequential
from .state import CallState
from .tensor_ops import SpaceToDepth, depth_to_space, space_to_depth

__all__ = [
    "CallState", "MemoryMode", "RecomputedPerScale", "RevBlockGroup", "RevOp", "RevResidualBlock",
    "RevSequential", "RevSilo", "RunPolicy", "SavedTensorCounter", "SpaceToDepth", "TriangularCoupling",
    "depth_to_space", "recompute", "saved_bytes", "space_to_depth",
]
