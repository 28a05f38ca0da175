"""Parameter-free invertible tensor operations."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from torch import Tensor

from .op import RevOp
from .state import CallState

__all__ = ["SpaceToDepth", "space_to_depth", "depth_to_space"]


def space_to_depth(x: Tensor, block: int) -> Tensor:
    """Rearrange ``(B, C, H, W)`` into ``(B, block*block*C, H/block, W/block)``.

    Channel order: ``y[n, (i*block + j)*C + c, y0, x0] = x[n, c, block*y0 + i, block*x0 + j]``
    (row offset slowest, input channel fastest; *not* the order of
    ``torch.nn.functional.pixel_unshuffle``).
    """
    b, c, h, w = x.shape
    if h % block or w % block:
        raise ValueError(f"space_to_depth: H and W must be multiples of {block}, got {h}x{w}")
    x = x.reshape(b, c, h // block, block, w // block, block)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(b, block * block * c, h // block, w // block)


def depth_to_space(y: Tensor, block: int) -> Tensor:
    """Exact inverse of :func:`space_to_depth`."""
    b, cb, h, w = y.shape
    c = cb // (block * block)
    y = y.reshape(b, block, block, c, h, w)
    return y.permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * block, w * block)


class SpaceToDepth(RevOp):
    """Reversible downsampling stem (a permutation; no parameters).

    Forward: ``y = space_to_depth(x, block)``; inverse: ``x = depth_to_space(y, block)``.
    Being a permutation, its backward maps the gradient with the same inverse.
    """

    def __init__(self, block: int = 4) -> None:
        super().__init__()
        self.block = block

    def forward(self, xs: Sequence[Tensor], state: Optional[CallState] = None) -> List[Tensor]:  # noqa: D102
        return [space_to_depth(xs[0], self.block)]

    def inverse(self, ys: Sequence[Tensor]) -> List[Tensor]:  # noqa: D102
        return [depth_to_space(ys[0], self.block)]

    def backward_pass(self, ys: Sequence[Tensor], dys: Sequence[Tensor],
                      state: CallState) -> Tuple[List[Tensor], List[Tensor]]:  # noqa: D102
        return self.inverse(ys), self.inverse(dys)

    def extra_repr(self) -> str:  # noqa: D102
        return f"block={self.block}"
