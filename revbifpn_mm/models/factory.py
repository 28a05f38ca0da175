"""Entry points ``revbifpn_s0`` ... ``revbifpn_s6`` (no I/O at import)."""
from __future__ import annotations

from typing import Any

from .revbifpn import RevBiFPN

__all__ = [f"revbifpn_s{i}" for i in range(7)]


def _make(arch: str, **kwargs: Any) -> RevBiFPN:
    return RevBiFPN(arch, **kwargs)


def revbifpn_s0(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S0 (3.42M parameters with the ImageNet head). Keyword arguments go to :class:`RevBiFPN`."""
    return _make("s0", **kwargs)


def revbifpn_s1(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S1 (5.11M parameters with the ImageNet head)."""
    return _make("s1", **kwargs)


def revbifpn_s2(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S2 (10.6M parameters with the ImageNet head)."""
    return _make("s2", **kwargs)


def revbifpn_s3(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S3 (19.6M parameters with the ImageNet head)."""
    return _make("s3", **kwargs)


def revbifpn_s4(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S4 (48.7M parameters with the ImageNet head)."""
    return _make("s4", **kwargs)


def revbifpn_s5(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S5 (82.0M parameters with the ImageNet head)."""
    return _make("s5", **kwargs)


def revbifpn_s6(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S6 (142.3M parameters with the ImageNet head)."""
    return _make("s6", **kwargs)
