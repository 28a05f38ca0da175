"""RevBiFPN: the fully reversible bidirectional feature pyramid network.

Chiley et al., "RevBiFPN: The Fully Reversible Bidirectional Feature Pyramid
Network", MLSys 2023 (arXiv:2206.14098). Re-implemented from a written
specification of the official BSD-3 code (CerebrasResearch/RevBiFPN); module
names follow the official state-dict layout so released checkpoints load directly.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..core import (MemoryMode, RecomputedPerScale, RevBlockGroup, RevResidualBlock, RevSequential, RevSilo,
                    RunPolicy, SpaceToDepth)
from .blocks import ConvNormAct, MBConv, NormLayer, default_norm_layer
from .pretrained import load_official_checkpoint

__all__ = ["ARCH_SETTINGS", "RevBiFPN", "ClassificationHead", "resolve_arch", "revbifpn_s0", "revbifpn_s1",
           "revbifpn_s2", "revbifpn_s3", "revbifpn_s4", "revbifpn_s5", "revbifpn_s6"]

NUM_SCALES = 4
#: Per-scale settings shared by every variant (the paper's architecture, arXiv 2206.14098).
BLOCK_KERNELS = (3, 5, 5, 5)
EXPAND = (1, 1, 2, 2)
SE_RATIO = (0.25, 0.25, 0.125, 0.0)
DWK_PLUS = (0, 0, 0, 2)
NECK_EXPAND = (1, 2, 2, 2)
NECK_SE = (0.25, 0.25, 0.125, 0.125)
NECK_KERNEL = 5
HEAD_KERNEL = 5

#: Architecture table (the paper's S0-S6). Channels are explicit (no float rounding).
ARCH_SETTINGS: Dict[str, Dict[str, Any]] = {
    "s0": dict(channels=(48, 64, 80, 160), out_channels=(48, 64, 128, 320), fc_features=1280,
               num_ext_layers=2, drop_path_rate=0.0, head_dropout=0.25, resolution=224),
    "s1": dict(channels=(64, 80, 96, 208), out_channels=(64, 80, 160, 416), fc_features=1696,
               num_ext_layers=2, drop_path_rate=0.0, head_dropout=0.25, resolution=256),
    "s2": dict(channels=(96, 128, 160, 320), out_channels=(96, 128, 256, 640), fc_features=2560,
               num_ext_layers=2, drop_path_rate=0.0, head_dropout=0.3, resolution=256),
    "s3": dict(channels=(128, 160, 208, 416), out_channels=(128, 160, 336, 848), fc_features=3408,
               num_ext_layers=3, drop_path_rate=0.05, head_dropout=0.3, resolution=288),
    "s4": dict(channels=(192, 256, 320, 640), out_channels=(192, 256, 512, 1280), fc_features=5120,
               num_ext_layers=4, drop_path_rate=0.1, head_dropout=0.4, resolution=320),
    "s5": dict(channels=(256, 336, 416, 848), out_channels=(256, 336, 672, 1696), fc_features=6816,
               num_ext_layers=4, drop_path_rate=0.1, head_dropout=0.4, resolution=352),
    "s6": dict(channels=(320, 416, 528, 1056), out_channels=(320, 416, 848, 2128), fc_features=8528,
               num_ext_layers=5, drop_path_rate=0.3, head_dropout=0.6, resolution=352),
}
_REQUIRED_KEYS = ("channels", "out_channels", "fc_features", "num_ext_layers")


def resolve_arch(arch: Union[str, Dict[str, Any]], **overrides: Any) -> Dict[str, Any]:
    """Return a validated copy of an architecture setting.

    Args:
        arch: ``'s0'`` ... ``'s6'`` or a dict with at least ``channels`` (4 even ints),
            ``out_channels`` (4 ints), ``fc_features`` and ``num_ext_layers``.
        **overrides: Entries replacing those of the table (``None`` values are ignored).

    Raises:
        ValueError: Unknown arch name or malformed dict (the message lists the valid names).
    """
    if isinstance(arch, str):
        key = arch.lower().replace("revbifpn_", "").replace("revbifpn-", "")
        if key not in ARCH_SETTINGS:
            raise ValueError(f"unknown RevBiFPN arch {arch!r}; valid archs are "
                             f"{sorted(ARCH_SETTINGS)} or a dict with keys {list(_REQUIRED_KEYS)}")
        cfg = copy.deepcopy(ARCH_SETTINGS[key])
        cfg["name"] = key
    elif isinstance(arch, dict):
        missing = [k for k in _REQUIRED_KEYS if k not in arch]
        if missing:
            raise ValueError(f"arch dict is missing {missing}; required keys: {list(_REQUIRED_KEYS)}")
        cfg = dict(drop_path_rate=0.0, head_dropout=0.0, resolution=224, name="custom")
        cfg.update(copy.deepcopy(arch))
    else:
        raise TypeError(f"arch must be a str or dict, got {type(arch).__name__}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    ch, out = tuple(cfg["channels"]), tuple(cfg["out_channels"])
    if len(ch) != NUM_SCALES or len(out) != NUM_SCALES:
        raise ValueError(f"channels and out_channels need {NUM_SCALES} entries, got {ch} and {out}")
    if any(c <= 0 or c % 2 for c in ch):
        raise ValueError(f"trunk channels must be positive and even, got {ch}")
    if ch[0] % 16:
        raise ValueError(f"channels[0] must be a multiple of 16 (stem: 16 x input copies), got {ch[0]}")
    if int(cfg["num_ext_layers"]) < 0:
        raise ValueError(f"num_ext_layers must be >= 0, got {cfg['num_ext_layers']}")
    if not 0.0 <= float(cfg["drop_path_rate"]) < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {cfg['drop_path_rate']}")
    cfg["channels"], cfg["out_channels"] = ch, out
    return cfg


class ClassificationHead(nn.Module):
    """ImageNet head: pyramid of stride-2 MBConvs, 1x1 conv, GAP, dropout, FC."""

    def __init__(self, out_channels: Sequence[int], fc_features: int, num_classes: int,
                 dropout: float = 0.0, norm_layer: NormLayer = default_norm_layer) -> None:
        super().__init__()
        self.pyramid_heads = nn.ModuleList(
            MBConv(out_channels[h], out_channels[h + 1], HEAD_KERNEL, 2, NECK_EXPAND[h], NECK_SE[h],
                   norm_layer=norm_layer) for h in range(NUM_SCALES - 1))
        self.final_conv = ConvNormAct(out_channels[-1], fc_features, 1, norm_layer=norm_layer)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(fc_features, num_classes)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:  # noqa: D102
        t = feats[0]
        for h, head in enumerate(self.pyramid_heads):
            t = feats[h + 1] + head(t)
        t = self.final_conv(t).mean((2, 3))
        return self.fc(self.dropout(t))


class RevBiFPN(nn.Module):
    """RevBiFPN backbone (and optional ImageNet classifier).

    The trunk (stem, reversible residual blocks, RevSilos) is exactly invertible and runs
    as reversible segments, one autograd Function each (docs/design.md); the per-scale
    output MBConvs (the official "neck") are recomputed from the stored trunk outputs.
    Training activation memory is therefore independent of depth.

    Args:
        arch: ``'s0'`` ... ``'s6'`` or an arch dict (see :data:`ARCH_SETTINGS`).
        num_classes: Classes of the ImageNet head; ``0`` drops the head and the model
            returns the four backbone outputs (strides 4, 8, 16, 32). Defaults to 1000.
        drop_path_rate: Maximum stochastic-depth rate ``p_max`` (layer ``l`` uses
            ``p_max * l / L``). Defaults to the arch's value.
        num_ext_layers: Layers after the three expanding ones (``L = 3 + n``).
        head_dropout: Dropout before the classifier. Defaults to the arch's value.
        with_neck: Apply the per-scale output MBConvs (outputs ``out_channels``);
            ``False`` returns the raw trunk outputs (``channels``). Defaults to True.
        norm_layer: Normalisation factory. Defaults to BatchNorm2d(eps=1e-3).
        memory_mode, stream_dtype, plain_segments, compile_transforms:
            The run policy (:class:`revbifpn_mm.core.RunPolicy`, where each is documented; fully reversible
            by default). RevBiFPN has ``L + 2`` segments: the output MBConvs last, before them the trunk's,
            three ops each. :meth:`set_policy` changes it later, its experiment fields included.
        checkpoint: Path to an official ``.pth.tar`` checkpoint (or a state dict) to load.

    Attributes:
        size_divisibility: Input height and width must be multiples of this (32).
        feature_info: One dict per output: ``num_chs``, ``reduction``, ``module``.

    Example:
        >>> model = RevBiFPN('s0', num_classes=0).eval()
        >>> [tuple(f.shape) for f in model(torch.rand(1, 3, 64, 96))]
        [(1, 48, 16, 24), (1, 64, 8, 12), (1, 128, 4, 6), (1, 320, 2, 3)]
    """

    size_divisibility: int = 32
    in_chans: int = 3

    def __init__(self, arch: Union[str, Dict[str, Any]] = "s0", num_classes: int = 1000,
                 drop_path_rate: Optional[float] = None, num_ext_layers: Optional[int] = None,
                 head_dropout: Optional[float] = None, with_neck: bool = True,
                 norm_layer: Optional[NormLayer] = None,
                 memory_mode: Union[str, MemoryMode] = MemoryMode.REVERSIBLE,
                 stream_dtype: Optional[Union[str, torch.dtype]] = "auto",
                 plain_segments: int = 0, compile_transforms: bool = False,
                 checkpoint: Optional[Union[str, Dict[str, Tensor]]] = None) -> None:
        super().__init__()
        cfg = resolve_arch(arch, drop_path_rate=drop_path_rate, num_ext_layers=num_ext_layers,
                           head_dropout=head_dropout)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if num_classes > 0 and not with_neck:
            raise ValueError("the classification head needs the neck (with_neck=True)")
        norm_layer = norm_layer or default_norm_layer
        self.arch = cfg
        self.channels: Tuple[int, ...] = cfg["channels"]
        self.num_layers = 3 + int(cfg["num_ext_layers"])
        self.num_classes = num_classes
        self.with_neck = with_neck
        self.out_channels: Tuple[int, ...] = cfg["out_channels"] if with_neck else self.channels
        self.stem_chans = self.channels[0] // 16
        self.register_buffer("_stem_index", torch.arange(self.stem_chans) % self.in_chans,
                             persistent=False)

        ops, p_max, L = [SpaceToDepth(4)], float(cfg["drop_path_rate"]), self.num_layers
        for layer in range(1, L + 1):
            p = p_max * layer / L
            n_in = min(layer, NUM_SCALES)
            for _ in range(2):
                ops.append(RevBlockGroup([self._block(h, p, norm_layer) for h in range(n_in)]))
            ops.append(self._silo(n_in, min(layer + 1, NUM_SCALES), p, norm_layer))
        neck = None
        if with_neck:
            neck = RecomputedPerScale([
                MBConv(self.channels[h], cfg["out_channels"][h], NECK_KERNEL, 1, NECK_EXPAND[h],
                       NECK_SE[h], norm_layer=norm_layer) for h in range(NUM_SCALES)])
        policy = RunPolicy(memory_mode=memory_mode, stream_dtype=stream_dtype, plain_segments=plain_segments,
                           compile_transforms=compile_transforms)
        self.rev_stack = RevSequential(ops, neck, policy)
        self.head = (ClassificationHead(cfg["out_channels"], cfg["fc_features"], num_classes,
                                        cfg["head_dropout"], norm_layer) if num_classes > 0 else None)
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** h, module=f"rev_stack.out{h}")
                             for h, c in enumerate(self.out_channels)]
        self.reset_parameters()
        if checkpoint is not None:
            load_official_checkpoint(self, checkpoint)

    # ------------------------------------------------------------ building
    def _block(self, h: int, p: float, norm_layer: NormLayer) -> RevResidualBlock:
        half = self.channels[h] // 2
        f, g = (MBConv(half, half, BLOCK_KERNELS[h], 1, EXPAND[h], SE_RATIO[h], p, norm_layer) for _ in range(2))
        return RevResidualBlock(f, g, self.channels[h])

    def _silo(self, n_in: int, n_out: int, p: float, norm_layer: NormLayer) -> RevSilo:
        C = self.channels
        down, up = {}, {}
        for j in range(1, n_out):
            for i in range(min(j, n_in)):
                s = 2 ** (j - i)
                down[(i, j)] = MBConv(C[i], C[j], 2 * s - 1 + DWK_PLUS[i], s, EXPAND[i], SE_RATIO[i],
                                      0.0 if j >= n_in else p, norm_layer)
        for k in range(1, n_out):
            for h in range(k):
                up[(k, h)] = nn.Sequential(
                    MBConv(C[k], C[h], 3 + DWK_PLUS[k], 1, EXPAND[h], SE_RATIO[h], p, norm_layer),
                    nn.Upsample(scale_factor=2 ** (k - h), mode="bilinear", align_corners=False))
        return RevSilo(down, up, n_in, n_out)

    def reset_parameters(self) -> None:
        """Official initialisation: Kaiming-normal (fan_out) convs, zero conv biases, BN 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------- running
    @property
    def policy(self) -> RunPolicy:
        """How the backbone trains (:class:`revbifpn_mm.core.RunPolicy`)."""
        return self.rev_stack.policy

    def set_policy(self, **changes: Any) -> None:
        """Change fields of the run policy, e.g. ``set_policy(plain_segments=2)``.

        Raises:
            ValueError: A value is invalid (the message lists the valid ones).
        """
        self.rev_stack.policy = self.rev_stack.policy.replace(**changes)

    def set_memory_mode(self, mode: Union[str, MemoryMode]) -> None:
        """``'reversible'`` (default) or ``'plain'`` autograd for training."""
        self.set_policy(memory_mode=mode)

    @property
    def memory_mode(self) -> MemoryMode:
        """The current memory mode."""
        return self.rev_stack.memory_mode

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` naming the problem if ``x`` cannot be processed."""
        if not isinstance(x, Tensor):
            raise TypeError(f"RevBiFPN expects a tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"RevBiFPN expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"RevBiFPN expects {self.in_chans}-channel (RGB) images, got {x.shape[1]} channels; "
                "convert grayscale images to RGB (repeat the channel) and drop alpha channels")
        h, w = x.shape[-2:]
        d = self.size_divisibility
        if h % d or w % d:
            raise ValueError(f"RevBiFPN needs input height and width that are multiples of {d}, got {h}x{w}; "
                             f"pad the input (e.g. to {math.ceil(h / d) * d}x{math.ceil(w / d) * d})")

    def forward_features(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Backbone outputs: 4 maps at strides 4, 8, 16, 32 with :attr:`out_channels`."""
        self.check_input(x)
        x = x.index_select(1, self._stem_index)  # channel replication (R,G,B,R,...)
        return tuple(self.rev_stack([x]))

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, ...]]:
        """Logits ``(B, num_classes)``, or the 4 backbone outputs when ``num_classes == 0``."""
        feats = self.forward_features(x)
        return self.head(feats) if self.head is not None else feats


def _entry_point(arch: str) -> Callable[..., RevBiFPN]:
    """The function ``revbifpn_<arch>(**kwargs)``, which builds ``RevBiFPN(arch, **kwargs)``."""
    def build(**kwargs: Any) -> RevBiFPN:
        return RevBiFPN(arch, **kwargs)
    build.__name__ = build.__qualname__ = f"revbifpn_{arch}"
    build.__doc__ = (f"RevBiFPN-{arch.upper()}. Keyword arguments go to :class:`RevBiFPN`; its size and weights: "
                     f"``OFFICIAL_WEIGHTS[{arch!r}]``.")
    return build


(revbifpn_s0, revbifpn_s1, revbifpn_s2, revbifpn_s3, revbifpn_s4, revbifpn_s5,
 revbifpn_s6) = (_entry_point(arch) for arch in ARCH_SETTINGS)
