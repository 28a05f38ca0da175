"""Entry points ``revbifpn_s0`` ... ``revbifpn_s6`` (no I/O at import)."""
from __future__ import annotations

from typing import Any

from .revbifpn import RevBiFPN

__all__ = [f"revbifpn_s{i}" for i in range(7)]


def revbifpn_s0(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S0. Keyword arguments go to :class:`RevBiFPN`; its size and weights: ``OFFICIAL_WEIGHTS``."""
    return RevBiFPN("s0", **kwargs)


def revbifpn_s1(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S1 (as :func:`revbifpn_s0`)."""
    return RevBiFPN("s1", **kwargs)


def revbifpn_s2(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S2 (as :func:`revbifpn_s0`)."""
    return RevBiFPN("s2", **kwargs)


def revbifpn_s3(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S3 (as :func:`revbifpn_s0`)."""
    return RevBiFPN("s3", **kwargs)


def revbifpn_s4(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S4 (as :func:`revbifpn_s0`)."""
    return RevBiFPN("s4", **kwargs)


def revbifpn_s5(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S5 (as :func:`revbifpn_s0`)."""
    return RevBiFPN("s5", **kwargs)


def revbifpn_s6(**kwargs: Any) -> RevBiFPN:
    """RevBiFPN-S6 (as :func:`revbifpn_s0`)."""
    return RevBiFPN("s6", **kwargs)
