"""Fixtures shared by the test suite.

* The official-implementation reference (``official``): the full files in ``../shared/reference``
  where they exist (CI), else the compact copy ``tests/data/revbifpn_s{0,1}_compact.pt`` (made by
  ``tests/data/make_compact_fixtures.py``): BN buffers, expected outputs, input gradients, sampled
  parameter gradients and a SHA-256 of the official checkpoint. The checkpoint's parameters are
  regenerated with the recipe of the reference README (seeded official initialisation, seeded
  randomisation of BN/bias parameters); the hash check proves that the regenerated state dict
  equals the official file bit for bit.
* ``synthetic_coco``: the generated shapes dataset (tools/synthetic_data.py) at a given size,
  written once per session and parameter set.
* ``mm_build``: builds a config dict in mmdet's or mmseg's registry and scope (the default
  scope is left as it was, so that one test's scope never leaks into the next).
* ``free_port``: a free TCP port on 127.0.0.1 for a torchrun rendezvous.
* ``mac_counter``: counts the multiply-accumulates of the convolutions and matrix products really
  dispatched (``with mac_counter() as c: ...; c.macs``): a convolution costs ``output (input, if
  transposed) elements x weight.shape[1] x kernel area``, a matrix product ``M x K x N``.
"""
from __future__ import annotations

import hashlib
import math
import os
import socket
from typing import Any, Callable, Dict, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
SHARED_REF = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "reference"))

#: arch -> (seed, num_classes, H, W) of the official reference fixtures.
SPECS = {"s0": (0, 1000, 128, 128), "s1": (1, 0, 96, 64)}


# --------------------------------------------------------------------------- official reference
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
    """Whether the full reference files of ``arch`` are beside the checkout (CI)."""
    return os.path.isfile(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected_param_grads.pt"))


def regenerate_parameters(arch: str) -> nn.Module:
    """Rebuild the fixture model's parameters with the reference README's recipe."""
    from fidelity import randomize_affine_
    from revbifpn_mm.models import RevBiFPN
    seed, nc, _, _ = SPECS[arch]
    torch.manual_seed(seed)
    model = RevBiFPN(arch, num_classes=nc)
    randomize_affine_(model, torch.Generator().manual_seed(seed + 1000), conv_bias=True)
    return model


def loss_weights(arch: str, shapes) -> list:
    """The fixed random tensors of the reference loss ``sum(output * weight)``."""
    g = torch.Generator().manual_seed(SPECS[arch][0] + 3000)
    return [torch.randn(s, generator=g) for s in shapes]


def load_reference(arch: str, tmp_dir: str, source: str) -> Tuple[str, dict, Optional[Dict[str, Tensor]]]:
    """``(checkpoint_path, expected, full_param_grads_or_None)`` of ``arch``.

    ``source='full'``: the official files in ``../shared/reference`` as they are.
    ``source='compact'``: the checkpoint is rebuilt from the compact copy into ``tmp_dir``
    (hash-verified against the official file's SHA-256).
    """
    if source == "full":
        if not full_available(arch):
            pytest.skip("../shared/reference is not beside this checkout")
        ckpt = os.path.join(SHARED_REF, f"revbifpn_{arch}_random_init.pth.tar")
        exp = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected.pt"), weights_only=True)
        grads = torch.load(os.path.join(SHARED_REF, f"revbifpn_{arch}_expected_param_grads.pt"), weights_only=True)
        return ckpt, exp, grads
    exp = torch.load(os.path.join(DATA, f"revbifpn_{arch}_compact.pt"), weights_only=True)
    sd = regenerate_parameters(arch).state_dict()
    sd.update(exp["buffers"])
    sd = {k: sd[k] for k in exp["checkpoint_keys"]}
    digest = state_dict_sha256(sd)
    if digest != exp["checkpoint_sha256"]:
        raise AssertionError(f"regenerated {arch} checkpoint differs from the official one "
                             f"(sha256 {digest} != {exp['checkpoint_sha256']})")
    ckpt = os.path.join(tmp_dir, f"revbifpn_{arch}_random_init.pth.tar")
    torch.save(sd, ckpt)
    return ckpt, exp, None


@pytest.fixture(scope="session")
def official(tmp_path_factory) -> Callable[[str, str], Tuple[str, dict, Optional[Dict[str, Tensor]]]]:
    """``official(arch, source)`` -> :func:`load_reference`'s triple, built once per session."""
    cache: Dict[Tuple[str, str], Any] = {}

    def get(arch: str, source: str = "compact"):
        if (arch, source) not in cache:
            cache[(arch, source)] = load_reference(arch, str(tmp_path_factory.mktemp(f"ref_{arch}")), source)
        return cache[(arch, source)]
    return get


@pytest.fixture(scope="session")
def reference_loss_weights() -> Callable[[str, Any], list]:
    """``reference_loss_weights(arch, shapes)``: the reference loss weights (see :func:`loss_weights`)."""
    return loss_weights


# --------------------------------------------------------------------------- data, registries, ports
@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory) -> Callable[..., str]:
    """``synthetic_coco(num_train, num_val, size=(h, w), seed)`` -> the dataset root (ends in ``/``),
    generated once per session and parameter set."""
    roots: Dict[Tuple, str] = {}

    def get(num_train: int, num_val: int, size: Tuple[int, int] = (128, 128), seed: int = 0) -> str:
        key = (num_train, num_val, tuple(size), seed)
        if key not in roots:
            from synthetic_data import generate_synthetic_coco
            root = tmp_path_factory.mktemp("data") / "synthetic_coco"
            generate_synthetic_coco(str(root), num_train=num_train, num_val=num_val, image_size=tuple(size),
                                    seed=seed)
            roots[key] = str(root) + "/"
        return roots[key]
    return get


@pytest.fixture(scope="session")
def mm_build() -> Callable[..., nn.Module]:
    """``mm_build(cfg, scope='mmdet')``: build a model config in that codebase's registry and scope."""
    import importlib

    from mmengine.registry import DefaultScope

    def build(cfg: Any, scope: str = "mmdet") -> nn.Module:
        if scope == "mmseg":
            pytest.importorskip("mmseg")
        importlib.import_module(f"{scope}.utils").register_all_modules(init_default_scope=False)
        registry = importlib.import_module(f"{scope}.registry").MODELS
        with DefaultScope.overwrite_default_scope(scope):
            return registry.build(cfg)
    return build


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MacCounter(TorchDispatchMode):
    """Multiply-accumulates of aten convolutions and matrix products (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet is torch.ops.aten.convolution:
            x, w, transposed = args[0], args[1], args[6]
            self.macs += (x if transposed else out).numel() * w.shape[1] * math.prod(w.shape[2:])
        elif packet in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            a, b = args[-2], args[-1]
            self.macs += a.numel() * b.shape[-1]
        return out


@pytest.fixture(scope="session")
def mac_counter() -> type:
    """The :class:`MacCounter` class: ``with mac_counter() as c: ...`` then ``c.macs``."""
    return MacCounter
