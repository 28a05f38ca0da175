"""The activation bytes autograd keeps for backward, device-independent: the measure of a memory mode
(peak memory and kernel counts are the tools' ``meters.py``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SavedTensorCounter", "saved_bytes"]


class SavedTensorCounter(torch.autograd.graph.saved_tensors_hooks):
    """Context manager that records every tensor saved for backward, deduplicated by storage.

    Tensors passed as ``exclude`` (the parameters: not activation memory) are not counted. Views of one
    storage count once, with the storage's full size.

    Example:
        >>> with SavedTensorCounter(exclude=model.parameters()) as c:
        ...     loss = model(x).sum()
        >>> c.nbytes  # activation bytes held for the backward pass
    """

    def __init__(self, exclude: Optional[Iterable[Tensor]] = None) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in (exclude or ())}
        self.storages: Dict[Tuple[str, int], int] = {}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self._excluded and ptr != 0:
            self.storages[(str(t.device), ptr)] = st.nbytes()
        # A detached alias (same storage and version counter): ``t`` itself would tie a custom Function's saved
        # outputs to their own node, a reference cycle through C++ that no garbage collection frees.
        return t.detach()

    @property
    def nbytes(self) -> int:
        """Total bytes of the distinct storages saved for backward."""
        return sum(self.storages.values())

    def __enter__(self) -> "SavedTensorCounter":
        super().__enter__()
        return self


def saved_bytes(fn: Callable[[], Any], exclude: Optional[Iterable[Tensor]] = None) -> int:
    """Run ``fn()`` and return the activation bytes it saved for backward."""
    with SavedTensorCounter(exclude) as c:
        out = fn()
    del out
    return c.nbytes
