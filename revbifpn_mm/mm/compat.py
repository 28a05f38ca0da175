"""Compatibility of the OpenMMLab 2023 stack with a 2026 PyTorch, without editing site-packages: the
weights-only loader's allow-list for mmengine checkpoints, and import checks of the stack that name the fix."""
from __future__ import annotations

import collections
import functools
import importlib
import pickle
from typing import Any

import torch

__all__ = ["ensure_torch_load_compat", "check_mmcv_ops", "require_mm_stack", "register_scope",
           "MMCVOpsMissingError", "DropInArgumentError", "MMCV_FIX", "MMENGINE_FIX"]

MMCV_FIX = ("run `bash tools/setup_env.sh` from the revbifpn_mm checkout (builds mmcv 2.1.0 with its ops "
            "once and caches the wheel), or build it yourself: `pip install 'setuptools<82' && "
            "MMCV_WITH_OPS=1 pip install --no-build-isolation --no-binary mmcv 'mmcv==2.1.0'`")

MMENGINE_FIX = ("run `bash tools/setup_env.sh` from the revbifpn_mm checkout, or `pip install "
                "'mmengine==0.10.7'` (then mmcv 2.1.0: see tools/setup_env.sh)")


class MMCVOpsMissingError(ImportError):
    """mmcv is installed without its compiled ops."""


class DropInArgumentError(ValueError, AssertionError):
    """A bad argument where the mmdet / mmseg module we replace asserts (e.g. ``HRFPN``).

    Both a ``ValueError`` (the project's error for bad input, with a message naming the fix)
    and an ``AssertionError`` (what code written against the replaced module catches).
    """


def require_mm_stack() -> None:
    """Raise an ImportError with the fix unless mmengine and ``mmcv.cnn`` import: what the mm layer needs
    (registration, ``build_norm_layer``); mmcv's compiled ops are checked apart (:func:`check_mmcv_ops`)."""
    needs = (("mmengine", "mmengine", MMENGINE_FIX), ("mmcv.cnn", "mmcv 2.1.0 (mmcv.cnn)", MMCV_FIX))
    for module, what, fix in needs:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"revbifpn_mm.mm needs {what}, which cannot be imported ({err}). Fix: {fix}") from err


def check_mmcv_ops(device: str = "cpu") -> None:
    """Raise :class:`MMCVOpsMissingError` with the fix unless mmcv's compiled ops run on ``device``.

    Imports ``mmcv._ext`` and runs ``nms`` and ``RoIAlign`` (what Faster / Mask R-CNN need) on a
    few numbers on ``device``: an mmcv built without CUDA ops then fails here, in the first
    second, instead of at the first RoIAlign of a GPU run.
    """
    import mmcv  # importable: importing this package ran require_mm_stack
    try:
        importlib.import_module("mmcv._ext")
        from mmcv.ops import RoIAlign, nms
    except ImportError as err:
        raise MMCVOpsMissingError(
            f"mmcv {mmcv.__version__} is installed without its compiled ops (mmcv._ext: {err}); Faster/Mask "
            f"R-CNN need them (RoIAlign, NMS). Fix: {MMCV_FIX}") from err
    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], device=device)
        nms(boxes, torch.tensor([0.9, 0.8], device=device), iou_threshold=0.5)
        RoIAlign((2, 2), 1.0)(torch.ones(1, 1, 4, 4, device=device), torch.tensor([[0.0, 0, 0, 3, 3]], device=device))
    except RuntimeError as err:
        raise MMCVOpsMissingError(
            f"mmcv {mmcv.__version__}'s compiled ops do not run on {device} ({' '.join(str(err).split())[:200]}): it "
            f"was built without {'CUDA' if device.startswith('cuda') else 'CPU'} kernels. Fix: rebuild it where nvcc "
            f"(CUDA {torch.version.cuda}, as torch's) is found: `bash tools/setup_env.sh --rebuild-mmcv`") from err


def _safe_types() -> list:
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    try:  # numpy >= 2 moved the reconstruct helper
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int8", "uint8",
                                          "bool", "complex128", "str", "object")]
    scalars = [np.float64, np.float32, np.int64, np.int32, np.bool_]
    return [np.ndarray, np.dtype, np.generic, _reconstruct, scalar, *dtypes, *scalars, HistoryBuffer,
            collections.OrderedDict, collections.defaultdict]


def _history_buffer_getattr(obj, name):
    """``getattr`` for checkpoints: only public methods of mmengine's ``HistoryBuffer`` (its pickled
    ``_statistics_methods``), anything else refused."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if (isinstance(obj, type) and issubclass(obj, HistoryBuffer) and isinstance(name, str)
            and not name.startswith("_") and callable(getattr(obj, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"weights-only load: getattr({obj!r}, {name!r}) is not allowed "
                                 "(revbifpn_mm allows only HistoryBuffer methods)")


@functools.lru_cache(maxsize=None)  # runs once: the allow-list is process-wide
def ensure_torch_load_compat() -> None:
    """Allow-list the non-tensor types of mmengine checkpoints for the weights-only loader (idempotent).

    A pickled ``HistoryBuffer`` carries its statistics methods as ``getattr(HistoryBuffer, 'mean')`` & co.;
    allowing the real ``getattr`` would reopen arbitrary code execution, so that global is mapped to
    :func:`_history_buffer_getattr`, which resolves only public methods of ``HistoryBuffer``.
    """
    torch.serialization.add_safe_globals(_safe_types())
    try:  # (callable, "module.name") entries: torch >= 2.6, where weights_only became the default
        torch.serialization.add_safe_globals([(_history_buffer_getattr, "__builtin__.getattr"),
                                              (_history_buffer_getattr, "builtins.getattr")])
    except (TypeError, ValueError, AttributeError):  # pragma: no cover - torch 2.5
        pass


def register_scope(cfg: Any) -> str:
    """Register the modules of the config's codebase (``default_scope``) and return the scope.

    Raises:
        ValueError: ``default_scope`` is neither ``'mmdet'`` nor ``'mmseg'``.
        ImportError: The codebase is not installed.
    """
    scope = cfg.get("default_scope", None) or "mmdet"
    if scope not in ("mmdet", "mmseg"):
        raise ValueError(f"default_scope {scope!r} is not supported by these tools; use an MMDetection "
                         "('mmdet') or MMSegmentation ('mmseg') config")
    importlib.import_module(f"{scope}.utils").register_all_modules(init_default_scope=False)
    return scope
