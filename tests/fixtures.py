"""Access to the official-implementation fixtures (full in ../shared, compact in tests/data).

The full fixtures (``../shared/reference``) exist in CI. A user's clone has only the
compact copy ``tests/data/revbifpn_s{0,1}_compact.pt`` (made by
``tests/data/make_compact_fixtures.py``): BN buffers, expected outputs, input
gradients, sampled parameter gradients and a SHA-256 of the official checkpoint. The
checkpoint's parameters are regenerated with the recipe of the reference README
(seeded official initialisation, seeded randomisation of BN/bias parameters); the
hash check proves that the regenerated state dict equals the official file bit for bit.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
SHARED_REF = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "reference"))

SPECS = {  # arch -> (seed, num_classes, H, W)
    "s0": (0, 1000, 128, 128),
    "s1": (1, 0, 96, 64),
}


def state_dict_sha256(sd: Dict[str, Tensor]) -> str:
    """Hash of a state dict: keys, dtypes, shapes and raw bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def full_available(arch: str) -> bool:
    return os.path.isfile(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected_param_grads.pt"))


def regenerate_parameters(arch: str) -> nn.Module:
    """Rebuild the fixture model's parameters with the reference README's recipe."""
    from revbifpn_mm.models import RevBiFPN
    seed, nc, _, _ = SPECS[arch]
    torch.manual_seed(seed)
    model = RevBiFPN(arch, num_classes=nc)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model


def loss_weights(arch: str, shapes) -> list:
    seed = SPECS[arch][0]
    g = torch.Generator().manual_seed(seed + 3000)
    return [torch.randn(s, generator=g) for s in shapes]


def load_fixture(arch: str, tmp_dir: str, source: str) -> Tuple[str, dict, Optional[Dict[str, Tensor]]]:
    """Return ``(checkpoint_path, expected, full_param_grads_or_None)``.

    ``source='full'``: the official files in ``../shared/reference`` as they are.
    ``source='compact'``: the checkpoint is rebuilt from the compact copy into
    ``tmp_dir`` (hash-verified against the official file's SHA-256).
    """
    if source == "full":
        ckpt = os.path.join(SHARED_REF, f"revbifpn_{arch}_random_init.pth.tar")
        exp = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected.pt"), weights_only=True)
        grads = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected_param_grads.pt"),
                           weights_only=True)
        return ckpt, exp, grads
    exp = torch.load(os.path.join(DATA, f"revbifpn_{arch}_compact.pt"), weights_only=True)
    model = regenerate_parameters(arch)
    sd = model.state_dict()
    sd.update(exp["buffers"])
    sd = {k: sd[k] for k in exp["checkpoint_keys"]}
    digest = state_dict_sha256(sd)
    if digest != exp["checkpoint_sha256"]:
        raise AssertionError(f"regenerated {arch} checkpoint differs from the official one "
                             f"(sha256 {digest} != {exp['checkpoint_sha256']})")
    ckpt = os.path.join(tmp_dir, f"revbifpn_{arch}_random_init.pth.tar")
    torch.save(sd, ckpt)
    return ckpt, exp, None
