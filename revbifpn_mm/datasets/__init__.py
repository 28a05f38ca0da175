"""Datasets shipped with revbifpn_mm (numpy + Pillow only; no mm* imports).

Attributes are resolved lazily so that ``python -m revbifpn_mm.datasets.synthetic``
does not import the module twice.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CLASSES", "SEG_CLASSES", "PALETTE", "SEG_PALETTE", "generate_synthetic_coco"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".synthetic", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
