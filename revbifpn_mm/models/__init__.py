"""RevBiFPN models (pure PyTorch)."""
from .blocks import ConvNormAct, MBConv, SqueezeExcite, default_norm_layer
from .pretrained import (OFFICIAL_WEIGHTS, CheckpointDownloadError, ChecksumMismatchError, LoadResult, fetch_checkpoint,
                         load_official_checkpoint, read_state_dict)
from .revbifpn import (ARCH_SETTINGS, ClassificationHead, RevBiFPN, resolve_arch, revbifpn_s0, revbifpn_s1, revbifpn_s2,
                       revbifpn_s3, revbifpn_s4, revbifpn_s5, revbifpn_s6)

__all__ = ["ARCH_SETTINGS", "CheckpointDownloadError", "ChecksumMismatchError", "ClassificationHead", "ConvNormAct",
           "LoadResult", "MBConv", "OFFICIAL_WEIGHTS", "RevBiFPN", "SqueezeExcite", "default_norm_layer",
           "fetch_checkpoint", "load_official_checkpoint", "read_state_dict", "resolve_arch", "revbifpn_s0",
           "revbifpn_s1", "revbifpn_s2", "revbifpn_s3", "revbifpn_s4", "revbifpn_s5", "revbifpn_s6"]
