"""Version of the revbifpn_mm package."""

__version__ = "0.1.0"
